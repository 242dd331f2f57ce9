"""Result files and result tables.

Every experiment run writes one JSON file ``<root>/<experiment>/<dataset>/<name>.json`` through
:func:`save_result`. The file holds everything needed to trust and reproduce the number::

    {"experiment", "dataset", "name", "seed", "config", "metrics", "wall_time_s",
     "versions": {"python", "jax", "jaxlib", "flax", "optax", "numpy", "scipy", "jaxrec", ...},
     "device": {"platform", "devices", "x64"}, "command", "git_commit", "timestamp", "extra"}

:func:`load_results` reads them back; :func:`mean_std` and :func:`format_table` build the
"mean ± std over seeds" tables of RESULTS.md. :func:`run_once` lets several processes that write to
one results folder share a grid of runs (``--reverse`` in the experiments) without training a run twice.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

__all__ = ["save_result", "load_results", "mean_std", "format_table", "relative_improvement",
           "package_versions", "device_info", "typed_command", "to_jsonable", "claim_run", "await_or_claim", "run_once", "grid_edge_notes"]

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "jaxopt", "chex", "numpy", "scipy", "jaxrec")


def package_versions() -> dict[str, str]:
    """Installed versions of Python and the numerical packages this project depends on."""
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def device_info() -> dict[str, Any]:
    """The JAX backend, its devices and whether float64 is enabled."""

    devs = jax.devices()
    return {"platform": devs[0].platform, "devices": [str(d) for d in devs],
            "device_kind": getattr(devs[0], "device_kind", ""), "x64": bool(jax.config.jax_enable_x64),
            "host": platform.node(), "cpu_count": os.cpu_count()}


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                           timeout=5)
        return r.stdout.strip() or None
    except Exception:  # noqa: BLE001 - git absent or not a checkout: just record None
        return None


def typed_command() -> str:
    """The command line as the user typed it (``python -m experiments.mal --quick``), from ``sys.orig_argv``."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    argv[0] = Path(argv[0]).name
    return shlex.join(argv)


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, numpy / jax scalars and arrays, paths and tuples into JSON-ready values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (str, bool, int)) or obj is None:
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # numpy / jax array or scalar
        arr = np.asarray(obj)
        if arr.ndim == 0:
            return to_jsonable(arr.item())
        return [to_jsonable(v) for v in arr.tolist()]
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    return str(obj)


def claim_run(marker: str | os.PathLike) -> bool:
    """Claim a run for this process with a ``.running`` marker file holding its pid.

    False while another live process holds the marker; a marker left by a process that died is taken over.
    Several processes that share a results folder use it to split a grid between them without training a
    configuration twice (see :func:`await_or_claim`)."""
    marker = Path(marker)
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(marker.read_text().strip() or 0)
            os.kill(pid, 0)
            return False
        except ProcessLookupError:
            marker.unlink(missing_ok=True)  # stale: its process is gone
            return claim_run(marker)
        except (ValueError, FileNotFoundError):
            return False  # being written or just released: look again
        except PermissionError:
            return False  # alive, owned by another user
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def await_or_claim(find: Callable[[], Any], marker: str | os.PathLike, *, poll_s: float = 10.0,
                   verbose: bool = True) -> Any:
    """The saved result of a run, or ``None`` once this process has claimed the run.

    ``find()`` returns the saved result (anything but ``None``) or ``None`` while there is none. While another
    live process holds ``marker`` (it is training the same run), wait and look again every ``poll_s``
    seconds. A ``None`` return means this process now holds ``marker``: it trains and saves the run, then
    removes the marker (``Path(marker).unlink(missing_ok=True)``, in a ``finally``), in that order, so that
    a waiting process finds the result the moment the marker is gone. :func:`run_once` does all of that."""
    waited = False
    while True:
        found = find()
        if found is not None:
            return found
        if claim_run(marker):
            return None
        if verbose and not waited:
            print(f"[waiting] {Path(marker).name}: another process is running this configuration", flush=True)
        waited = True
        time.sleep(poll_s)


def run_once(find: Callable[[], Any], train: Callable[[], Any], marker: str | os.PathLike | None = None, *,
             poll_s: float = 10.0, verbose: bool = True) -> Any:
    """``find()``'s saved result of a run, else ``train()``'s (which should save it).

    With a ``marker`` path, processes that share a results folder never train the same run twice: this one
    waits while another holds the marker (:func:`await_or_claim`), and holds it itself while it trains,
    releasing it after ``train()`` returns or raises. Without one (nothing is saved), no marker is used."""
    if marker is None:
        found = find()
        return found if found is not None else train()
    found = await_or_claim(find, marker, poll_s=poll_s, verbose=verbose)
    if found is not None:
        return found
    try:
        return train()
    finally:
        Path(marker).unlink(missing_ok=True)


