"""AutoCross (beam search of feature crosses scored by field-wise LR) vs LR, Wide&Deep, Deep and DeepFM.

    python -m experiments.autocross                                # synthetic planted crosses, 1 seed, < 2 min
    python -m experiments.autocross --table trace                  # the search: one row per accepted cross
    python -m experiments.autocross --dataset adult --data-dir ../shared/data --seeds 5 \\
        --lr 0.003 0.01 0.03 --l2 0 1e-6 1e-5 --out results       # + --table trace / --table timing

Method and protocol: :mod:`jaxrec.methods.autocross`. Every model (LR on the preprocessed fields, AC+LR,
AC+W&D, Deep, DeepFM) gets the same ``--lr`` x ``--l2`` grid, searched on seed 0's validation AUC; the best
setting of each then runs for every seed. The cross search itself runs once per seed (inside the data
preparation of the crossed models) and its trace and timings are kept in each run's summary.
"""
from __future__ import annotations

import dataclasses

from jaxrec import cli
from jaxrec.configs.autocross import AutoCrossConfig

# row label -> (results-file label, config overrides)
MODELS = {"LR": ("lr", {"model": "lr", "crosses": False}),
          "AC+LR": ("aclr", {"model": "lr", "crosses": True}),
          "AC+W&D": ("acwd", {"model": "wd", "crosses": True}),
          "Deep": ("deep", {"model": "deep", "crosses": False}),
          "DeepFM": ("deepfm", {"model": "deepfm", "crosses": False})}
# the synthetic default: a smaller table and two granularities, so the default run stays under 2 minutes
TUNED = {"synthetic": {"n_rows": 8000, "bins": (10, 100), "epochs": 15}}
QUICK = {"n_rows": 3000, "max_crosses": 2, "epochs": 3, "patience": 2, "bins": (10, 100)}


def _runs(runner, names=tuple(MODELS)) -> dict:
    """name -> (selected config, per-seed records, grid rows) for each model of :data:`MODELS`."""
    out = {}
    for name in names:
        label, over = MODELS[name]
        best, grid = runner.tune(base=dataclasses.replace(runner.base, **over), label=label)
        out[name] = (best, runner.seeds(best, label=label), grid)
    return out


def table_main(runner) -> str:
    """Test AUC / log loss of every model (mean ± std over seeds), the crosses each seed's search found."""
    runs = _runs(runner)
    rows = {name: recs for name, (_, recs, _) in runs.items()}
    notes = [f"{n}: lr={c.lr:g} l2={c.l2:g} (validation AUC of seed {runner.seed_list[0]} over "
             f"{max(len(g), 1)} grid points)" for n, (c, _, g) in runs.items()]
    auc = {n: sum(r["metrics"]["test"]["auc"] for r in recs) / len(recs) for n, recs in rows.items()}
    notes.append(f"AC+LR - LR = {auc['AC+LR'] - auc['LR']:+.4f} test AUC; AC+LR - Deep = "
                 f"{auc['AC+LR'] - auc['Deep']:+.4f}")
    for r in runs["AC+LR"][1]:
        crosses = ", ".join(f"{c['name']} (order {c['order']})" for c in r["extra"]["summary"]["crosses"])
        notes.append(f"seed {r['seed']} crosses: {crosses or 'none'}")
    return runner.table("main", rows, ["auc", "logloss"], improvement=("AC+LR", "LR"), notes=notes,
                        title="AutoCross (AC+LR, AC+W&D) vs LR, Deep, DeepFM")


def table_trace(runner) -> str:
    """The search of each seed: validation AUC of the refit LR after every accepted cross (and the rejected
    last one), the gain, the candidates scored and the time since the search began."""
    rows = {}
    for r in _runs(runner, ("AC+LR",))["AC+LR"][1]:
        for t in r["extra"]["summary"]["trace"]:
            what = t["cross"] or "preprocessed fields"
            tag = "" if t["accepted"] else " (rejected)"
            rows[f"seed {r['seed']} step {t['step']}: {what}{tag}"] = [{"metrics": {"val": {
                "val_auc": t["val_auc"], "gain": t["gain"], "order": t["order"], "candidates": t["candidates"],
                "time_s": t["time_s"]}}}]
    return runner.table("trace", rows, ["val_auc", "gain", "order", "candidates", "time_s"], part="val",
                        title="AutoCross search trace (refit LR on S after each cross)", row_header="search step")


def table_timing(runner) -> str:
    """Cross-feature generation time (discretisation selection; cross search) and inference latency."""
    rows = {}
    for name, (_, recs, _) in _runs(runner).items():
        rows[name] = [{"metrics": {"test": {
            "prep_s": r["extra"]["summary"]["preprocess_s"], "search_s": r["extra"]["summary"].get("search_s", 0.0),
            "latency_us": 1e3 * r["extra"]["summary"]["latency_ms"], "train_s": r["wall_time_s"]}}} for r in recs]
    return runner.table("timing", rows, ["prep_s", "search_s", "latency_us", "train_s"],
                        title="AutoCross timing (prep_s: multi-granularity discretisation incl. compilation; "
                              "search_s: the cross search; latency_us: jitted forward pass over the test set, "
                              "per example; train_s: the final model)")


def check(config) -> str | None:
    if any(int(b) < 2 for b in config.bins):
        return "every discretisation granularity needs at least 2 bins"
    return None


SPEC = cli.Spec(name="autocross", config=AutoCrossConfig, method="jaxrec.methods.autocross",
                description=__doc__.splitlines()[0], datasets=("synthetic", "adult"), metric="auc",
                tables={"main": table_main, "trace": table_trace, "timing": table_timing}, tuned=TUNED, quick=QUICK,
                seeds=1,
                check=check)


def main(argv=None):
    return cli.main(SPEC, argv)


if __name__ == "__main__":
    main()
