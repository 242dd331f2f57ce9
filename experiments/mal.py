"""MAL (Meta Auxiliary Learning): single runs, and the main / ablation / SOG-vs-IG tables tuned on validation.

    python -m experiments.mal                                      # MF-MAL (SOG), synthetic data, offline
    python -m experiments.mal --dataset ml-100k --base lightgcn --mode ig --seeds 5
    python -m experiments.mal --aux none                           # the plain base model (BPR)
    python -m experiments.mal --table main --dataset ml-100k --seeds 5 --out results [--bases mf,lightgcn]
    python -m experiments.mal --table ablation --dataset ml-100k --seeds 5 --out results [--variants U+I,MAL]
    python -m experiments.mal --table sog_vs_ig --dataset ml-100k --seeds 5 --out results
    python -m experiments.mal --table ablation --grid paper --variants U+I,MAL --dataset ml-100k --seeds 5 --out results
    python -m experiments.mal --table neighbors --dataset ml-100k --out results  # share without neighbours per tau

Method: :mod:`jaxrec.methods.mal`. The tables tune on seed 0's validation recall@20: the base model over
lr x L2 (``--grid full``: {1e-3, 5e-3, 1e-2} x {1e-4, 1e-3, 1e-2}, ``reduced``: {5e-3, 1e-2} x {1e-4, 1e-3};
``--lrs`` / ``--l2s`` replace either axis), then every MAL / ablation variant over tau x w0 (full: {0.1, 0.3,
0.5} x {0.0, 0.5, 1.0}, reduced: {0.1, 0.3} x {0.1, 0.5}) at the base's chosen (lr, L2). ``--grid paper`` (issue
33) is the paper's protocol: every row holds out 10% of train as D_meta and draws negatives outside the whole
neighbour set, the base grid is 'full', meta-learned variants search tau {0.1, ..., 0.5} x meta lr {1e-4, 1e-3,
1e-2} (w0 0.5) and fixed-weight variants tau x w {0.1, 0.5, 1.0}: 15 points each. Runs are cached in
``<out>/mal/<dataset>/<model>_<hash>_seed<k>.json``. The hypergradient timing table: ``benchmarks/mal_timing.py``.
"""
from __future__ import annotations

import argparse
import dataclasses

from jaxrec import cli
from jaxrec.configs.mal import MALConfig

KS = (5, 10, 15, 20)
# per-dataset (max epochs, eval every, patience in evaluations); other sets: 200, 5, 5
EPOCHS = {"synthetic": (60, 5, 4), "ml-100k": (300, 5, 6), "ml-latest-small": (300, 5, 6)}
DATASETS = ("synthetic", "ml-100k", "ml-latest-small", "Amazon_Beauty", "Amazon_Sports_and_Outdoors",
            "Amazon_Toys_and_Games", "Yelp")
TUNED = {d: dict(zip(("epochs", "eval_every", "patience"), EPOCHS.get(d, (200, 5, 5)))) for d in DATASETS}
QUICK = dict(epochs=6, eval_every=3, patience=2, dim=16, batch_size=512, meta_batch_size=512)
BASE_GRID = {"full": dict(lr=(1e-3, 5e-3, 1e-2), l2=(1e-4, 1e-3, 1e-2)), "reduced": dict(lr=(5e-3, 1e-2), l2=(1e-4, 1e-3))}
BASE_GRID["paper"] = BASE_GRID["full"]
AUX_GRID = {"full": [dict(tau=t, weight_init=w) for t in (0.1, 0.3, 0.5) for w in (0.0, 0.5, 1.0)],
            "reduced": [dict(tau=t, weight_init=w) for t in (0.1, 0.3) for w in (0.1, 0.5)]}
TAUS = (0.1, 0.2, 0.3, 0.4, 0.5)  # the paper's threshold grid
# the paper protocol: grids per kind of variant (same size: equal budgets) and the config every row runs with
PAPER_GRID = {"meta": [dict(tau=t, weight_init=0.5, meta_lr=m) for t in TAUS for m in (1e-4, 1e-3, 1e-2)],
              "fixed": [dict(tau=t, weight_init=w) for t in TAUS for w in (0.1, 0.5, 1.0)]}