def grid_edge_notes(grid: Sequence[Mapping[str, Any]], best: Mapping[str, Any]) -> list[str]:
    """Notes for each numeric axis of a tuning ``grid`` (a list of settings) on which the selected setting
    ``best`` takes the smallest or the largest value tried (of at least two): the optimum may lie outside the
    grid, so the grid should be widened there before the selection is trusted. An axis whose smallest value
    is 0 (no regularisation) is not flagged for choosing it."""
    notes = []
    for key, value in best.items():
        values = sorted({g[key] for g in grid if key in g})
        if len(values) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue
        if value == values[-1]:
            notes.append(f"{key}={value:g} is the largest value tried ({', '.join(f'{v:g}' for v in values)}): "
                         f"widen the grid upwards")
        elif value == values[0] and value != 0:
            notes.append(f"{key}={value:g} is the smallest value tried ({', '.join(f'{v:g}' for v in values)}): "
                         f"widen the grid downwards")
    return notes


def save_result(experiment: str, dataset: str, *, config: Any, seed: int, metrics: Mapping[str, Any],
                wall_time: float, extra: Mapping[str, Any] | None = None, root: str | os.PathLike = "results",
                name: str | None = None) -> Path:
    """Write one run's result to ``<root>/<experiment>/<dataset>/<name>.json`` and return the path.

    ``name`` defaults to ``seed<seed>``; give e.g. ``f"{model}_seed{seed}"`` when several models share an
    experiment. ``config`` may be a dataclass or a dict. The file is written atomically (temp file +
    rename) and also records package versions, device, command line, git commit and a UTC timestamp.
    """
    for label, value in (("experiment", experiment), ("dataset", dataset)):
        if not value or "/" in str(value) or str(value).startswith("."):
            raise ValueError(f"save_result: {label}={value!r} must be a plain folder name")
    name = name or f"seed{seed}"
    out_dir = Path(root) / experiment / dataset
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "experiment": experiment,
        "dataset": dataset,
        "name": name,
        "seed": int(seed),
        "config": to_jsonable(config),
        "metrics": to_jsonable(dict(metrics)),
        "wall_time_s": float(wall_time),
        "versions": package_versions(),
        "device": device_info(),
        "command": typed_command(),
        "git_commit": _git_commit(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "extra": to_jsonable(dict(extra or {})),
    }
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def load_results(experiment: str, dataset: str, root: str | os.PathLike = "results",
                 pattern: str = "*.json") -> list[dict]:
    """All result records of ``<root>/<experiment>/<dataset>/<pattern>``, sorted by file name."""
    d = Path(root) / experiment / dataset
    return [json.loads(p.read_text()) for p in sorted(d.glob(pattern))]


def mean_std(runs: Sequence[Mapping[str, float]], ddof: int = 1) -> dict[str, tuple[float, float]]:
    """Per metric ``(mean, std)`` over runs (e.g. seeds); sample std (``ddof=1``), 0 for a single run.

    Only numeric metrics present in every run are kept.
    """
    if not runs:
        raise ValueError("mean_std: no runs given")
    keys = [k for k in runs[0] if all(k in r for r in runs)
            and all(isinstance(r[k], (int, float, np.number)) and not isinstance(r[k], bool) for r in runs)]
    out = {}
    for k in keys:
        v = np.asarray([float(r[k]) for r in runs])
        std = float(v.std(ddof=ddof)) if len(v) > ddof else 0.0
        out[k] = (float(v.mean()), std)
    return out


def relative_improvement(model: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, float]:
    """``(m - b) / b * 100`` per metric, using means when values are ``(mean, std)`` pairs."""
    def m(v):
        return float(v[0]) if isinstance(v, (tuple, list)) else float(v)

    return {k: (m(model[k]) - m(base[k])) / m(base[k]) * 100.0 if m(base[k]) != 0 else float("nan")
            for k in model if k in base}


def format_table(rows: Mapping[str, Any], columns: Sequence[str] | None = None, digits: int = 4,
                 improvement: tuple[str, str] | None = None, row_header: str = "model") -> str:
    """Markdown table: one row per model, one column per metric, cells ``mean ± std``.

    ``rows`` maps a model name to a list of per-seed metric dicts, or to the output of :func:`mean_std`,
    or to a plain metric dict. A list of one run prints its values without ``± std`` (one seed has no
    spread to report; printing ``± 0`` would claim one). ``columns`` defaults to the first row's metrics. ``improvement=(model,
    base)`` appends a row ``Improv. (model vs base)`` with :func:`relative_improvement` in percent.
    """
    stats: dict[str, dict[str, tuple[float, float] | float]] = {}
    for name, val in rows.items():
        if isinstance(val, (list, tuple)) and len(val) == 1:
            stats[name] = {k: m for k, (m, _) in mean_std(val).items()}
        elif isinstance(val, (list, tuple)):
            stats[name] = mean_std(val)
        else:
            stats[name] = dict(val)
    if columns is None:
        columns = [k for k in next(iter(stats.values())) if k != "n_users"]

    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, (tuple, list)):
            return f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"
        return f"{float(v):.{digits}f}"

    lines = ["| " + " | ".join([row_header, *columns]) + " |",
             "|" + "|".join(["---"] * (len(columns) + 1)) + "|"]
    for name, st in stats.items():
        lines.append("| " + " | ".join([name, *(cell(st.get(c)) for c in columns)]) + " |")
    if improvement is not None:
        a, b = improvement
        imp = relative_improvement(stats[a], stats[b])
        lines.append("| " + " | ".join([f"Improv. ({a} vs {b})",
                                         *(f"{imp[c]:+.1f}%" if c in imp else "-" for c in columns)]) + " |")
    return "\n".join(lines)
