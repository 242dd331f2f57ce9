"""Meta-Wrapper vs CTR baselines: synthetic overfitting study, main table, ablation M1-M4, two-stage tuning
and sensitivity (N, mu, beta).

    python -m experiments.meta_wrapper                          # MW on the synthetic set, 15 epochs, < 2 min
    python -m experiments.meta_wrapper --table synthetic --seeds 5 --epochs 15 --lr 3e-3 --out results
    python -m experiments.meta_wrapper --table tune --dataset ml-100k --no-train-loss   # lr {0.1, 0.3, 1} x l2 {0, 1e-6}
    python -m experiments.meta_wrapper --table main --tuned --dataset ml-100k --seeds 5 --no-train-loss

On the real sets every run follows the paper's protocol (``PAPER``): mini-batch SGD, lr x 0.9 after every
epoch, at most 30 epochs, stopped after 5 without a better validation AUC; ``--optimizer adam --lr-decay 1
--epochs 5 --patience 0`` is the pre-issue-33 protocol. Meta-Wrapper runs in the detached form
(``--no-detach``: the coupled form).

``--model`` / ``--models`` names: base, wdl, pnn, deepfm, din (full training set), mw (= M4), M1..M4, and
for the synthetic study fs (= DIN), fs_l2, fs_dropout. ``--table tune`` selects lr x l2 (``--lrs`` x
``--l2s``) per model on seed 0's validation AUC, or with ``--tuned`` the second stage batch size x
embedding size (``--batch-sizes`` x ``--emb-dims``), and writes ``<out>/meta_wrapper/<dataset>/tuned.json``;
``--tuned`` makes every table use it (M1-M4 and the sensitivity runs use mw's). Method:
:mod:`jaxrec.methods.meta_wrapper`; step timing: ``python -m benchmarks.meta_wrapper_timing``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from jaxrec import cli
from jaxrec.configs.meta_wrapper import MWConfig

MAIN, SYNTH, ABLATION = ("base", "wdl", "pnn", "deepfm", "din", "mw"), ("base", "fs", "fs_l2", "fs_dropout", "mw"), \
    ("M1", "M2", "M3", "M4")
PRESETS = {**{m: {"model": m, "variant": "plain"} for m in ("base", "wdl", "pnn", "deepfm", "din")},
           "fs": {"model": "din", "variant": "plain"}, "fs_l2": {"model": "din", "variant": "plain"},
           "fs_dropout": {"model": "din", "variant": "plain"}, "mw": {"variant": "M4"},
           **{m: {"variant": m} for m in ABLATION}, "M3": {"variant": "M3", "n_inner": 1}}
REAL = ("ml-100k", "Amazon_Beauty", "Amazon_Toys_and_Games", "Amazon_Sports_and_Outdoors", "Yelp")
SENSITIVITY = {"n_inner": (1, 2, 3), "mu": (0.2, 0.4, 0.6, 0.8), "beta": (1e-4, 1e-3, 1e-2, 1.0)}
# the paper's protocol on the real sets (issue 33): mini-batch SGD, lr x 0.9 per epoch, at most 30 epochs,
# stopped after 5 without a better validation AUC; every model's initial lr from the same three values
PAPER = {"optimizer": "sgd", "lr_decay": 0.9, "epochs": 30, "patience": 5}
LRS = {"sgd": (0.1, 0.3, 1.0), "adam": (1e-3, 5e-3, 1e-2)}  # --table tune's default lr grid per optimizer


def add_flags(p):
    p.add_argument("--model", default="mw", choices=sorted(PRESETS), help="--table single: the model")
    p.add_argument("--models", nargs="+", choices=sorted(PRESETS), help="the rows of a table (default: its own)")
    p.add_argument("--tuned", action="store_true", help="use <out>/meta_wrapper/<dataset>/tuned.json per model")
    p.add_argument("--no-train-loss", action="store_true", help="skip the per-epoch training-set / test evaluation")
    p.add_argument("--lrs", type=cli.checked("rate"), nargs="+", default=None,
                   help="--table tune: initial learning rates (default: " +
                        "; ".join(f"{o} {' '.join(f'{v:g}' for v in LRS[o])}" for o in LRS) + ")")
    p.add_argument("--l2s", type=cli.checked("nonneg"), nargs="+", default=[0.0, 1e-6], help="--table tune: l2 weights")
    p.add_argument("--batch-sizes", type=cli.checked("positive", int), nargs="+", help="--table tune --tuned: second-stage batch sizes")
    p.add_argument("--emb-dims", type=cli.checked("positive", int), nargs="+", help="--table tune --tuned: second-stage embedding sizes")
    p.add_argument("--factors", nargs="+", default=list(SENSITIVITY), choices=list(SENSITIVITY),
                   help="--table sensitivity: the factors varied one at a time")
    p.add_argument("--fs-l2", type=cli.checked("nonneg"), default=1e-4, help="l2 of the FS+L2 synthetic baseline")
    p.add_argument("--fs-dropout", type=cli.checked("fraction"), default=0.5, help="dropout of the FS+dropout synthetic baseline")


def label(cfg) -> str:
    return cfg.model if cfg.variant == "plain" else cfg.variant


def tuned_path(runner) -> Path:
    return runner.folder / "tuned.json"


def config(runner, name: str, **over) -> MWConfig:
    """The config of model ``name``: the command line's, the model's preset, its tuned.json entry (with
    ``--tuned``), then ``over``."""
    a = runner.args
    if len(runner.grid) > 1:
        raise ValueError("several values of a config flag make a grid only in --table tune (--lrs / --l2s)")
    preset = dict(PRESETS[name], **{"fs_l2": {"l2": a.fs_l2}, "fs_dropout": {"dropout": a.fs_dropout}}.get(name, {}))
    tuned = {}
    if a.tuned:
        if not tuned_path(runner).exists():
            raise FileNotFoundError(f"--tuned: {tuned_path(runner)} not found; run --table tune first")
        entry = json.loads(tuned_path(runner).read_text()).get("mw" if name in ABLATION else name)
        if entry is None:
            raise KeyError(f"--tuned: {tuned_path(runner)} has no entry for {name}; tune it first")
        if entry.get("optimizer", "adam") != runner.base.optimizer:
            raise ValueError(f"--tuned: {tuned_path(runner)} was tuned with {entry.get('optimizer', 'adam')}, "
                             f"this command uses --optimizer {runner.base.optimizer}; tune again")
        tuned = {k: entry[k] for k in ("lr", "l2", "batch_size", "emb_dim") if k in entry}
    base = dataclasses.replace(runner.base, track_train_loss=not a.no_train_loss)
    return dataclasses.replace(base, **preset, **tuned, **over)


def step_ms(rec) -> float:
    e = rec["extra"]
    if "step_time" in e:  # runs stored before the port: measured per step
        return 1e3 * e["step_time"]
    n = e["summary"]["steps_per_epoch"]
    rest = e["epochs_run"] - 1
    return 1e3 * ((e["train_time_s"] - e["compile_s"]) / (rest * n) if rest else e["train_time_s"] / n)


def model_table(runner, name: str, names, improvement: bool = True, title: str = "", **over) -> str:
    """Test AUC at the best-validation epoch, RelaImpr over the first row, validation AUC, step time."""
    from jaxrec.metrics import rela_impr

    recs = {n: runner.seeds(config(runner, n, **over.get(n, {})), label(config(runner, n, **over.get(n, {}))))
            for n in runner.order(names)}
    recs = {n: recs[n] for n in names}
    ref = names[0]
    cols = ["test_auc"] + ([f"relaimpr_vs_{ref}_%"] if improvement and len(names) > 1 else []) + ["val_auc", "step_ms"]
    rows = {n: [{"metrics": {"test": {"test_auc": r["metrics"]["test"]["auc"], "val_auc": r["metrics"]["val"]["auc"],
                                      f"relaimpr_vs_{ref}_%": float(rela_impr(r["metrics"]["test"]["auc"],
                                                                              b["metrics"]["test"]["auc"])),
                                      "step_ms": step_ms(r)}}} for r, b in zip(recs[n], recs[ref])] for n in names}
    notes = [f"best epoch per seed: " + "; ".join(f"{n} " + ", ".join(str(r["extra"]["best_epoch"] + 1) for r in recs[n])
                                                    for n in names)]
    return runner.table(name, rows, cols, title=title or f"meta_wrapper {name}", notes=notes)


def table_single(runner) -> str:
    return model_table(runner, "single", (runner.args.model,), title=f"meta_wrapper --model {runner.args.model}")


def table_main(runner) -> str:
    return model_table(runner, "main_tuned" if runner.args.tuned else "main", tuple(runner.args.models or MAIN))


def table_ablation(runner) -> str:
    return model_table(runner, "ablation_tuned" if runner.args.tuned else "ablation",
                       tuple(runner.args.models or ABLATION))


def table_synthetic(runner) -> str:
    """Losses after the last epoch (no early stopping) and the per-epoch curves (figure)."""
    import matplotlib.pyplot as plt
    import numpy as np

    names = tuple(runner.args.models or SYNTH)
    recs = {n: runner.seeds(config(runner, n), label(config(runner, n))) for n in names}
    rows, curves = {}, {}
    for n in names:
        hs = [[h["val"] for h in r["extra"]["history"]] for r in recs[n]]
        rows[n] = [{"metrics": {"test": {"train_loss": h[-1]["train_loss"], "test_loss": h[-1]["test_loss"],
                                         "gap": h[-1]["test_loss"] - h[-1]["train_loss"],
                                         "min_test_loss": min(e["test_loss"] for e in h),
                                         "test_auc": h[-1]["test_auc"]}}} for h in hs]
        curves[n] = [[(e["train_loss"], e["test_loss"]) for e in h] for h in hs]
    text = runner.table("synthetic", rows, ["train_loss", "test_loss", "gap", "min_test_loss", "test_auc"],
                        title="synthetic interest groups, after the last epoch")
    if runner.save:
        (runner.folder / "synthetic_curves.json").write_text(json.dumps(curves))
        fig, ax = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for n, cs in curves.items():
            a = np.asarray(cs)  # [seeds, epochs, 2]
            for j, t in enumerate(("training loss", "test loss")):
                ax[j].plot(np.arange(1, a.shape[1] + 1), a[:, :, j].mean(0), label=n)
                ax[j].set(title=t, xlabel="epoch")
        ax[0].set_ylabel("BCE")
        ax[1].legend()
        fig.tight_layout()
        fig.savefig(runner.folder / "synthetic_overfit.png", dpi=120)
        plt.close(fig)
    return text


def table_tune(runner) -> str:
    """Stage 1: lr x l2 per model; stage 2 (``--tuned`` + ``--batch-sizes`` / ``--emb-dims``): batch size x
    embedding size at each model's lr / l2. Best validation AUC on the first seed; merged into tuned.json."""
    from jaxrec.results import grid_edge_notes

    a = runner.args
    names = tuple(a.models or MAIN)
    shape = bool(a.batch_sizes or a.emb_dims)
    if shape and not a.tuned:
        raise ValueError("--batch-sizes / --emb-dims tune the shape at each model's selected lr / l2: add --tuned")
    if shape:
        grid = [{"batch_size": b, "emb_dim": e} for b in (a.batch_sizes or [runner.base.batch_size])
                for e in (a.emb_dims or [runner.base.emb_dim])]
        name_of = "bs={batch_size},emb={emb_dim}".format
    else:
        grid = [{"lr": lr, "l2": l2} for lr in (a.lrs or LRS[runner.base.optimizer]) for l2 in a.l2s]
        name_of = "lr={lr:g},l2={l2:g}".format
    old = json.loads(tuned_path(runner).read_text()) if tuned_path(runner).exists() else {}
    entries, rows, notes = {}, {}, []
    for n in runner.order(names):
        base = config(runner, n)
        if shape:
            base = dataclasses.replace(base, lr=old[n]["lr"], l2=old[n]["l2"])
        best, points = runner.tune(base, grid, label(base))
        ok = [p for p in points if "error" not in p]
        scores = {name_of(**{k: p[k] for k in grid[0]}): p["val_auc"] for p in ok}
        chosen = {k: getattr(best, k) for k in grid[0]}
        notes += [f"note: {n}: {t}" for t in grid_edge_notes(ok, chosen)]
        entries[n] = (dict(old.get(n, {}), lr=base.lr, l2=base.l2, **chosen, val_auc=scores[name_of(**chosen)],
                           grid_shape=scores) if shape else
                      dict(chosen, optimizer=base.optimizer, val_auc=scores[name_of(**chosen)], grid=scores))
        rows[n] = [{"metrics": {"val": scores}}]
    text = runner.table("tune_shape" if shape else "tune", {n: rows[n] for n in names}, list(rows[names[0]][0]["metrics"]["val"]),
                        part="val", title="validation AUC per grid point",
                        notes=["selected: " + "; ".join(f"{n} " + " ".join(f"{k}={entries[n][k]:g}" for k in grid[0])
                                                       for n in names), *notes])
    if runner.save:
        tuned_path(runner).write_text(json.dumps({**old, **{n: entries[n] for n in names}}, indent=2))
        runner.log(f"wrote {tuned_path(runner)}")
    return text