PROTOCOL = {"paper": dict(meta_frac=0.1, negatives="threshold")}
# the ablation's rows after the base model, by the suffix of their names (MF+U, ..., MF-MAL), in order
ABLATION_VARIANTS = {"U": (("user",), "fixed"), "I": (("item",), "fixed"), "U+M": (("user",), "sog"),
                     "I+M": (("item",), "sog"), "U+I": (("user", "item"), "fixed"), "MAL": (("user", "item"), "sog")}
TABLE_OWNED = ("base", "mode", "lr", "l2", "tau", "weight_init")  # set by the tables' own grids
PAPER_OWNED = ("meta_lr", "meta_frac", "negatives")  # also set by --grid paper


def aux_grid(grid: str, mode: str) -> list:
    """The tau x weight grid of an auxiliary variant (``mode`` 'fixed' or meta-learned) under ``grid``."""
    return PAPER_GRID["fixed" if mode == "fixed" else "meta"] if grid == "paper" else AUX_GRID[grid]


def subset(allowed, what: str, empty_ok: bool) -> callable:
    """An argparse type: comma-separated names of ``allowed`` -> tuple in ``allowed``'s order."""
    def parse(s: str) -> tuple:
        names = [a.strip() for a in s.split(",") if a.strip() and a.strip() != "none"]
        bad = [a for a in names if a not in allowed]
        if bad or (not names and not empty_ok):
            raise argparse.ArgumentTypeError(f"unknown or no {what} in {s!r}: use a comma-separated subset of "
                                             f"{','.join(allowed)}" + (" or 'none'" if empty_ok else ""))
        return tuple(a for a in allowed if a in names)
    return parse


def add_flags(p) -> None:
    p.add_argument("--aux", type=subset(("user", "item"), "auxiliary task", True), default=None,
                   help="auxiliary tasks: 'user,item' (default), 'user', 'item' or 'none' (the plain base model)")
    p.add_argument("--bases", type=subset(("mf", "lightgcn"), "base model", False), default=None,
                   help="tables: base models, comma separated (default: mf)")
    p.add_argument("--grid", choices=tuple(BASE_GRID), default=None, help="tables: tuning grid (default: full)")
    p.add_argument("--lrs", type=float, nargs="+", default=None, help="tables: the base grid's learning rates")
    p.add_argument("--l2s", type=float, nargs="+", default=None, help="tables: the base grid's L2 weights")
    p.add_argument("--variants", type=subset(tuple(ABLATION_VARIANTS), "ablation variant", False), default=None,
                   help=f"--table ablation: rows besides the base model (default: all of {','.join(ABLATION_VARIANTS)})")


def _args(runner, table: str):
    """The table's flags with their defaults; a flag this table would ignore is refused."""
    a = runner.args
    given = [f"--{k.replace('_', '-')}" for k in ("bases", "grid", "lrs", "l2s", "variants") if getattr(a, k) is not None]
    if table == "run" and given:
        raise ValueError(f"{', '.join(given)} apply to --table main/ablation/sog_vs_ig only")
    if table != "run":
        keys = (*TABLE_OWNED, "aux") + (PAPER_OWNED if a.grid == "paper" else ())
        owned = [f"--{k.replace('_', '-')}" for k in keys if getattr(a, k) is not None]
        if owned or len(runner.grid) > 1:
            raise ValueError(f"--table {table} sets {', '.join(owned) or 'its grid'} itself (use --bases, --grid, "
                             "--lrs, --l2s); give one value per other config flag")
        if a.variants is not None and table != "ablation":
            raise ValueError("--variants applies to --table ablation only")
    grid = a.grid or "full"
    if grid in PROTOCOL:
        runner.base = dataclasses.replace(runner.base, **PROTOCOL[grid])
    return (list(a.bases or ("mf",)), grid, list(a.lrs or BASE_GRID[grid]["lr"]), list(a.l2s or BASE_GRID[grid]["l2"]),
            list(a.variants or ABLATION_VARIANTS))


def table_run(runner) -> str:
    """One configuration (a grid when a flag takes several values) over the seeds."""
    _args(runner, "run")
    base = runner.base if runner.args.aux is None else dataclasses.replace(runner.base, aux=runner.args.aux)
    best, grid = runner.tune(base)
    cols = [f"{m}@{k}" for m in ("recall", "ndcg", "precision") for k in KS]
    return runner.table("run", {best.name: runner.seeds(best)}, cols, grid=grid, title=f"{best.name} ({best.mode})")


