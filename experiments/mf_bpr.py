"""MF trained with BPR vs. the most-popular baseline, full-ranking evaluation.

    python -m experiments.mf_bpr                                   # synthetic data, 3 seeds, offline, < 1 min
    python -m experiments.mf_bpr --dataset ml-100k --data-dir ../shared/data --seeds 3 --out results
    python -m experiments.mf_bpr --dataset ml-100k --lr 0.001 0.003 0.01 --l2 0.0001 0.001 0.01 0.03 0.1

Method and protocol: :mod:`jaxrec.methods.mf_bpr`. Several ``--lr`` / ``--l2`` values make a grid searched
on seed 0's validation NDCG@20; the best setting then runs for every seed. Runs are cached in
``<out>/mf_bpr/<dataset>/`` (default ``--out runs``); the table goes to ``table_main.md`` / ``.png`` there.
"""
from __future__ import annotations

from jaxrec import cli
from jaxrec.configs.mf_bpr import MFBPRConfig

KS = (5, 10, 15, 20)
COLUMNS = [f"{m}@{k}" for m in ("recall", "ndcg", "precision") for k in KS]
# lr / l2 chosen by the validation grid of RESULTS.md (lr {1e-3, 3e-3, 1e-2} x l2 {1e-4 .. 1e-1}, seed 0)
TUNED = {"ml-100k": {"lr": 3e-3, "l2": 3e-2}}
QUICK = {"epochs": 5, "dim": 16, "patience": 3, "small": True, "batch_size": 512}


def table_main(runner) -> str:
    """MF-BPR (tuned on the command line's grid) and MostPop over the seeds."""
    best, grid = runner.tune(label="mf")
    rows = {"MF-BPR": runner.seeds(best, label="mf"),
            "MostPop": runner.baseline_seeds("popular", runner.module.most_popular)}
    return runner.table("main", rows, COLUMNS, improvement=("MF-BPR", "MostPop"), grid=grid,
                        title=f"MF-BPR (lr={best.lr:g} l2={best.l2:g} dim={best.dim}) vs MostPop")


SPEC = cli.Spec(name="mf_bpr", config=MFBPRConfig, method="jaxrec.methods.mf_bpr", description=__doc__.splitlines()[0],
                datasets=("synthetic", "ml-100k", "ml-latest-small"), metric="ndcg@20",
                tables={"main": table_main}, tuned=TUNED, quick=QUICK, seeds=3)


def main(argv=None):
    return cli.main(SPEC, argv)


if __name__ == "__main__":
    main()
