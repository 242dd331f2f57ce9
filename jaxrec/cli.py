"""The command line of every ``experiments/<method>.py``, built from the method's config dataclass.

This module imports neither JAX nor the method: ``--help`` and every flag check answer before JAX loads.
An experiment script declares a :class:`Spec` and calls :func:`main`::

    SPEC = cli.Spec(name="mf_bpr", config=MFBPRConfig, method="jaxrec.methods.mf_bpr",
                    datasets=("synthetic", "ml-100k"), metric="ndcg@20", tables={"main": table_main})

    if __name__ == "__main__":
        cli.main(SPEC)

Every field of the config becomes a flag (``lr`` -> ``--lr``), with the help text and the check written
once in the field's metadata (:func:`param`). A numeric or string flag takes one value (applied) or several
(a grid searched on seed 0's validation split). A value that its check refuses, an unknown dataset or a
table the experiment does not have stops before any work with one line ``prog: error: ...`` and exit
status 2. Errors raised while running (bad data, a config the method refuses, a NaN) print one line and
exit with status 1; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import math
import sys
import typing
from typing import Any, Callable, Mapping

__all__ = ["param", "Spec", "build_parser", "parse", "main", "CHECKS", "checked", "Invocation",
           "common_parser", "seed_list", "live_output", "add_reverse_flag", "work_order"]

# check name -> (predicate, what is allowed)
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "positive": (lambda v: math.isfinite(v) and v > 0, "a number > 0"),
    "nonneg": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "rate": (lambda v: math.isfinite(v) and 0 < v <= 10, "a learning rate in (0, 10]"),
    "fraction": (lambda v: math.isfinite(v) and 0 <= v < 1, "a fraction in [0, 1)"),
    "unit": (lambda v: math.isfinite(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "finite": (lambda v: math.isfinite(v), "a finite number"),
}


def checked(check: str, kind: type = float) -> Callable[[str], Any]:
    """argparse ``type=`` of an experiment's own flag (not a config field; e.g. a list flag such as ``--lrs``):
    ``kind(text)`` that passes ``CHECKS[check]``, else argparse's one-line error and exit status 2
    (``argument --lrs: -1 is not allowed; use a learning rate in (0, 10]``)."""
    if check not in CHECKS:
        raise ValueError(f"checked: unknown check {check!r}; use one of {sorted(CHECKS)}")
    ok, allowed = CHECKS[check]

    def parse(text: str):
        value = kind(text)  # a ValueError here reads "invalid <kind> value: 'text'"
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} is not allowed; use {allowed}")
        return value

    parse.__name__ = kind.__name__
    return parse


def param(default: Any, help: str, check: str | None = None, choices: tuple | None = None,
          flag: bool = True, key: bool = True, key_if_changed: bool = False) -> Any:
    """A config field with its command-line help and check: ``lr: float = param(5e-3, "Adam step", "rate")``.
    ``check`` names an entry of :data:`CHECKS`; ``flag=False`` keeps the field off the command line;
    ``key=False`` leaves it out of a run's cache key (a setting that cannot change the results, such as a
    back end computing the same thing); ``key_if_changed=True`` puts it in the key only when it differs from
    its default (a field added later, whose default reproduces the old behaviour, keeps old runs' keys)."""
    if check is not None and check not in CHECKS:
        raise ValueError(f"param: unknown check {check!r}; use one of {sorted(CHECKS)}")
    return dataclasses.field(default=default, metadata={"help": help, "check": check, "choices": choices,
                                                        "flag": flag, "key": key,
                                                        "key_if_changed": key_if_changed})


@dataclasses.dataclass
class Spec:
    """What an experiment script declares: its results folder ``name``, config dataclass, method module
    (``load(config, dataset, data_dir, seed) -> data`` and ``method(config, data) -> Method``), the datasets
    it accepts, the validation metric it selects on, its tables (``--table NAME``: ``fn(runner) -> str``,
    see :mod:`jaxrec.experiment`), per-dataset config defaults (``tuned``) and ``--quick`` overrides."""

    name: str
    config: type
    method: str
    description: str
    datasets: tuple
    metric: str
    tables: Mapping[str, Callable] = dataclasses.field(default_factory=dict)
    default_table: str = "main"
    tuned: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    quick: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seeds: int = 1
    add_flags: Callable[[argparse.ArgumentParser], None] | None = None
    check: Callable[[Any], str | None] | None = None  # whole-config check: message or None


@dataclasses.dataclass
class Invocation:
    """A parsed command line: the spec, the argparse namespace, the base config and the grid (a list of
    field-override dicts; one empty dict when no flag took several values)."""

    spec: Spec
    args: argparse.Namespace
    base: Any
    grid: list
    seeds: list


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2 (argparse's own usage block is left out)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _field_type(f: dataclasses.Field, hints: Mapping[str, Any]):
    t = hints.get(f.name, f.type)
    if typing.get_origin(t) is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        t = args[0] if len(args) == 1 else str
    return t


def _flag_fields(config_cls) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        if not f.metadata.get("flag", True) or f.name == "dataset":
            continue
        t = _field_type(f, hints)
        if t in (int, float, str, bool):
            out.append((f, t))
    return out


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def build_parser(spec: Spec) -> argparse.ArgumentParser:
    """The parser: the common flags, then one flag per config field (help and default from the field)."""
    p = _Parser(prog=f"python -m experiments.{spec.name}", description=spec.description)
    g = p.add_argument_group("data and seeds")
    g.add_argument("--dataset", default="synthetic",
                   help=f"dataset: one of {', '.join(spec.datasets)} (default: synthetic, generated offline)")
    g.add_argument("--data-dir", default=None, help="folder of the real datasets (default: $JAXREC_DATA)")
    g.add_argument("--seeds", type=int, default=None,
                   help=f"number of seeds: runs seeds 0..N-1 (default: {spec.seeds})")
    g.add_argument("--seed-list", type=int, nargs="+", default=None, help="explicit seeds (instead of --seeds)")
    r = p.add_argument_group("running")
    if spec.tables:
        r.add_argument("--table", choices=sorted(spec.tables), default=spec.default_table,
                       help=f"which table to produce (default: {spec.default_table})")
    r.add_argument("--quick", action="store_true", help="tiny smoke-test settings (seconds, for CI)")
    r.add_argument("--out", default="runs",
                   help="results root: <out>/<experiment>/<dataset>/*.json (default: runs, ignored by git; "
                        "the curated tables live under --out results)")
    r.add_argument("--no-save", action="store_true", help="write no result files and use none")
    r.add_argument("--resume", action="store_true", help="checkpoint every epoch and resume an interrupted run")
    r.add_argument("--reverse", action="store_true",
                   help="walk grids and seeds backwards, so a second process on the same --out shares the work")
    r.add_argument("--log-every", type=int, default=None, help="print one line every N evaluations (default 10; and after any 10 s without output)")
    r.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    if spec.add_flags is not None:
        spec.add_flags(r)
    c = p.add_argument_group("method config (several values = a grid on seed 0's validation split)")
    for f, t in _flag_fields(spec.config):
        name = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "")
        default = _default(f)
        if t is bool:
            c.add_argument(name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{helptext} (default: {default})")
        else:
            c.add_argument(name, type=t, nargs="+", default=None, choices=f.metadata.get("choices"),
                           metavar=f.name.upper(), help=f"{helptext} (default: {default})")
    return p


def _check_value(p: argparse.ArgumentParser, f: dataclasses.Field, value: Any) -> None:
    check = f.metadata.get("check")
    if check is None or isinstance(value, (str, bool)):
        return
    ok, allowed = CHECKS[check]
    if not ok(value):
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        p.error(f"argument --{f.name.replace('_', '-')}: {shown} is not allowed; use {allowed}")


def parse(spec: Spec, argv=None) -> Invocation:
    """Parse and check ``argv``; exit with status 2 and one line on any invalid flag (see module docstring)."""
    p = build_parser(spec)
    args = p.parse_args(argv)
    if args.dataset not in spec.datasets:
        p.error(f"argument --dataset: {args.dataset!r} is not a dataset this experiment uses; "
                f"use one of {', '.join(spec.datasets)}")
    for name in ("seeds", "log_every"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"argument --{name.replace('_', '-')}: {v} is not allowed; use an integer >= 1")
    seeds = list(args.seed_list) if args.seed_list else list(range(args.seeds or spec.seeds))
    if any(s < 0 for s in seeds):
        p.error(f"argument --seed-list: {seeds} is not allowed; use seeds >= 0")
    overrides: dict[str, Any] = {}
    valid = {f.name for f in dataclasses.fields(spec.config)}
    if "dataset" in valid:
        overrides["dataset"] = args.dataset
    overrides.update({k: v for k, v in spec.tuned.get(args.dataset, {}).items() if k in valid})
    if args.quick:
        overrides.update(spec.quick)
    axes: dict[str, list] = {}
    for f, t in _flag_fields(spec.config):
        v = getattr(args, f.name)
        if v is None:
            continue
        values = [v] if t is bool else list(dict.fromkeys(v))
        for x in values:
            _check_value(p, f, x)
        if len(values) == 1:
            overrides[f.name] = values[0]
        else:
            axes[f.name] = values
    for f in dataclasses.fields(spec.config):  # defaults and presets obey the checks too
        if f.name in overrides:
            _check_value(p, f, overrides[f.name])
    try:
        base = spec.config(**overrides)
    except (TypeError, ValueError) as e:
        p.error(str(e))
    grid = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] or [{}]
    if spec.check is not None:
        for point in grid:
            msg = spec.check(dataclasses.replace(base, **point))
            if msg:
                p.error(msg)
    return Invocation(spec, args, base, grid, seeds)


def live_output() -> None:
    """Flush ``print`` output line by line also when stdout is a file or a pipe (``nohup ... > log``)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # absent on replaced streams (e.g. pytest capture)
        if reconfigure is not None:
            reconfigure(line_buffering=True)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).strip("'\"").split()) or type(e).__name__


def main(spec: Spec, argv=None):
    """Parse (no JAX yet), then import the runner (:mod:`jaxrec.experiment`, which imports JAX and the method)
    and run the chosen table. Library errors become one line on stderr and exit status 1."""
    inv = parse(spec, argv)
    live_output()
    try:
        experiment = importlib.import_module("jaxrec.experiment")  # JAX loads here, after the flags are checked
        return experiment.Runner(inv).main()
    except (ValueError, FloatingPointError, FileNotFoundError, KeyError, RuntimeError) as e:
        if inv.args.debug:
            raise
        print(f"{build_parser(spec).prog}: error: {_one_line(e)} (--debug shows the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


# ------------------------------------------------------------------------- flags of the older experiment CLIs
def common_parser(description: str) -> argparse.ArgumentParser:
    """The common flags of the experiments not yet on :class:`Spec` (``--dataset``, ``--data-dir``,
    ``--seeds``, ``--seed-list``, ``--epochs``, ``--out``, ``--quick``, ``--no-save``)."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="synthetic", help="dataset name (folder in the data dir) or 'synthetic'")
    p.add_argument("--data-dir", default=None, help="datasets folder (default: $JAXREC_DATA)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds: runs seeds 0..N-1")
    p.add_argument("--seed-list", type=int, nargs="+", default=None,
                   help="explicit seeds (overrides --seeds)")
    p.add_argument("--epochs", type=int, default=None, help="max training epochs (default: method default)")
    p.add_argument("--out", default="results", help="results root folder")
    p.add_argument("--quick", action="store_true", help="tiny smoke-test settings")
    p.add_argument("--no-save", action="store_true", help="do not write result files")
    return p


def seed_list(args: argparse.Namespace) -> list[int]:
    """Seeds to run: ``--seed-list`` if given, else ``0..--seeds-1``."""
    if getattr(args, "seed_list", None):
        return list(args.seed_list)
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {args.seeds}")
    return list(range(args.seeds))


def add_reverse_flag(p: argparse.ArgumentParser) -> None:
    """Add ``--reverse`` (see :class:`Spec` experiments, where it is a common flag)."""
    p.add_argument("--reverse", action="store_true",
                   help="--table: work through grids and seeds in reverse order, so a second process running the "
                        "same command (same --out) shares the work; runs in progress are not duplicated")


def work_order(items, args: argparse.Namespace) -> list:
    """``items`` in the order this process works through them: reversed with ``--reverse``."""
    items = list(items)
    return items[::-1] if getattr(args, "reverse", False) else items