def tune(runner, cfg, grid):
    return runner.tune(cfg, grid[:2] if runner.args.quick else grid)[0]


def tuned_pair(runner, base: str, lrs, l2s, grid: str):
    """The base model tuned over lr x L2, and MAL (both tasks, SOG) tuned over tau x w0 at its lr / L2."""
    b = tune(runner, dataclasses.replace(runner.base, base=base, aux=(), mode="sog"),
             [dict(lr=lr, l2=l2) for lr in lrs for l2 in l2s])
    return b, tune(runner, dataclasses.replace(b, aux=("user", "item"), mode="sog"), aux_grid(grid, "sog"))


def note(runner, grid, lrs, l2s) -> str:
    n = len(runner.seed_list)
    aux = (f"{len(PAPER_GRID['meta'])} configs tau x meta lr per meta-learned variant, {len(PAPER_GRID['fixed'])} "
           "tau x w per fixed one; D_meta = 10% of train, negatives outside every entity with cos >= tau"
           if grid == "paper" else f"{len(AUX_GRID[grid])} MAL configs tau x w0")
    text = (f"dataset {runner.dataset}; {n} seed(s) (seed = split seed = init seed); grid '{grid}' ({len(lrs) * len(l2s)} "
            f"base configs lr {sorted(lrs)} x L2 {sorted(l2s)}, {aux} at the base's "
            f"best lr/L2), tuned on validation R@20 with seed 0; test = items not in train/val, full ranking")
    return text + (". REDUCED PROTOCOL (paper: 5 seeds, full grid)" if n < 5 or grid == "reduced" or runner.args.quick else "")


def table_main(runner) -> str:
    bases, grid, lrs, l2s, _ = _args(runner, "main")
    out = []
    for base in bases:
        b, m = tuned_pair(runner, base, lrs, l2s, grid)
        rows = {b.name: runner.seeds(b), m.name: runner.seeds(m)}
        if runner.save:
            plot_lambda(runner, m)
        out.append(runner.table("main" + ("" if base == "mf" else f"_{base}") + suffix(grid), rows,
                                [f"{k}@{n}" for k in ("recall", "ndcg", "precision") for n in KS],
                                improvement=(m.name, b.name), notes=[note(runner, grid, lrs, l2s)],
                                title=f"{base} (chosen: base lr={b.lr} l2={b.l2}; MAL tau={m.tau} w0={m.weight_init})"))
    return "\n".join(out)


def table_ablation(runner) -> str:
    bases, grid, lrs, l2s, variants = _args(runner, "ablation")
    out = []
    for base in bases:
        b = tune(runner, dataclasses.replace(runner.base, base=base, aux=(), mode="sog"),
                 [dict(lr=lr, l2=l2) for lr in lrs for l2 in l2s])
        rows, done = {b.name: runner.seeds(b)}, {}
        for v in runner.order(variants):  # fixed weights search the same tau x w0 grid, w kept constant
            aux, mode = ABLATION_VARIANTS[v]
            best = tune(runner, dataclasses.replace(b, aux=aux, mode=mode), aux_grid(grid, mode))
            done[v] = (best.name, runner.seeds(best))
        rows.update(done[v] for v in variants)  # the table's order whatever the run order
        name = "ablation" + ("" if base == "mf" else f"_{base}") + \
            ("" if variants == list(ABLATION_VARIANTS) else "_" + "_".join(variants)) + suffix(grid)
        out.append(runner.table(name, rows, [f"{k}@{n}" for k in ("recall", "ndcg") for n in (10, 20)], title=base,
                                notes=[note(runner, grid, lrs, l2s) + ("; fixed-weight variants: tau x w, w kept "
                                       "constant" if grid == "paper" else "; fixed-weight variants: the same tau x w "
                                       "grid, w kept constant")]))
    return "\n".join(out)


