"""MAL (Meta Auxiliary Learning) experiments: single runs, tuning on validation, and the four tables.

Single configuration over seeds (writes ``results/mal/<dataset>/<model>_<hash>_seed<k>.json``)::

    python -m experiments.mal --dataset ml-100k --base mf --mode sog --seeds 5
    python -m experiments.mal --base lightgcn --mode ig            # embedded synthetic data, offline
    python -m experiments.mal --aux none --base mf                 # the plain base model (BPR)

Tables (tune on validation with seed 0, then run the chosen configurations over ``--seeds``; finished runs
are cached by (dataset, config, seed) and re-used, so a table command can be re-run after an interruption)::

    python -m experiments.mal --table main      --dataset ml-100k --seeds 5 [--bases mf,lightgcn]
    python -m experiments.mal --table ablation  --dataset ml-100k --seeds 5 [--variants U+I,MAL]
    python -m experiments.mal --table sog_vs_ig --dataset ml-100k --seeds 5
    python -m experiments.mal --table timing    --dataset ml-100k

Tuning budget (``--grid full``): the base model gets the 9 configurations lr x L2 in {1e-3, 5e-3, 1e-2} x
{1e-4, 1e-3, 1e-2}; every MAL / ablation variant gets 9 configurations tau x w0 in {0.1, 0.3, 0.5} x
{0.0, 0.5, 1.0} (w0 = initial sigmoid(lambda)) at the base model's best (lr, L2). ``--grid reduced`` uses
4 + 4 configurations (lr x L2 in {5e-3, 1e-2} x {1e-4, 1e-3}; tau x w0 in {0.1, 0.3} x {0.1, 0.5}) and is
labelled so. ``--lrs`` / ``--l2s`` replace the base grid's learning rates / L2 weights (for example to widen
the L2 range when the base model picks the grid's edge); the MAL variants are still tuned at the base's
chosen (lr, L2), so a wider base grid changes both rows of a table alike::

    python -m experiments.mal --table main --dataset ml-latest-small --seeds 5 --l2s 1e-4 1e-3 1e-2 3e-2 1e-1
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from jaxrec.cli import add_reverse_flag, common_parser, live_output, seed_list, work_order
from jaxrec.methods import mal
from jaxrec.models import lightgcn
from jaxrec.results import grid_edge_notes, run_once

EXPERIMENT = "mal"
KS = (5, 10, 15, 20)
SYNTHETIC = dict(n_users=300, n_items=400, n_clusters=8, mean_per_user=30.0)

# per-dataset defaults: (max epochs, eval every, patience in evaluations)
EPOCHS = {"synthetic": (60, 5, 4), "ml-100k": (300, 5, 6), "ml-latest-small": (300, 5, 6),
          "Amazon_Beauty": (200, 5, 5)}


# ------------------------------------------------------------------------------------------------ data


def load_split(dataset: str, data_dir, seed: int):
    """80/20 per-user random split of the interactions, 10% of train held out as D_meta / validation.

    Sequential sets (Amazon_*) are used as Top-K sets: each user's distinct items, order ignored.
    """
    from jaxrec.data import Interactions, load_dataset, ratio_split, resolve_data_dir
    from jaxrec.data import synthetic

    if dataset == "synthetic":
        inter = synthetic.implicit_clusters(**SYNTHETIC, seed=0)
    else:
        data = load_dataset(dataset, resolve_data_dir(data_dir))
        inter = data.to_interactions() if hasattr(data, "to_interactions") else data
        key = inter.user.astype(np.int64) * inter.n_items + inter.item
        _, first = np.unique(key, return_index=True)  # a Top-K set: every (user, item) pair once
        first = np.sort(first)
        if len(first) < len(key):
            inter = Interactions(user=inter.user[first], item=inter.item[first], n_users=inter.n_users,
                                 n_items=inter.n_items, name=getattr(inter, "name", dataset))
    return ratio_split(inter, test_frac=0.2, val_frac=0.1, seed=seed)


# --------------------------------------------------------------------------------------------- running


def config_hash(cfg: mal.MALConfig) -> str:
    return hashlib.sha1(json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str).encode()).hexdigest()[:8]


def _metrics(m: dict, prefix: str = "") -> dict:
    return {prefix + k: float(v) for k, v in m.items() if k.split("@")[0] in ("recall", "ndcg", "precision", "hit")}


def run_one(cfg: mal.MALConfig, dataset: str, data_dir, seed: int, out: str, save: bool = True,
            tag: str = "", verbose: bool = True, split_cache: dict | None = None,
            graph_backend: str = "segment") -> dict:
    """Train one configuration with one seed (split seed = seed) or load its cached result file.

    While it trains, a ``<model>_<hash>_seed<k>.running`` marker (holding the pid) tells other processes that
    share ``out`` to wait for the result instead of training the same run again (see ``--reverse``).
    ``graph_backend`` (LightGCN's propagation) is recorded in the result but is not part of the run's key:
    every back end computes the same model."""
    key = f"{cfg.name}_{config_hash(cfg)}_seed{seed}"
    name = f"{tag}{key}"
    path = Path(out) / EXPERIMENT / dataset / f"{name}.json"
    # a finished run with the same (config, seed) is re-used; a tuning run with seed 0 is the same run
    cands = (path, path.with_name(f"tune_{key}.json"))
    marker = path.with_name(f"{key}.running")

    def find():
        for cand in cands:
            if cand.exists():
                if verbose:
                    print(f"[cached] {cand}", flush=True)
                return json.loads(cand.read_text())
        return None

    def train():
        return _train_and_save(cfg, dataset, data_dir, seed, out, save, name, path, verbose, split_cache,
                               graph_backend)

    return run_once(find, train, marker if save else None, verbose=verbose)


def _train_and_save(cfg, dataset, data_dir, seed, out, save, name, path, verbose, split_cache,
                    graph_backend="segment") -> dict:
    from jaxrec.results import save_result

    split_cache = {} if split_cache is None else split_cache
    if seed not in split_cache:
        split_cache[seed] = load_split(dataset, data_dir, seed)
    t0 = time.perf_counter()
    res = mal.train(cfg, split_cache[seed], seed=seed, log=(lambda s: print(s, flush=True)) if verbose else None,
                    graph_backend=graph_backend)
    wall = time.perf_counter() - t0
    metrics = {**_metrics(res["test"]), **_metrics(res["val"], "val_")}
    extra = {"model": cfg.name, "best_epoch": res["best_epoch"], "epochs_run": res["epochs_run"],
             "time_per_epoch_s": res["time_per_epoch_s"], "train_time_s": res["train_time_s"],
             "neighbor_time_s": res["neighbor_time_s"], "mean_neighbors": res["n_neighbors"],
             "graph_backend": res["graph_backend"],
             "history": res["history"],
             "lam_summary": {k: {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
                                 "max": float(v.max())} for k, v in res["lam"].items()}}
    rec = {"config": dataclasses.asdict(cfg), "seed": seed, "metrics": metrics, "extra": extra, "wall_time_s": wall}
    if save:
        save_result(EXPERIMENT, dataset, config=cfg, seed=seed, metrics=metrics, wall_time=wall, extra=extra,
                    root=out, name=name)
        if cfg.aux:
            np.savez_compressed(path.with_suffix(".lam.npz"), user=res["lam"]["user"], item=res["lam"]["item"],
                                user_degree=res["user_degree"], item_degree=res["item_degree"])
    if verbose:
        print(f"{cfg.name} seed {seed}: test R@20 {metrics['recall@20']:.4f} N@20 {metrics['ndcg@20']:.4f} "
              f"(val R@20 {metrics['val_recall@20']:.4f}, best epoch {res['best_epoch']}, {wall:.0f}s)", flush=True)
    return rec


def base_config(args, **kw) -> mal.MALConfig:
    epochs, every, patience = EPOCHS.get(args.dataset, (200, 5, 5))
    if args.quick:
        epochs, every, patience = 6, 3, 2
    fields = dict(base=args.base, mode=args.mode, aux=args.aux, dim=args.dim, lr=args.lr, l2=args.l2,
                  tau=args.tau, weight_init=args.weight_init, meta_lr=args.meta_lr, alpha=args.alpha,
                  gamma=args.gamma, cg_steps=args.cg_steps, unroll_steps=args.unroll_steps,
                  batch_size=args.batch_size, meta_batch_size=args.batch_size, max_neighbors=args.max_neighbors,
                  n_aux_neg=args.n_aux_neg, epochs=args.epochs or epochs, eval_every=every, patience=patience)
    if args.quick:
        fields.update(dim=16, batch_size=512, meta_batch_size=512)
    fields.update(kw)
    return mal.MALConfig(**fields)


def parse_aux(s: str) -> tuple:
    """``"user,item"`` -> ``("user", "item")``; ``"none"`` -> ``()``. An unknown name is an error (a typo such
    as ``users`` must not silently turn the run into the plain base model)."""
    if s in ("none", ""):
        return ()
    return tuple(parse_subset(s, ("user", "item"), "auxiliary task(s)", "'user,item', 'user', 'item' or 'none'"))


def parse_subset(s: str, allowed, what: str, usage: str) -> list:
    """The comma-separated names in ``s`` as a list in ``allowed``'s order; a name not in ``allowed`` is an
    ``argparse.ArgumentTypeError`` naming it (``what``) and saying what to use instead (``usage``)."""
    names = [a.strip() for a in s.split(",") if a.strip()]
    bad = [a for a in names if a not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {what} {bad}: use {usage}")
    return [a for a in allowed if a in names]


BASE_GRID = {"full": [dict(lr=lr, l2=l2) for lr in (1e-3, 5e-3, 1e-2) for l2 in (1e-4, 1e-3, 1e-2)],
             "reduced": [dict(lr=lr, l2=l2) for lr in (5e-3, 1e-2) for l2 in (1e-4, 1e-3)]}
AUX_GRID = {"full": [dict(tau=t, weight_init=w) for t in (0.1, 0.3, 0.5) for w in (0.0, 0.5, 1.0)],
            "reduced": [dict(tau=t, weight_init=w) for t in (0.1, 0.3) for w in (0.1, 0.5)]}


def base_axes(args) -> tuple[list, list]:
    """The base model's learning rates and L2 weights: those of ``BASE_GRID[args.grid]``, each replaced by
    ``--lrs`` / ``--l2s`` when given."""
    lrs = list(args.lrs) if args.lrs else sorted({g["lr"] for g in BASE_GRID[args.grid]})
    l2s = list(args.l2s) if args.l2s else sorted({g["l2"] for g in BASE_GRID[args.grid]})
    return lrs, l2s


def base_grid(args) -> list[dict]:
    """The base model's (lr, L2) grid, the product of :func:`base_axes`."""
    lrs, l2s = base_axes(args)
    return [dict(lr=lr, l2=l2) for lr in lrs for l2 in l2s]


def tune(cfg: mal.MALConfig, grid: list[dict], args, cache: dict) -> tuple[mal.MALConfig, list]:
    """Run every grid point with seed 0 and pick the best validation recall@20 (test is never looked at)."""
    if args.quick:
        grid = grid[:2]
    cfgs = [dataclasses.replace(cfg, **g) for g in grid]
    recs = {i: run_one(cfgs[i], args.dataset, args.data_dir, 0, args.out, not args.no_save, tag="tune_",
                       split_cache=cache, graph_backend=args.graph_backend) for i in work_order(range(len(grid)), args)}
    rows = [(recs[i]["metrics"]["val_recall@20"], g, cfgs[i]) for i, g in enumerate(grid)]
    best = max(rows, key=lambda r: r[0])
    print(f"tuned {cfg.name}: best {best[1]} val R@20 {best[0]:.4f} over {len(rows)} configs", flush=True)
    for note in grid_edge_notes(grid, best[1]):
        print(f"note: {cfg.name}: {note}", flush=True)
    return best[2], [(r[1], r[0]) for r in rows]


def tuned_base(args, base: str, cache: dict) -> mal.MALConfig:
    """The base model (no auxiliary tasks) tuned over :func:`base_grid` on seed 0's validation recall@20."""
    return tune(base_config(args, base=base, aux=(), mode="sog"), base_grid(args), args, cache)[0]


def tuned_mal(b_best: mal.MALConfig, args, cache: dict) -> mal.MALConfig:
    """MAL (both auxiliary tasks, SOG) tuned over ``AUX_GRID`` at the tuned base's lr/L2."""
    return tune(dataclasses.replace(b_best, aux=("user", "item"), mode="sog"), AUX_GRID[args.grid], args, cache)[0]


def run_seeds(cfg, args, cache) -> list[dict]:
    seeds = seed_list(args)
    recs = {s: run_one(cfg, args.dataset, args.data_dir, s, args.out, not args.no_save, split_cache=cache,
                       graph_backend=args.graph_backend)
            for s in work_order(seeds, args)}
    return [recs[s]["metrics"] for s in seeds]


def _protocol_note(args, n_seeds: int) -> str:
    g = args.grid
    lrs, l2s = base_axes(args)
    note = (f"dataset {args.dataset}; {n_seeds} seed(s) (seed = split seed = init seed); grid '{g}' "
            f"({len(lrs) * len(l2s)} base configs lr {sorted(lrs)} x L2 {sorted(l2s)}, {len(AUX_GRID[g])} MAL "
            f"configs tau x w0 at the base's best lr/L2), tuned on validation R@20 with seed 0; test = items not in train/val, full ranking")
    if n_seeds < 5 or g != "full" or args.quick:
        note += ". REDUCED PROTOCOL (paper: 5 seeds, full grid)"
    return note


def table_main(args) -> str:
    from jaxrec.results import format_table

    cache = {}
    blocks = []
    for base in args.bases:
        rows = {}
        b_best = tuned_base(args, base, cache)
        m_best = tuned_mal(b_best, args, cache)
        rows[b_best.name] = run_seeds(b_best, args, cache)
        rows[m_best.name] = run_seeds(m_best, args, cache)
        if not args.no_save:
            plot_lambda(m_best, args)
        cols = [f"{m}@{k}" for m in ("recall", "ndcg", "precision") for k in KS]
        blocks.append(f"**{base}** (chosen: base lr={b_best.lr} l2={b_best.l2}; MAL tau={m_best.tau} "
                      f"w0={m_best.weight_init})\n\n" +
                      format_table(rows, cols, improvement=(m_best.name, b_best.name)))
    return "\n\n".join(blocks) + "\n\n" + _protocol_note(args, len(seed_list(args)))


# the ablation's rows after the base model, by the suffix of their names (``MF+U``, ..., ``MF-MAL``), in order
ABLATION_VARIANTS = {"U": (("user",), "fixed"), "I": (("item",), "fixed"), "U+M": (("user",), "sog"),
                     "I+M": (("item",), "sog"), "U+I": (("user", "item"), "fixed"), "MAL": (("user", "item"), "sog")}


def parse_variants(s: str) -> list:
    """``"U+I,MAL"`` -> ``["U+I", "MAL"]`` in the table's order; an unknown name is an error."""
    usage = f"a comma-separated subset of {list(ABLATION_VARIANTS)}"
    names = parse_subset(s, list(ABLATION_VARIANTS), "ablation variant(s)", usage)
    if not names:
        raise argparse.ArgumentTypeError(f"no ablation variant in {s!r}: use {usage}")
    return names


def table_ablation(args) -> str:
    from jaxrec.results import format_table

    cache = {}
    blocks = []
    for base in args.bases:
        b_best = tuned_base(args, base, cache)
        rows = {b_best.name: run_seeds(b_best, args, cache)}
        variants = [ABLATION_VARIANTS[v] for v in args.variants]
        done = {}
        for v in work_order(range(len(variants)), args):  # --reverse also walks the variants backwards
            aux, mode = variants[v]
            c = dataclasses.replace(b_best, aux=aux, mode=mode)
            # fixed-weight variants search the same tau x w grid that the meta-learned ones start from, so a
            # meta-learning row is compared with the best constant weight among the same candidates (an
            # earlier {0.1, 0.5, 0.9} grid left out the small weights MAL settles near and flattered it)
            best, _ = tune(c, AUX_GRID[args.grid], args, cache)
            done[v] = (best.name, run_seeds(best, args, cache))
        rows.update(done[v] for v in range(len(variants)))  # rows in the table's order whatever the run order
        cols = [f"{m}@{k}" for m in ("recall", "ndcg") for k in (10, 20)]
        blocks.append(f"**{base}**\n\n" + format_table(rows, cols))
    return "\n\n".join(blocks) + "\n\n" + _protocol_note(args, len(seed_list(args))) + \
        "; fixed-weight variants: the same tau x w grid, w kept constant"


def table_sog_vs_ig(args) -> str:
    from jaxrec.results import format_table

    cache = {}
    blocks = []
    for base in args.bases:
        m_best = tuned_mal(tuned_base(args, base, cache), args, cache)
        ig = dataclasses.replace(m_best, mode="ig")  # same hyper-parameters, IG hypergradient
        rows = {m_best.name + " (SOG)": run_seeds(m_best, args, cache), ig.name: run_seeds(ig, args, cache)}
        cols = ["recall@10", "ndcg@10", "precision@10"]
        blocks.append(f"**{base}** (IG: gamma={ig.gamma}, k={ig.cg_steps} CG steps; SOG: alpha={m_best.alpha})\n\n"
                      + format_table(rows, cols, improvement=(ig.name, m_best.name + " (SOG)")))
    return "\n\n".join(blocks) + "\n\n" + _protocol_note(args, len(seed_list(args))) + \
        "; IG re-uses the SOG-tuned configuration (no separate tuning)"


def table_timing(args) -> str:
    """Time per Lambda update (hypergradient) vs a plain Theta step, measured in one process."""
    import jax

    from jaxrec.results import save_result

    split = load_split(args.dataset, args.data_dir, 0)
    rows, lines = {}, []
    for base in args.bases:
        cfg = base_config(args, base=base, aux=("user", "item"), mode="sog")
        t = mal.time_hypergradients(cfg, split, unroll=range(1, 6), cg=(1, 2, 3, 5),
                                    repeats=args.timing_repeats, seed=0, graph_backend=args.graph_backend)
        rows[base] = t
        th, thm = t["theta_step_s"], t["theta_step_median_s"]
        lines.append(f"**{base}** (batch {cfg.batch_size}, meta batch {cfg.meta_batch_size}, d={cfg.dim}; plain "
                     f"Theta step = {th * 1e3:.1f} ms min / {thm * 1e3:.1f} ms median of {args.timing_repeats} "
                     f"interleaved calls)\n")
        lines.append("| Lambda update | min time (ms) | ratio to Theta step (min) | median time (ms) | ratio (median) |")
        lines.append("|---|---|---|---|---|")
        for k, v in t["methods"].items():
            vm = t["methods_median"][k]
            lines.append(f"| {k} | {v * 1e3:.1f} | {v / th:.2f} | {vm * 1e3:.1f} | {vm / thm:.2f} |")
        lines.append("")
        if not args.no_save:
            save_result(EXPERIMENT, args.dataset, config=cfg, seed=0, metrics={"theta_step_s": t["theta_step_s"],
                        "theta_step_median_s": t["theta_step_median_s"],
                        **{f"{k}_s": v for k, v in t["methods"].items()},
                        **{f"{k}_median_s": v for k, v in t["methods_median"].items()}}, wall_time=t["wall_s"],
                        extra={"device": str(jax.devices()[0]), "repeats": args.timing_repeats},
                        root=args.out, name=f"timing_{base}")
    if not args.no_save:
        plot_timing(rows, Path(args.out) / EXPERIMENT / args.dataset / "timing.png")
    return "\n".join(lines)


def plot_lambda(cfg: mal.MALConfig, args) -> Path | None:
    """Scatter of the learned sigmoid(lambda_u) (and sigmoid(lambda_i)) against training degree, seed 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = Path(args.out) / EXPERIMENT / args.dataset
    stem = f"{cfg.name}_{config_hash(cfg)}_seed0"
    cands = [d / f"{stem}.lam.npz", d / f"tune_{stem}.lam.npz"]
    path = next((c for c in cands if c.exists()), None)
    if path is None:
        return None
    z = np.load(path)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.3))
    for a, who, c in ((ax[0], "user", "C0"), (ax[1], "item", "C1")):
        a.scatter(z[f"{who}_degree"], z[who], s=6, alpha=0.5, color=c)
        a.set_xscale("symlog")
        a.set_xlabel(f"{who} degree (training interactions)")
        a.set_ylabel(f"sigmoid(lambda_{who[0]})")
    fig.suptitle(f"{cfg.name} on {args.dataset}: learned auxiliary weights (seed 0)", fontsize=10)
    fig.tight_layout()
    out = d / f"lambda_vs_degree_{cfg.base}.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_timing(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for base, t in rows.items():
        sog = [(int(k.split("-")[1]), v / t["theta_step_s"]) for k, v in t["methods"].items() if k.startswith("SOG")]
        ig = [(int(k.split("k=")[1]), v / t["theta_step_s"]) for k, v in t["methods"].items() if k.startswith("IG")]
        ax.plot(*zip(*sog), "o-", label=f"{base}: SOG, unrolled steps")
        ax.plot(*zip(*ig), "s--", label=f"{base}: IG, CG steps k")
    ax.set_xlabel("unrolled steps / CG steps")
    ax.set_ylabel("time per Lambda update / Theta step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table_path(args) -> Path:
    """Where ``--table`` writes its markdown: ``table_<table>.md`` for the default ``--bases mf``, else with
    the bases appended (``table_ablation_lightgcn.md``, ``table_timing_mf_lightgcn.md``), so that a run on
    another base never overwrites the MF table of the same dataset; an ablation restricted by ``--variants``
    also appends the variants (``table_ablation_lightgcn_U+I_MAL.md``)."""
    suffix = "" if args.bases == ["mf"] else "_" + "_".join(args.bases)
    if args.table == "ablation" and args.variants != list(ABLATION_VARIANTS):
        suffix += "_" + "_".join(args.variants)  # a partial ablation never overwrites the full table
    return Path(args.out) / EXPERIMENT / args.dataset / f"table_{args.table}{suffix}.md"


def build_parser():
    """The command line of this experiment (``main`` parses with it; the tests check RESULTS.md's commands)."""
    p = common_parser(__doc__.split("\n")[0])
    p.add_argument("--table", choices=("main", "ablation", "sog_vs_ig", "timing"), default=None)
    p.add_argument("--bases", type=lambda s: s.split(","), default="mf",
                   help="base models for --table, comma separated (mf,lightgcn); parsed to a list")
    p.add_argument("--grid", choices=("full", "reduced"), default="full")
    p.add_argument("--lrs", type=float, nargs="+", default=None,
                   help="--table: the base grid's learning rates (default: those of --grid)")
    p.add_argument("--l2s", type=float, nargs="+", default=None,
                   help="--table: the base grid's L2 weights (default: those of --grid)")
    p.add_argument("--variants", type=parse_variants, default=list(ABLATION_VARIANTS),
                   help="--table ablation: the rows to run besides the base model, a comma-separated subset of "
                        f"{','.join(ABLATION_VARIANTS)} (default: all)")
    add_reverse_flag(p)
    p.add_argument("--base", choices=("mf", "lightgcn"), default="mf")
    p.add_argument("--graph-backend", choices=lightgcn.BACKENDS, default="segment",
                   help="LightGCN's propagation: edge list + segment_sum, BCOO, or a dense user x item block (faster "
                        "on small dense sets such as ml-100k); the same model, so not part of a run's cache key")
    p.add_argument("--mode", choices=("sog", "ig", "fixed"), default="sog")
    p.add_argument("--aux", default=("user", "item"), type=parse_aux, help="auxiliary tasks: 'user,item', 'user', 'item' or 'none'")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--l2", type=float, default=1e-4)
    p.add_argument("--tau", type=float, default=0.3)
    p.add_argument("--weight-init", type=float, default=0.5, help="initial sigmoid(lambda)")
    p.add_argument("--meta-lr", type=float, default=1e-2)
    p.add_argument("--alpha", type=float, default=1e-2, help="SOG proxy step size")
    p.add_argument("--unroll-steps", type=int, default=1)
    p.add_argument("--gamma", type=float, default=1.0, help="IG proximal strength")
    p.add_argument("--cg-steps", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=5000)
    p.add_argument("--max-neighbors", type=int, default=50)
    p.add_argument("--n-aux-neg", type=int, default=128)
    p.add_argument("--timing-repeats", type=int, default=20)
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    live_output()
    if args.quick:
        args.timing_repeats = min(args.timing_repeats, 3)
    if args.table is None:
        cfg = base_config(args)
        runs = [run_one(cfg, args.dataset, args.data_dir, s, args.out, not args.no_save,
                        graph_backend=args.graph_backend)["metrics"] for s in seed_list(args)]
        from jaxrec.results import format_table

        print(format_table({cfg.name: runs}, [f"{m}@{k}" for m in ("recall", "ndcg", "precision") for k in KS]))
        return
    text = {"main": table_main, "ablation": table_ablation, "sog_vs_ig": table_sog_vs_ig,
            "timing": table_timing}[args.table](args)
    header = f"### MAL {args.table} ({args.dataset})\n\nCommand: `python -m experiments.mal {' '.join(sys.argv[1:] if argv is None else argv)}`\n\n"
    print(header + text)
    if not args.no_save:
        out = table_path(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(header + text + "\n")


if __name__ == "__main__":
    main()
