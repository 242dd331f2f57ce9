"""lambda-Opt (KDD 2019): MF-BPR with fine-grained L2 weights learned through a simulated Adam step, against
MF-lambda-Fix (one global lambda tuned on validation) and the coarser granularities.

    python -m experiments.lambda_opt                                     # synthetic data, offline, < 2 min
    python -m experiments.lambda_opt --dataset ml-100k --data-dir ../shared/data --seeds 3 --out results
    python -m experiments.lambda_opt --dataset ml-100k --granularity dui --table lambda --seeds 3 --out results

Method and protocol: :mod:`jaxrec.methods.lambda_opt`. Table ``main``: MF-lambda-Fix (lambda tuned on seed 0's
validation HR@100 over LAM_GRID) and lambda-Opt at every granularity (or only those given with
``--granularity``). Table ``lambda``: the learned lambdas of one granularity (default dui) against user / item
training frequency and against the epoch, with Spearman correlations, two plots. Runs are cached in
``<out>/lambda_opt/<dataset>/`` (default ``--out runs``).
"""
from __future__ import annotations

import dataclasses
import shlex
import sys

import numpy as np

from jaxrec import cli
from jaxrec.configs.lambda_opt import LambdaOptConfig

COLUMNS = ["auc", "hr@50", "hr@100", "ndcg@50", "ndcg@100"]
LAM_GRID = (10.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 0.0)  # the MF-lambda-Fix grid
LEARNED = ("global", "d", "du", "di", "dui")
NAMES = {"global": "lambda-Opt-global", "d": "lambda-Opt-D", "du": "lambda-Opt-DU", "di": "lambda-Opt-DI",
         "dui": "lambda-Opt-DUI"}
SYNTH = {"core": 5, "small": True, "dim": 32, "lr": 1e-2, "lam_lr": 1e-2, "batch_size": 512, "epochs": 20}
TUNED = {"synthetic": SYNTH, "Amazon_Beauty": {"core": 5}}
QUICK = {"small": True, "core": 5, "epochs": 4, "dim": 16, "eval_every": 2, "batch_size": 512}


def _granularities(runner) -> list[str]:
    if "granularity" in runner.grid[0]:
        return [g["granularity"] for g in runner.grid]
    return [runner.base.granularity] if runner.args.granularity else list(LEARNED)


def _other_axes(runner) -> list[dict]:
    """The command line's grid without granularity / lam: every model is tuned over it (same budget)."""
    pts = [{k: v for k, v in g.items() if k not in ("granularity", "lam")} for g in runner.grid]
    return [dict(t) for t in dict.fromkeys(tuple(p.items()) for p in pts)]


def _fix(runner):
    """MF-lambda-Fix tuned over LAM_GRID (or the --lam values) x the other grid axes."""
    if "lam" in runner.grid[0]:
        lams = list(dict.fromkeys(g["lam"] for g in runner.grid))
    else:
        lams = [runner.base.lam] if runner.args.lam else list(LAM_GRID)
    grid = [{**o, "lam": v} for o in _other_axes(runner) for v in lams]
    return runner.tune(dataclasses.replace(runner.base, granularity="fix"), grid, label="fix")


def table_main(runner) -> str:
    """MF-lambda-Fix (tuned lambda) and lambda-Opt at each granularity, test metrics over the seeds."""
    fix, grid = _fix(runner)
    rows = {f"MF-lambda-Fix (lambda={fix.lam:g})": runner.seeds(fix, label="fix")}
    for g in _granularities(runner):
        if g != "fix":
            best, _ = runner.tune(dataclasses.replace(runner.base, granularity=g), _other_axes(runner), label=g)
            rows[NAMES[g]] = runner.seeds(best, label=g)
    best = next(reversed(rows))
    return runner.table("main", rows, COLUMNS, improvement=(best, next(iter(rows))), grid=grid,
                        title=f"lambda-Opt vs MF-lambda-Fix (dim={fix.dim}, lr={fix.lr:g}, {fix.epochs} epochs max)")