def table_sog_vs_ig(runner) -> str:
    bases, grid, lrs, l2s, _ = _args(runner, "sog_vs_ig")
    out = []
    for base in bases:
        m = tuned_pair(runner, base, lrs, l2s, grid)[1]
        ig = dataclasses.replace(m, mode="ig")  # same hyper-parameters, IG hypergradient (no separate tuning)
        rows = {m.name + " (SOG)": runner.seeds(m), ig.name: runner.seeds(ig)}
        out.append(runner.table("sog_vs_ig" + ("" if base == "mf" else f"_{base}") + suffix(grid), rows,
                                ["recall@10", "ndcg@10", "precision@10"], improvement=(ig.name, m.name + " (SOG)"),
                                title=f"{base} (IG: gamma={ig.gamma}, k={ig.cg_steps} CG steps; SOG: alpha={m.alpha})",
                                notes=[note(runner, grid, lrs, l2s) + "; IG re-uses the SOG-tuned configuration"]))
    return "\n".join(out)


def suffix(grid: str) -> str:
    return "_paper" if grid == "paper" else ""  # the stored tables keep their names


def table_neighbors(runner) -> str:
    """Per tau of the paper's grid: the share of users / items of seed 0's training matrix without any
    neighbour (no auxiliary term), and the mean neighbour-set size before the top-M cut. No training."""
    from jaxrec.neighbors import no_neighbor_share

    _args(runner, "neighbors")
    data = runner.data(runner.base, runner.seed_list[0])
    cols = {t: no_neighbor_share(m, TAUS, runner.base.neighbor_block)
            for t, m in (("user", data["train"]), ("item", data["train"].T.tocsr()))}
    lines = [f"### {runner.dataset}: entities without a neighbour (cos >= tau) in seed {runner.seed_list[0]}'s "
             f"training matrix (meta_frac={runner.base.meta_frac})", "",
             "| tau | users without | items without | mean users with cos >= tau | mean items with cos >= tau |",
             "|---|---|---|---|---|"]
    lines += [f"| {t} | {cols['user'][t]['no_neighbor']:.1%} | {cols['item'][t]['no_neighbor']:.1%} | "
              f"{cols['user'][t]['mean_size']:.1f} | {cols['item'][t]['mean_size']:.1f} |" for t in TAUS]
    text = "\n".join(lines) + "\n"
    print(text)
    if runner.save:
        runner.folder.mkdir(parents=True, exist_ok=True)
        (runner.folder / f"table_neighbors{'' if runner.base.meta_frac == 0 else '_paper'}.md").write_text(text)
    return text


def plot_lambda(runner, cfg) -> None:
    """Scatter of seed 0's learned sigmoid(lambda_u), sigmoid(lambda_i) against training degree."""
    import matplotlib.pyplot as plt
    import numpy as np

    from jaxrec.experiment import config_hash

    path = runner.folder / f"{cfg.name}_{config_hash(cfg)}_seed0.lam.npz"
    if not path.exists():
        return
    z = np.load(path)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.3))
    for a, who, c in ((ax[0], "user", "C0"), (ax[1], "item", "C1")):
        a.scatter(z[f"{who}_degree"], z[who], s=6, alpha=0.5, color=c)
        a.set(xscale="symlog", xlabel=f"{who} degree (training interactions)", ylabel=f"sigmoid(lambda_{who[0]})")
    fig.suptitle(f"{cfg.name} on {runner.dataset}: learned auxiliary weights (seed 0)", fontsize=10)
    fig.tight_layout()
    fig.savefig(runner.folder / f"lambda_vs_degree_{cfg.base}.png", dpi=120)
    plt.close(fig)


SPEC = cli.Spec(name="mal", config=MALConfig, method="jaxrec.methods.mal", description=__doc__.splitlines()[0],
                datasets=DATASETS, metric="recall@20", default_table="run", tuned=TUNED, quick=QUICK, seeds=1,
                tables={"run": table_run, "main": table_main, "ablation": table_ablation, "sog_vs_ig": table_sog_vs_ig,
                        "neighbors": table_neighbors},
                add_flags=add_flags)


def main(argv=None):
    return cli.main(SPEC, argv)


def build_parser():  # for tests/test_doc_commands.py
    return cli.build_parser(SPEC)


def __getattr__(name):  # experiments.mal.load_split: kept for tests/test_torch_crosscheck.py, without JAX at import
    if name == "load_split":
        from jaxrec.methods.mal import load_split
        return load_split
    raise AttributeError(name)


if __name__ == "__main__":
    main()
