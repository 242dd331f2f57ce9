"""MCLRec / MCLRec-J / CL4SRec / SASRec on leave-one-out sequential recommendation.

Protocol (issue 5): leave-one-out (last item test, second-to-last validation), every prefix of the rest
is a training instance (inputs truncated to the last 50 items), full ranking over all items without
history exclusion, HR@{5,10,20} / NDCG@{5,10,20}, model selection on validation NDCG@10 with early
stopping (patience 10), up to 100 epochs, Adam lr 1e-3, batch 256.

Examples::

    python experiments/mclrec.py                                   # embedded synthetic data, MCLRec
    python experiments/mclrec.py --quick --model sasrec            # CI smoke run
    python experiments/mclrec.py --dataset Amazon_Beauty --model mclrec --seeds 3      # full protocol
    python experiments/mclrec.py --dataset Amazon_Beauty --model cl4srec --tune-lam    # lam in {.05,.1,.2}
    python experiments/mclrec.py --dataset Amazon_Beauty --model mclrec --ablation no_reg
    python experiments/mclrec.py --dataset Amazon_Beauty --table   # markdown table of stored results

Results go to ``results/mclrec/<dataset>/<model>[_<ablation>][_<tag>]_seed<k>.json`` through
``jaxrec.results.save_result``; with checkpoints (default) an interrupted run resumes from
``<out>/mclrec/<dataset>/ckpt/<name>`` when restarted with the same command.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from jaxrec.cli import common_parser, live_output, seed_list
from jaxrec.methods import mclrec as M
from jaxrec.results import format_table, load_results, mean_std, save_result

EXPERIMENT = "mclrec"
MODELS = ("sasrec", "cl4srec", "mclrec", "mclrec_j")
LAMBDA_GRID = (0.05, 0.1, 0.2)
# Embedded synthetic default: a cluster Markov chain with a learnable successor rule.
SYNTHETIC = dict(n_users=1000, n_items=500, n_clusters=10, mean_len=15, min_len=5, max_len=40, p_follow=0.6,
                 seed=0)


def build_parser():
    """The command line of this experiment (the tests check RESULTS.md's commands against it)."""
    p = common_parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=MODELS, default="mclrec")
    p.add_argument("--ablation", choices=sorted(M.ABLATIONS), default="none")
    p.add_argument("--lam", type=float, default=None, help="weight of L_cl1 (default: preset)")
    p.add_argument("--beta", type=float, default=None, help="weight of L_cl2 + 0.1 R (default: preset)")
    p.add_argument("--tune-lam", action="store_true",
                   help=f"tune lam in {LAMBDA_GRID} on validation NDCG@10 (seed 0), then run all seeds")
    p.add_argument("--repeat-stage1", action="store_true",
                   help="run stage 1 again after stage 2 on the same batch (as the authors' code)")
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--max-batches", type=int, default=None, help="cap batches per epoch (reduced budget)")
    p.add_argument("--eval-users", type=int, default=None, help="evaluate on the first N users only")
    p.add_argument("--tag", default="", help="suffix of the result name (e.g. 'reduced')")
    p.add_argument("--no-ckpt", action="store_true", help="no checkpoint / resume")
    p.add_argument("--table", action="store_true", help="print the stored results as a markdown table")
    return p


def parse(argv=None):
    return build_parser().parse_args(argv)


def load(args):
    if args.dataset == "synthetic":
        from jaxrec.data import synthetic

        return synthetic.sequences(**SYNTHETIC)
    from jaxrec.data import load_sequences, resolve_data_dir

    return load_sequences(args.dataset, resolve_data_dir(args.data_dir))


def config_for(args, lam=None) -> M.MCLRecConfig:
    over = {"batch_size": args.batch_size, "max_len": args.max_len, "patience": args.patience,
            "repeat_stage1": args.repeat_stage1}
    if args.epochs is not None:
        over["epochs"] = args.epochs
    if args.lam is not None:
        over["lam"] = args.lam
    if lam is not None:
        over["lam"] = lam
    if args.beta is not None:
        over["beta"] = args.beta
    if args.quick:
        over.update(hidden=16, ff=32, n_blocks=1, epochs=args.epochs or 2, batch_size=64)
    return M.preset(args.model, args.ablation, **over)