def table_sensitivity(runner) -> str:
    """MW's test / validation AUC over N, mu, beta, one factor at a time around the command line's setting."""
    c = config(runner, "mw")
    points = [(k, v) for k in runner.args.factors for v in SENSITIVITY[k]]
    recs = {(k, v): runner.seeds(dataclasses.replace(c, **{k: v}), "M4") for k, v in runner.order(points)}
    rows = {f"{k}={v:g}": [{"metrics": {"test": {"test_auc": r["metrics"]["test"]["auc"],
                                                 "val_auc": r["metrics"]["val"]["auc"]}}} for r in recs[k, v]]
            for k, v in points}
    return runner.table("sensitivity_tuned" if runner.args.tuned else "sensitivity", rows, ["test_auc", "val_auc"],
                        title="Meta-Wrapper sensitivity")


SPEC = cli.Spec(name="meta_wrapper", config=MWConfig, method="jaxrec.methods.meta_wrapper",
                description=__doc__.splitlines()[0], datasets=("synthetic", *REAL), metric="auc",
                tables={"single": table_single, "synthetic": table_synthetic, "tune": table_tune, "main": table_main,
                        "ablation": table_ablation, "sensitivity": table_sensitivity},
                default_table="single", tuned={"synthetic": {"epochs": 15}, **{d: PAPER for d in REAL}},
                quick={"epochs": 2}, seeds=1, add_flags=add_flags)


def main(argv=None):
    return cli.main(SPEC, argv)


if __name__ == "__main__":
    main()
