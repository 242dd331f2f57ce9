"""The experiment runner: named dataset -> split -> optional grid on seed 0's validation split -> seeds ->
result files -> table (markdown + PNG), written once for every ``experiments/<method>.py``.

:func:`jaxrec.cli.main` parses and checks the command line without JAX, then builds a :class:`Runner` from
the parsed :class:`jaxrec.cli.Invocation` and calls the chosen table function of the experiment script,
``table(runner) -> markdown``. A table function uses only this API::

    best, grid_rows = runner.tune()                 # the command line's grid (or the base config alone)
    rows = {"MF-BPR": runner.seeds(best),           # one record per seed: {"val": {...}, "test": {...}, ...}
            "MostPop": runner.baseline_seeds("MostPop", module.most_popular)}
    return runner.table("main", rows, columns=[...], improvement=("MF-BPR", "MostPop"), grid=grid_rows)

Runs are cached by ``(experiment, dataset, config, seed)`` in ``<out>/<experiment>/<dataset>/
<label>_<hash>_seed<s>.json`` (:func:`jaxrec.results.save_result`): a table command re-run after an
interruption re-uses every finished run, and two processes on the same ``--out`` (one with ``--reverse``)
share a grid without training a run twice (:func:`jaxrec.results.run_once`). ``--resume`` also checkpoints
every epoch of a run in progress. A grid point that fails (NaN, a config the method refuses) is recorded with
its error and the grid goes on; the table lists the failed points.

The method module (``Spec.method``) provides ``load(config, dataset, data_dir, seed) -> data``,
``DATA_FIELDS`` (the config fields the data depends on) and ``method(config, data) -> jaxrec.method.Method``;
optionally ``artifacts(config, data, state) -> {name: {array name: array}}``, saved with a run's results
file as ``<stem>.<name>.npz``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxrec import method as protocol  # noqa: E402
from jaxrec.cli import Invocation  # noqa: E402
from jaxrec.data import resolve_data_dir  # noqa: E402
from jaxrec.results import format_table, grid_edge_notes, mean_std, run_once, save_result, typed_command  # noqa: E402

__all__ = ["Runner", "config_hash", "plot_table"]


def config_hash(config: Any, n: int = 8) -> str:
    """First ``n`` hex digits of the SHA-1 of the config's fields (JSON, sorted keys): a run's cache key.
    Fields declared with ``param(..., key=False)`` are left out, and those with ``key_if_changed=True`` while
    they hold their default."""
    skip = {f.name for f in dataclasses.fields(config) if f.metadata.get("key", True) is False
            or (f.metadata.get("key_if_changed") and getattr(config, f.name) == f.default)}
    blob = json.dumps({k: v for k, v in dataclasses.asdict(config).items() if k not in skip}, sort_keys=True,
                      default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:n]


def _label(config: Any, default: str) -> str:
    return str(getattr(config, "name", None) or default)


class Runner:
    """Runs the configs and seeds of one parsed command line (see the module docstring)."""

    def __init__(self, inv: Invocation):
        self.inv, self.spec, self.args = inv, inv.spec, inv.args
        self.base, self.grid, self.seed_list = inv.base, inv.grid, inv.seeds
        self.dataset = self.args.dataset
        self.module = importlib.import_module(self.spec.method)
        self.data_dir = resolve_data_dir(self.args.data_dir) if self.dataset != "synthetic" else None
        self.save = not self.args.no_save
        self.folder = Path(self.args.out) / self.spec.name / self.dataset
        self._data: dict = {}
        self._records: dict[str, dict] = {}  # run stem -> record, so a run asked for twice trains (or reads) once
        self.t0 = time.perf_counter()

    # ---------------------------------------------------------------------------------------- pieces
    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def order(self, items: Sequence) -> list:
        """``items`` in this process's order (reversed with ``--reverse``)."""
        items = list(items)
        return items[::-1] if self.args.reverse else items

    def data(self, config: Any, seed: int):
        """The prepared data of ``seed``'s split, loaded once per distinct ``DATA_FIELDS`` values."""
        fields = getattr(self.module, "DATA_FIELDS", ())
        key = (seed, tuple(getattr(config, f) for f in fields))
        if key not in self._data:
            t = time.perf_counter()
            self._data[key] = self.module.load(config, self.dataset, self.data_dir, seed)
            if time.perf_counter() - t > 2:
                self.log(f"loaded and split {self.dataset} (seed {seed}) in {time.perf_counter() - t:.1f}s")
        return self._data[key]

    def _find(self, paths: Sequence[Path]) -> dict | None:
        for p in paths:
            if p.exists():
                self.log(f"[cached] {p}")
                return json.loads(p.read_text())
        return None

    # ------------------------------------------------------------------------------------------ runs
    def run(self, config: Any, seed: int, label: str | None = None, fresh: bool = False) -> dict:
        """One trained run (or its cached results file): ``{"val", "test", "seed", "config", "extra", ...}``.
        A run asked for again in this process (a table's :meth:`seeds` after :meth:`tune`, a plot of a grid) is
        returned from memory, with or without ``--no-save``. ``fresh=True`` trains even when a results file
        exists (and replaces it): for a timing that must come from this run, beside the others it is compared
        with."""
        label = label or _label(config, self.spec.name)
        stem = f"{label}_{config_hash(config)}_seed{seed}"
        path = self.folder / f"{stem}.json"
        if stem in self._records and not fresh:
            return self._records[stem]

        def train() -> dict:
            data = self.data(config, seed)
            ckpt = self.folder / "ckpt" / stem if self.args.resume and self.save else None
            every = getattr(config, "eval_every", 1)
            res = protocol.train(self.module.method(config, data), seed=seed, epochs=config.epochs,
                                 metric=self.spec.metric, patience=getattr(config, "patience", None) or None,
                                 eval_every=every, ckpt_dir=ckpt, log=self.log,
                                 log_every=every * (self.args.log_every or 10), desc=f"{label} seed {seed}")
            m = self.spec.metric
            self.log(f"{label} seed {seed}: val {m} {res.val.get(m, float('nan')):.4f}, test {m} "
                     f"{res.test.get(m, float('nan')):.4f} (best epoch {res.best_epoch}, {res.epochs_run} epochs, "
                     f"{res.wall_time_s:.1f}s)")
            extra = {"model": label, **{k: v for k, v in res.record().items() if k not in ("val", "test")}}
            rec = {"config": dataclasses.asdict(config), "seed": seed, "metrics": {"val": res.val, "test": res.test},
                   "wall_time_s": res.wall_time_s, "extra": extra}
            if self.save:
                save_result(self.spec.name, self.dataset, config=config, seed=seed, metrics=rec["metrics"],
                            wall_time=res.wall_time_s, extra=extra, root=self.args.out, name=stem)
                # optional: arrays of the trained state worth keeping beside the results file (<stem>.<name>.npz)
                artifacts = getattr(self.module, "artifacts", None)
                for name, arrays in (artifacts(config, data, res.state) if artifacts is not None else {}).items():
                    np.savez_compressed(self.folder / f"{stem}.{name}.npz", **arrays)
            return rec

        if not self.save or fresh:
            rec = train()
        else:
            rec = run_once(lambda: self._find([path]), train, path.with_suffix(".running"))
        self._records[stem] = rec
        return rec

    def seeds(self, config: Any, label: str | None = None) -> list[dict]:
        """:meth:`run` for every seed of the command line, in its order; returned in seed order."""
        recs = {s: self.run(config, s, label) for s in self.order(self.seed_list)}
        return [recs[s] for s in self.seed_list]

    def baseline(self, label: str, fn: Callable[[Any], Mapping], seed: int, config: Any = None) -> dict:
        """An untrained baseline on ``seed``'s data: ``fn(data) -> {"val": {...}, "test": {...}}``."""
        config = config or self.base
        path = self.folder / f"{label}_seed{seed}.json"
        cached = self._find([path]) if self.save else None
        if cached is not None:
            return cached
        t = time.perf_counter()
        metrics = dict(fn(self.data(config, seed)))
        wall = time.perf_counter() - t
        if self.save:
            save_result(self.spec.name, self.dataset, config={"model": label, **dataclasses.asdict(config)},
                        seed=seed, metrics=metrics, wall_time=wall, extra={"model": label}, root=self.args.out,
                        name=path.stem)
        return {"seed": seed, "metrics": metrics, "wall_time_s": wall, "extra": {"model": label}}

    def baseline_seeds(self, label: str, fn: Callable, config: Any = None) -> list[dict]:
        return [self.baseline(label, fn, s, config) for s in self.seed_list]

    def tune(self, base: Any = None, grid: Sequence[Mapping] | None = None,
             label: str | None = None) -> tuple[Any, list[dict]]:
        """Select the grid point with the best validation metric on the first seed. A failed point is kept
        as ``{"error": ...}`` and skipped. Returns ``(best config, one row per point)``."""
        base = base if base is not None else self.base
        grid = list(grid) if grid is not None else self.grid
        if len(grid) == 1:
            return dataclasses.replace(base, **grid[0]), []
        m, seed = self.spec.metric, self.seed_list[0]
        self.log(f"grid of {len(grid)} points on seed {seed}'s validation {m}")
        rows: dict[int, dict] = {}
        for i in self.order(range(len(grid))):
            point = dict(grid[i])
            self.log(f"grid point {i + 1}/{len(grid)}: " + " ".join(f"{k}={v}" for k, v in point.items()))
            try:
                rec = self.run(dataclasses.replace(base, **point), seed, label)
                rows[i] = {**point, f"val_{m}": rec["metrics"]["val"][m], "best_epoch": rec["extra"].get("best_epoch")}
            except Exception as e:  # noqa: BLE001 - a failed point is recorded, the grid goes on
                if self.args.debug:
                    raise
                msg = " ".join(str(e).split())
                self.log(f"grid point {i + 1} failed: {type(e).__name__}: {msg}")
                rows[i] = {**point, "error": f"{type(e).__name__}: {msg}"}
        out = [rows[i] for i in range(len(grid))]
        ok = [r for r in out if "error" not in r]
        if not ok:
            raise RuntimeError(f"every one of the {len(grid)} grid points failed; first: {out[0]['error']}")
        top = max(ok, key=lambda r: r[f"val_{m}"])
        best = dataclasses.replace(base, **{k: top[k] for k in grid[0]})
        self.log("selected " + " ".join(f"{k}={top[k]}" for k in grid[0]) + f" (val {m} {top[f'val_{m}']:.4f})")
        return best, out

    # ---------------------------------------------------------------------------------------- tables
    def table(self, name: str, rows: Mapping[str, Sequence[dict]], columns: Sequence[str], *,
              part: str = "test", improvement: tuple[str, str] | None = None, grid: Sequence[dict] = (),
              title: str | None = None, notes: Sequence[str] = (), row_header: str = "model") -> str:
        """Markdown table of ``part`` metrics (mean ± std over seeds) of each row's records, with the grid and
        its failed points; printed, and with saving on written to ``<folder>/table_<name>.md`` + ``.png``."""
        metrics = {k: [r["metrics"][part] for r in recs] for k, recs in rows.items()}
        seeds = self.seed_list
        lines = [f"### {title or self.spec.name} on {self.dataset}: {part} metrics, mean ± std over seeds {seeds}",
                 "", format_table(metrics, columns=columns, improvement=improvement, row_header=row_header), ""]
        if grid:
            m = self.spec.metric
            lines.append(f"Grid on seed {seeds[0]}'s validation {m}:")
            lines += ["- " + " ".join(f"{k}={v}" for k, v in g.items() if k not in ("error", f"val_{m}", "best_epoch"))
                      + (f": FAILED ({g['error']})" if "error" in g else f": {g[f'val_{m}']:.4f}") for g in grid]
            ok = [g for g in grid if "error" not in g]
            if ok:
                best = max(ok, key=lambda g: g[f"val_{m}"])
                point = {k: v for k, v in best.items() if k not in (f"val_{m}", "best_epoch")}
                lines += [f"- note: {n}" for n in grid_edge_notes(ok, point)]
            lines.append("")
        lines += [f"- {n}" for n in notes]
        lines.append(f"Command: `{typed_command()}`; wall time {time.perf_counter() - self.t0:.1f}s.")
        text = "\n".join(lines).rstrip() + "\n"
        print("\n" + text)
        if self.save:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"table_{name}.md").write_text(text)
            plot_table(metrics, columns, self.folder / f"table_{name}.png",
                       title=f"{self.spec.name} on {self.dataset} ({part}, {len(seeds)} seeds)")
            self.log(f"wrote {self.folder / f'table_{name}.md'} and .png")
        return text

    def main(self) -> str:
        """Produce the command line's table (``--table``, else the spec's default)."""
        return self.spec.tables[getattr(self.args, "table", self.spec.default_table)](self)


def plot_table(metrics: Mapping[str, Sequence[Mapping]], columns: Sequence[str], path: Path, title: str) -> Path:
    """Grouped bars (mean, with ± std whiskers over seeds) of ``columns`` for every row; written to ``path``."""
    names = list(metrics)
    cols = list(columns)
    x = np.arange(len(cols))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(cols) * max(len(names), 1) * 0.5 + 3), 4))
    for j, name in enumerate(names):
        stats = mean_std(metrics[name])
        mean = [stats.get(c, (np.nan, 0))[0] for c in cols]
        std = [stats.get(c, (0, 0))[1] for c in cols]
        ax.bar(x + (j - (len(names) - 1) / 2) * width, mean, width, yerr=std, label=name, capsize=2)
    ax.set_xticks(x, cols, rotation=30, ha="right")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