def table_lambda(runner) -> str:
    """Mean learned lambda against training frequency (quintile bins) and against the epoch."""
    g = _granularities(runner)[-1] if runner.args.granularity else "dui"
    best, _ = runner.tune(dataclasses.replace(runner.base, granularity=g), _other_axes(runner), label=g)
    recs = runner.seeds(best, label=g)
    sums = [r["extra"]["summary"] for r in recs]
    lines = [f"### lambda-Opt-{g.upper()} on {runner.dataset}: learned lambda (best state) vs training frequency",
             ""]
    for side in ("user", "item"):
        rho = [s[f"spearman_{side}"] for s in sums]
        lines += [f"{side}s: Spearman(frequency, mean lambda over dims) = {np.nanmean(rho):.3f} ± "
                  f"{np.nanstd(rho):.3f} over seeds {runner.seed_list}", "",
                  f"| {side} frequency bin | mean lambda (seed {runner.seed_list[0]}) |", "|---|---|"]
        lines += [f"| [{lo:g}, {hi:g}] | {lam:.3g} |" for lo, hi, lam in sums[0][f"bins_{side}"]]
        lines.append("")
    hist = [[(h["epoch"], h["train"]["lam_user"], h["train"]["lam_item"]) for h in r["extra"]["history"]] for r in recs]
    ep = np.array([[e for e, _, _ in h] for h in hist][0])
    n = min(len(h) for h in hist)
    lu = np.mean([[x for _, x, _ in h[:n]] for h in hist], 0)
    li = np.mean([[x for _, _, x in h[:n]] for h in hist], 0)
    rho_t = [float(np.corrcoef(ep[:n], lu)[0, 1]) if np.ptp(lu) > 0 else float("nan"),
             float(np.corrcoef(ep[:n], li)[0, 1]) if np.ptp(li) > 0 else float("nan")]
    lines += [f"lambda over training (mean over seeds of the epoch-mean lambda): Pearson(epoch, lambda) users "
              f"{rho_t[0]:.3f}, items {rho_t[1]:.3f}; epoch {ep[0]}: {lu[0]:.3g} / {li[0]:.3g}, epoch {ep[n - 1]}: "
              f"{lu[-1]:.3g} / {li[-1]:.3g}", "", f"Command: `python -m experiments.lambda_opt {shlex.join(sys.argv[1:])}`"]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if runner.save:
        _plots(runner, g, sums, ep[:n], lu, li)
        (runner.folder / "table_lambda.md").write_text(text)
        runner.log(f"wrote {runner.folder / 'table_lambda.md'} and lambda_frequency.png, lambda_epoch.png")
    return text


def _plots(runner, g, sums, ep, lu, li):
    import matplotlib.pyplot as plt  # the runner has selected the Agg back end

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, side in zip(axes, ("user", "item")):
        bins = sums[0][f"bins_{side}"]
        ax.plot([np.sqrt(max(lo, 1) * hi) for lo, hi, _ in bins], [m for _, _, m in bins], "o-")
        ax.set(xscale="log", xlabel=f"{side} training frequency (quintile bins)", ylabel="mean lambda",
               title=f"{side}s, lambda-Opt-{g.upper()}")
    fig.tight_layout()
    fig.savefig(runner.folder / "lambda_frequency.png", dpi=100)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ep, lu, label="user lambda")
    ax.plot(ep, li, label="item lambda")
    ax.set(xlabel="epoch", ylabel="mean lambda", title=f"lambda-Opt-{g.upper()} on {runner.dataset}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(runner.folder / "lambda_epoch.png", dpi=100)
    plt.close("all")


SPEC = cli.Spec(name="lambda_opt", config=LambdaOptConfig, method="jaxrec.methods.lambda_opt",
                description=__doc__.splitlines()[0],
                datasets=("synthetic", "ml-100k", "ml-latest-small", "Amazon_Beauty"), metric="hr@100",
                tables={"main": table_main, "lambda": table_lambda}, tuned=TUNED, quick=QUICK, seeds=1)


def main(argv=None):
    return cli.main(SPEC, argv)


if __name__ == "__main__":
    main()