def run_name(args, seed, lam=None) -> str:
    parts = [args.model] + ([args.ablation] if args.ablation != "none" else [])
    if lam is not None:
        parts.append(f"lam{lam:g}")
    if args.tag:
        parts.append(args.tag)
    return "_".join(parts) + f"_seed{seed}"


def run_one(args, cfg, data, seed, name):
    ckpt = None if (args.no_ckpt or args.no_save) else Path(args.out) / EXPERIMENT / args.dataset / "ckpt" / name
    max_batches = args.max_batches if not args.quick else (args.max_batches or 5)
    t0 = time.perf_counter()
    res = M.train(cfg, data, seed, ckpt_dir=ckpt, max_batches=max_batches, eval_users=args.eval_users)
    wall = time.perf_counter() - t0
    metrics = dict(res["test"])
    metrics.update({f"valid_{k}": v for k, v in (res["valid"] or {}).items()})
    epoch_times = [h["time_s"] for h in res["history"]]
    extra = {"best_epoch": res["best_epoch"], "summary": res["summary"],
             "history": [{k: h[k] for k in ("epoch", "train", "val", "time_s")} for h in res["history"]],
             "median_epoch_time_s": float(np.median(epoch_times)) if epoch_times else None,
             "valid_eval_time_s": res["eval_time_s"], "test_eval_time_s": res["test_eval_time_s"],
             "max_batches_per_epoch": max_batches, "eval_users": args.eval_users,
             "reduced_budget": bool(max_batches or args.eval_users or cfg.epochs < 100 or args.quick),
             "exclude_history": False, "repeat_stage1": cfg.repeat_stage1}
    if not args.no_save:
        path = save_result(EXPERIMENT, args.dataset, config=dataclasses.asdict(cfg), seed=seed, metrics=metrics,
                           wall_time=wall, extra=extra, root=args.out, name=name)
        print(f"wrote {path}")
    show = {k: round(v, 4) for k, v in metrics.items() if k.split("@")[0] in ("hit", "ndcg") and "valid" not in k}
    print(f"{name}: best epoch {res['best_epoch']}, test {show}, {wall:.0f}s")
    return res


def table(args) -> str:
    recs = load_results(EXPERIMENT, args.dataset, root=args.out)
    if not recs:
        raise SystemExit(f"no results under {args.out}/{EXPERIMENT}/{args.dataset}")
    groups: dict[str, list] = {}
    for r in recs:
        groups.setdefault(r["name"].rsplit("_seed", 1)[0], []).append(r["metrics"])
    cols = [f"{m}@{k}" for m in ("hit", "ndcg") for k in (5, 10, 20)]
    return format_table({g: v for g, v in sorted(groups.items())}, columns=cols)


def main(argv=None):
    args = parse(argv)
    live_output()
    if args.table:
        print(table(args))
        return
    seqs = load(args)
    data = M.prepare_data(seqs, max_len=args.max_len if not args.quick else 20)
    if args.quick:
        args.max_len = 20
    print(f"{args.dataset}: {len(data['valid_target'])} users, {data['n_items']} items, "
          f"{len(data['train_target'])} training instances", flush=True)
    lam = None
    if args.tune_lam:
        if args.model != "cl4srec":
            raise SystemExit("--tune-lam applies to --model cl4srec")
        scores = {}
        for g in LAMBDA_GRID:
            res = run_one(args, config_for(args, g), data, 0, run_name(args, 0, g))
            scores[g] = res["valid"]["ndcg@10"]
        lam = max(scores, key=scores.get)
        print(f"tuned lam on validation NDCG@10 (seed 0): {scores} -> lam = {lam}")
    runs = []
    for seed in seed_list(args):
        cfg = config_for(args, lam)
        runs.append(run_one(args, cfg, data, seed, run_name(args, seed, lam))["test"])
    if len(runs) > 1:
        ms = mean_std(runs)
        print({k: f"{m:.4f} ± {s:.4f}" for k, (m, s) in ms.items() if "@" in k})


if __name__ == "__main__":
    sys.exit(main())
