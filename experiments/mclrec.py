"""MCLRec / MCLRec-J / CL4SRec / SASRec on leave-one-out sequential recommendation.

    python -m experiments.mclrec                                   # synthetic: MCLRec vs SASRec, < 2 min
    python -m experiments.mclrec --quick --model sasrec            # CI smoke run
    python -m experiments.mclrec --dataset Amazon_Beauty --data-dir ../shared/data --table models --seeds 3
    python -m experiments.mclrec --dataset Amazon_Beauty --data-dir ../shared/data --table ablations --seeds 3
    python -m experiments.mclrec --dataset Amazon_Beauty --data-dir ../shared/data --table reduced --out results

Protocol (issue 5, :mod:`jaxrec.methods.mclrec`): leave-one-out, every prefix of the rest a training
instance (inputs truncated to the last 50 items), full ranking over all items without history exclusion,
HR / NDCG @ {5, 10, 20}, selection on validation NDCG@10 with early stopping (patience 10), up to 100
epochs, Adam lr 1e-3, batch 256. ``--model`` / ``--ablation`` pick the configuration of ``--table main``;
several ``--lam`` values are CL4SRec's lambda grid (``--table models`` tunes lam in the paper's
{0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5}). The ``mclrec`` / ``mclrec_j`` presets are the reproduction path: the
authors' code per batch (stage 1, stage 2, stage 1 again; normalised augmenter outputs; R per row).
``--table curves`` is issue 32's equal-epoch comparison (SASRec, CL4SRec with lam from the grid, MCLRec; every
run for exactly ``--epochs`` epochs, validation NDCG@10 per epoch in one plot):

    python -m experiments.mclrec --dataset Amazon_Beauty --data-dir ../shared/data --table curves --epochs 10 --resume --out results

``--table reduced`` is RESULTS.md's 1-epoch Beauty table, ``--table speed`` its CPU step-time table (read
from the stored ``benchmarks/mclrec_step.py`` file under ``--out``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from jaxrec import cli
from jaxrec.configs.mclrec import ABLATIONS, LAMBDA_GRID, PRESETS, STORED_1EPOCH, MCLRecConfig, config_problem

MODELS = tuple(PRESETS)
NAMES = {"sasrec": "SASRec", "cl4srec": "CL4SRec", "mclrec": "MCLRec", "mclrec_j": "MCLRec-J"}
COLUMNS = [f"{m}@{k}" for m in ("hit", "ndcg") for k in (5, 10, 20)]
# Synthetic default: a small encoder, 10 epochs at most (about a minute on 2 idle CPU cores); the real-data
# defaults are the paper's (the config's).
TUNED = {"synthetic": {"max_len": 20, "hidden": 32, "ff": 64, "n_blocks": 1, "epochs": 10, "patience": 3,
                       "ragged_width": 0}}
# --quick: the old smoke settings (5 batches of 64 per epoch, 2 epochs); overrides every TUNED key
QUICK = {"max_len": 20, "hidden": 16, "ff": 32, "n_blocks": 1, "epochs": 2, "patience": 10, "ragged_width": 16,
         "batch_size": 64, "max_batches": 5}
PAPER_BEAUTY = {"SASRec (paper)": {"HR@20": 0.0894, "NDCG@20": 0.0386},
                "CL4SRec (paper)": {"HR@20": 0.0974, "NDCG@20": 0.0428},
                "MCLRec (paper)": {"HR@5": 0.0581, "HR@10": 0.0871, "HR@20": 0.1243, "NDCG@5": 0.0352,
                                   "NDCG@10": 0.0446, "NDCG@20": 0.0539}}
SPEED_ROWS = [("mclrec+repeat", "MCLRec + repeated stage 1 (as the authors' code)", "3 fwd/bwd + 1 fwd"),
              ("mclrec+repeat/cond", "the same, ragged path chosen by lax.cond (before)", "3 fwd/bwd + 1 fwd"),
              ("mclrec+repeat/dense", "the same at equal width (no ragged encoding)", "3 fwd/bwd + 1 fwd"),
              ("mclrec", "MCLRec (stage 1 + stage 2)", "2 fwd/bwd + 1 fwd"),
              ("mclrec_j", "MCLRec-J", "1 fwd/bwd"), ("cl4srec", "CL4SRec", "1 fwd/bwd"),
              ("sasrec", "SASRec", "1 fwd/bwd (no views)")]


def add_flags(p) -> None:
    p.add_argument("--model", choices=MODELS, default=None, help="--table main: the model (default: mclrec)")
    p.add_argument("--ablation", choices=sorted(ABLATIONS), default=None,
                   help="--table main: an MCLRec ablation (default: none)")


def configure(runner, model: str, ablation: str = "none", keep_flags: bool = True, **extra):
    """``(config, label)``: ``runner.base`` with ``model``'s preset, ``ablation`` and ``extra``; with
    ``keep_flags`` a field given on the command line keeps its value."""
    over = {**PRESETS[model], **ABLATIONS[ablation], **extra}
    over = {k: v for k, v in over.items() if not (keep_flags and getattr(runner.args, k, None) is not None)}
    return dataclasses.replace(runner.base, **over), model + ("" if ablation == "none" else f"_{ablation}")


def run_model(runner, model: str, ablation: str = "none", grid=None, keep_flags=True) -> tuple[list, list]:
    base, label = configure(runner, model, ablation, keep_flags)
    best, rows = runner.tune(base, grid, label=label)
    return runner.seeds(best, label), rows


def table_main(runner) -> str:
    """``--model`` (tuned on the command line's grid) over the seeds, against SASRec."""
    model, ablation = runner.args.model or "mclrec", runner.args.ablation or "none"
    recs, grid = run_model(runner, model, ablation)
    name = NAMES[model] + ("" if ablation == "none" else f" ({ablation})")
    rows = {name: recs}
    if model != "sasrec":
        rows["SASRec"] = runner.seeds(*configure(runner, "sasrec", keep_flags=False))  # untuned, base config
    return runner.table("main", rows, COLUMNS, improvement=(name, "SASRec") if model != "sasrec" else None,
                        grid=grid, title=f"{name} vs SASRec")


def table_models(runner) -> str:
    """The paper's comparison: SASRec, CL4SRec (lam tuned in LAMBDA_GRID unless --lam), MCLRec-J, MCLRec."""
    lam_grid = [{"lam": v} for v in (runner.args.lam or LAMBDA_GRID)]
    rows, grid = {}, []
    for m in MODELS:
        rows[NAMES[m]], g = run_model(runner, m, grid=lam_grid if m == "cl4srec" else [{}], keep_flags=False)
        grid += g
    return runner.table("models", rows, COLUMNS, improvement=("MCLRec", "CL4SRec"), grid=grid,
                        title="SASRec / CL4SRec / MCLRec-J / MCLRec")


def table_ablations(runner) -> str:
    """MCLRec and its ablations (w/o L_cl2, w/o R, phi1 = phi2; w/o L_cl1 only when lam > 0)."""
    names = ["none", "no_cl2", "no_reg", "shared"] + (["no_cl1"] if runner.base.lam > 0 else [])
    rows = {("MCLRec" if a == "none" else f"MCLRec {a}"): run_model(runner, "mclrec", a)[0] for a in names}
    return runner.table("ablations", rows, COLUMNS, improvement=("MCLRec", "MCLRec no_cl2"),
                        title="MCLRec ablations")


CURVES = ("sasrec", "cl4srec", "mclrec")


def table_curves(runner) -> str:
    """SASRec, CL4SRec and MCLRec for exactly ``--epochs`` epochs each (no early stopping: patience = epochs),
    CL4SRec's lam chosen on validation NDCG@10 in :data:`LAMBDA_GRID` (or ``--lam``) after those same epochs.
    Test metrics at each run's best validation epoch; ``curves_<epochs>ep.png`` plots validation NDCG@10 per epoch of
    every run (the chosen CL4SRec bold, the other lam values faint)."""
    import matplotlib.pyplot as plt  # the runner has selected the Agg back end

    epochs = runner.base.epochs
    lam_grid = [{"lam": v} for v in (runner.args.lam or LAMBDA_GRID)]
    rows, grid, runs = {}, [], {}
    for m in runner.order(CURVES):
        base, label = configure(runner, m, keep_flags=False, patience=epochs)
        points = lam_grid if m == "cl4srec" else [{}]
        best, g = runner.tune(base, points, label=label)
        rows[NAMES[m]], grid = runner.seeds(best, label), grid + g
        # the runs tune just trained or read, from the runner's memory: (name, record, chosen) per grid point
        runs[m] = [(NAMES[m] + (f" lam={p['lam']:g}" if p else ""),
                    runner.run(dataclasses.replace(base, **p), runner.seed_list[0], label),
                    best == dataclasses.replace(base, **p)) for p in points]
    rows = {NAMES[m]: rows[NAMES[m]] for m in CURVES}
    notes = ["best epoch (1-based) per seed: " + "; ".join(
        f"{n} " + ", ".join(str(r["extra"]["best_epoch"] + 1) for r in recs) for n, recs in rows.items())]
    per_epoch = ["validation NDCG@10 per epoch (seed 0; CL4SRec at the chosen lam):", "",
                 "| model | " + " | ".join(str(e + 1) for e in range(epochs)) + " |", "|---|" + "---|" * epochs]
    for m in CURVES:
        name, rec, _ = next(r for r in runs[m] if r[2])
        vals = {h["epoch"]: h["val"]["ndcg@10"] for h in rec["extra"]["history"] if "val" in h}
        per_epoch.append(f"| {name} | " + " | ".join(f"{vals[e]:.4f}" if e in vals else "-" for e in range(epochs)) + " |")
    notes.append("\n".join(per_epoch))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m in CURVES:
        for name, rec, chosen in runs[m]:
            hist = [h for h in rec["extra"]["history"] if "val" in h]
            ax.plot([h["epoch"] + 1 for h in hist], [h["val"]["ndcg@10"] for h in hist], "o-" if chosen else "-",
                    lw=2 if chosen else 0.8, alpha=1 if chosen else 0.35,
                    label=name + (" (chosen)" if m == "cl4srec" and chosen else ""),
                    color={"sasrec": "C0", "cl4srec": "C1", "mclrec": "C2"}[m])
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NDCG@10")
    ax.set_title(f"{runner.dataset}, seed {runner.seed_list[0]}: {epochs} epochs each")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    if runner.save:
        runner.folder.mkdir(parents=True, exist_ok=True)
        fig.savefig(runner.folder / f"curves_{epochs}ep.png", dpi=110)
        runner.log(f"wrote {runner.folder / f'curves_{epochs}ep.png'}")
    plt.close(fig)
    return runner.table(f"curves_{epochs}ep", rows, COLUMNS, improvement=("MCLRec", "CL4SRec"), grid=grid,
                        title=f"SASRec / CL4SRec / MCLRec, {epochs} epochs each", notes=notes)


def _renamed(recs: list) -> list:
    names = {f"{m}@{k}": f"{'HR' if m == 'hit' else 'NDCG'}@{k}" for m in ("hit", "ndcg") for k in (5, 10, 20)}
    return [{"metrics": {"test": {names[k]: v for k, v in r["metrics"]["test"].items() if k in names}}}
            for r in recs]


def table_reduced(runner) -> str:
    """RESULTS.md's reduced Beauty table: SASRec and MCLRec after 1 epoch (seed 0), and the paper's rows."""
    # the stored MCLRec run predates issue 32 (stage 1 + stage 2, raw augmenter outputs, global R)
    rows = {f"{NAMES[m]} (ours, reduced)": _renamed(runner.seeds(*configure(
        runner, m, epochs=1, **(STORED_1EPOCH if m == "mclrec" else {})))) for m in ("sasrec", "mclrec")}
    rows.update({k: [{"metrics": {"test": v}}] for k, v in PAPER_BEAUTY.items()})
    cols = [f"{m}@{k}" for m in ("HR", "NDCG") for k in (5, 10, 20)]
    return runner.table("reduced", rows, cols, row_header="model (1 epoch of 100, seed 0)",
                        title="SASRec / MCLRec after 1 epoch and the paper's numbers")


def table_speed(runner) -> str:
    """RESULTS.md's CPU step-time table from the stored ``<out>/mclrec/bench_cpu/step_times.json`` (times
    measured in that one run only; no ratio to a figure quoted from elsewhere)."""
    rec = json.loads((Path(runner.args.out) / "mclrec" / "bench_cpu" / "step_times.json").read_text())
    steps = {r["variant"]: r for r in rec["extra"]["steps"]}
    lines = ["| variant | passes / batch | median wall s / batch | median CPU s / batch | compile s | "
             "fraction of the matmul rate |", "|---|---|---|---|---|---|"]
    for key, name, passes in SPEED_ROWS:
        if key in steps:
            r = steps[key]
            frac = "-" if key.endswith("/cond") or "fraction" not in r else f"{r['fraction']:.0%}"
            lines.append(f"| {name} | {passes} | {r['median_step_s']:.2f} | {r['median_cpu_s']:.2f} | "
                         f"{r.get('compile_s', float('nan')):.1f} | {frac} |")
    text = "\n".join(lines) + "\n"
    print(text)
    return text


SPEC = cli.Spec(name="mclrec", config=MCLRecConfig, method="jaxrec.methods.mclrec",
                description=__doc__.splitlines()[0],
                datasets=("synthetic", "Amazon_Beauty", "Amazon_Sports_and_Outdoors", "Amazon_Toys_and_Games", "Yelp"),
                metric="ndcg@10", tables={"main": table_main, "models": table_models, "ablations": table_ablations,
                                          "curves": table_curves, "reduced": table_reduced, "speed": table_speed},
                tuned=TUNED, quick=QUICK, seeds=1, add_flags=add_flags, check=config_problem)


def main(argv=None):
    inv = cli.parse(SPEC, argv)  # no JAX yet: refuse flags the chosen table would not use (exit 2)
    a, error = inv.args, cli.build_parser(SPEC).error
    if a.table != "main" and (a.model or a.ablation):
        error(f"--model / --ablation choose the model of --table main; --table {a.table} runs its own models")
    if a.ablation not in (None, "none") and (a.model or "mclrec") not in ("mclrec", "mclrec_j"):
        error(f"--ablation {a.ablation} only applies to --model mclrec / mclrec_j, not {a.model}")
    several = sorted(inv.grid[0]) if len(inv.grid) > 1 else []
    if several and a.table != "main" and not (a.table in ("models", "curves") and several == ["lam"]):
        error(f"several values of {', '.join('--' + k.replace('_', '-') for k in several)}: --table {a.table} "
              "takes one value per flag (a grid is for --table main, and --lam for --table models)")
    return cli.main(SPEC, argv)


if __name__ == "__main__":
    main()
