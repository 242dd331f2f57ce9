"""MF trained with BPR vs. the most-popular baseline, full-ranking evaluation.

    python -m experiments.mf_bpr                                   # synthetic data, 3 seeds, offline, < 1 min
    python -m experiments.mf_bpr --dataset ml-100k --data-dir ../shared/data --seeds 3

Protocol: per-user random split 72/8/20 (test = 20% of each user's interactions, validation = 10% of
the remaining training interactions; ``jaxrec.data.ratio_split`` seeded by the run seed); every
interaction counts as implicit feedback (``--min-rating`` keeps only ratings >= a threshold). MF is
trained with BPR (one uniform negative per positive, resampled every epoch), Adam, an L2 penalty on the
batch embeddings, one ``lax.scan`` over the epoch's mini-batches per jitted call, early stopping on
validation NDCG@20 (validation ranks exclude training items; test ranks exclude training + validation
items). With several ``--lr`` / ``--l2`` values the grid is searched on seed 0's validation NDCG@20 and
the best setting is then run for every seed. Results go to ``<out>/mf_bpr/<dataset>/{mf,popular}_seed<s>.json``.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec import cli, losses, metrics, results
from jaxrec.methods import popular
from jaxrec.models import mf
from jaxrec.train import TrainState, fit

KS = (5, 10, 15, 20)
VAL_METRIC = "ndcg@20"
# lr / l2 chosen by the validation grid search recorded in results/mf_bpr/<dataset>/grid.json
# (lr in {1e-3, 3e-3, 1e-2} x l2 in {1e-4, 1e-3, 1e-2, 3e-2, 1e-1}, seed 0, validation NDCG@20).
TUNED = {"ml-100k": {"lr": 3e-3, "l2": 3e-2}}


@dataclasses.dataclass
class Config:
    dataset: str = "synthetic"
    dim: int = 64
    lr: float = 5e-3
    l2: float = 1e-3
    batch_size: int = 2048
    epochs: int = 300
    patience: int = 10
    init_scale: float = 0.1
    test_frac: float = 0.2
    val_frac: float = 0.1
    min_rating: float = 0.0
    small: bool = False  # --quick: a 200 x 300 synthetic set
    ks: tuple = KS


# ------------------------------------------------------------------------------------------------- data
def load_split(config: Config, data_dir, seed: int):
    """Load the dataset (implicit feedback) and split it with ``ratio_split`` seeded by ``seed``."""
    from jaxrec.data import load_dataset, ratio_split, to_csr

    if config.dataset == "synthetic":
        size = {} if not config.small else {"n_users": 200, "n_items": 300, "n_clusters": 5, "mean_per_user": 30}
        inter = load_dataset("synthetic", seed=0, **size)
    else:
        inter = load_dataset(config.dataset, data_dir)
    if config.min_rating > 0:
        if inter.rating is None:
            raise SystemExit(f"--min-rating needs explicit ratings; {config.dataset} has none")
        inter = inter.subset(inter.rating >= config.min_rating)
    split = ratio_split(inter, test_frac=config.test_frac, val_frac=config.val_frac, seed=seed)
    shape = (inter.n_users, inter.n_items)
    train = to_csr(split.train, *shape)
    val = to_csr(split.val, *shape)
    test = to_csr(split.test, *shape)
    return {"train": train, "val": val, "test": test, "train_val": ((train + val) > 0).astype(np.float32).tocsr(),
            "n_users": inter.n_users, "n_items": inter.n_items}


# ----------------------------------------------------------------------------------------------- MF-BPR
@functools.lru_cache(maxsize=16)
def make_train_epoch(lr: float, l2: float):
    """``(tx, train_epoch)``: Adam(lr) and the jitted ``train_epoch(state, u, i, j, w) -> (state, mean_bpr)``,
    a ``lax.scan`` of one optimiser step per row of the ``[n_batches, B]`` arrays (cached per ``(lr, l2)``
    so seeds share one compilation).

    Per batch: ``L = Σ_b w_b softplus(s_ubj - s_ubi) / Σ w + l2 * ½ Σ_b w_b (|P_u|² + |Q_i|² + |Q_j|²) / Σ w``.
    ``w`` is 0 on the padding that fills the last batch.
    """
    tx = optax.adam(lr)

    def loss_fn(params, u, i, j, w):
        pu, qi, qj = params["user"][u], params["item"][i], params["item"][j]
        pos = jnp.sum(pu * qi, -1)
        neg = jnp.sum(pu * qj, -1)
        wsum = jnp.maximum(w.sum(), 1.0)
        bpr = losses.bpr_loss(pos, neg, reduction="sum", weights=w) / wsum
        reg = 0.5 * jnp.sum(w * (jnp.sum(pu ** 2, -1) + jnp.sum(qi ** 2, -1) + jnp.sum(qj ** 2, -1))) / wsum
        return bpr + l2 * reg, bpr

    def step(state, batch):
        (loss, bpr), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params, *batch)
        return state.apply_gradients(g, tx), bpr

    @jax.jit
    def train_epoch(state, u, i, j, w):
        state, bpr = jax.lax.scan(step, state, (u, i, j, w))
        return state, jnp.mean(bpr)

    return tx, train_epoch


def epoch_batches(train_csr, seed: int, epoch: int, batch_size: int):
    """Shuffled ``(u, i, j, w)`` of shape ``[n_batches, batch_size]`` for one epoch, one uniform negative
    per training pair; randomness from ``numpy.random.default_rng((seed, epoch))`` (resume-safe)."""
    from jaxrec.data import sample_negatives

    rng = np.random.default_rng((seed, epoch))
    coo = train_csr.tocoo()
    perm = rng.permutation(coo.nnz)
    u, i = coo.row[perm].astype(np.int32), coo.col[perm].astype(np.int32)
    j = sample_negatives(rng, u, train_csr, 1)[:, 0]
    n_b = -(-len(u) // batch_size)
    pad = n_b * batch_size - len(u)
    w = np.concatenate([np.ones(len(u), np.float32), np.zeros(pad, np.float32)])
    u, i, j = (np.concatenate([a, np.zeros(pad, np.int32)]) for a in (u, i, j))
    return tuple(jnp.asarray(a.reshape(n_b, batch_size)) for a in (u, i, j, w))


def train_mf(config: Config, data: dict, seed: int, *, ckpt_dir=None, log=print, log_every: int = 10):
    """Train MF-BPR with early stopping on validation NDCG@20; returns ``(params, history)``."""
    tx, train_epoch = make_train_epoch(float(config.lr), float(config.l2))
    params = mf.init(jax.random.PRNGKey(seed), data["n_users"], data["n_items"], config.dim, config.init_scale)
    state = TrainState.create(params, tx, jax.random.PRNGKey(seed))
    bs = min(config.batch_size, data["train"].nnz)

    def epoch_fn(state, epoch):
        state, loss = train_epoch(state, *epoch_batches(data["train"], seed, epoch, bs))
        return state, {"loss": loss}

    def eval_fn(state):
        return metrics.evaluate_topk(lambda u: mf.score_all(state.params, u), None, data["train"],
                                     data["val"], ks=(20,))

    best, history = fit(state, epoch_fn, eval_fn, epochs=config.epochs, patience=config.patience,
                        metric=VAL_METRIC, ckpt_dir=ckpt_dir, log=log, log_every=log_every, desc=f"mf seed {seed}")
    return best.params, history


def eval_test(score_fn, data, ks=KS):
    """Test metrics: rank all items, excluding each user's training and validation items."""
    return metrics.evaluate_topk(score_fn, None, data["train_val"], data["test"], ks=ks)


def eval_val(score_fn, data, ks=KS):
    return metrics.evaluate_topk(score_fn, None, data["train"], data["val"], ks=ks)


def _config_hash(config: Config) -> str:
    return hashlib.sha1(json.dumps(dataclasses.asdict(config), sort_keys=True).encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------------------- main
def build_parser():
    """The command line of this experiment (``main`` parses with it; the tests check RESULTS.md's commands)."""
    p = cli.common_parser(__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, nargs="+", default=None, help="Adam learning rate(s); several = grid")
    p.add_argument("--l2", type=float, nargs="+", default=None, help="L2 weight(s); several = grid")
    p.add_argument("--dim", type=int, default=None, help="embedding size")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience (epochs)")
    p.add_argument("--min-rating", type=float, default=0.0, help="keep ratings >= this (0 = all)")
    p.add_argument("--resume", action="store_true",
                   help="checkpoint every epoch under <out>/mf_bpr/<dataset>/ckpt and resume from it")
    p.add_argument("--log-every", type=int, default=10)
    p.set_defaults(seeds=3)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.live_output()

    base = Config(dataset=args.dataset, min_rating=args.min_rating, **TUNED.get(args.dataset, {}))
    if args.quick:
        base = dataclasses.replace(base, epochs=5, dim=16, patience=3, small=True, batch_size=512)
    overrides = {k: v for k, v in (("dim", args.dim), ("batch_size", args.batch_size), ("epochs", args.epochs),
                                   ("patience", args.patience)) if v is not None}
    base = dataclasses.replace(base, **overrides)
    lrs = args.lr or [base.lr]
    l2s = args.l2 or [base.l2]
    seeds = cli.seed_list(args)
    data_dir = None
    if args.dataset != "synthetic":
        from jaxrec.data import resolve_data_dir
        data_dir = resolve_data_dir(args.data_dir)
    log = print if not args.quick else None
    out_root = Path(args.out)
    t_all = time.perf_counter()

    # ---- grid search on the first seed's validation split
    grid = []
    best_cfg = base if len(lrs) * len(l2s) == 1 else None
    if best_cfg is None:
        data0 = load_split(base, data_dir, seeds[0])
        print(f"grid search on seed {seeds[0]} validation {VAL_METRIC}: lr in {lrs}, l2 in {l2s}")
        for lr, l2 in itertools.product(lrs, l2s):
            cfg = dataclasses.replace(base, lr=lr, l2=l2)
            t0 = time.perf_counter()
            _, hist = train_mf(cfg, data0, seeds[0], log=None)
            grid.append({"lr": lr, "l2": l2, "val_" + VAL_METRIC: hist.best_metrics[VAL_METRIC],
                         "best_epoch": hist.best_epoch, "time_s": time.perf_counter() - t0})
            print(f"  lr={lr:g} l2={l2:g}: val {VAL_METRIC}={hist.best_metrics[VAL_METRIC]:.4f} "
                  f"(best epoch {hist.best_epoch}, {grid[-1]['time_s']:.1f}s)", flush=True)
        top = max(grid, key=lambda g: g["val_" + VAL_METRIC])
        best_cfg = dataclasses.replace(base, lr=top["lr"], l2=top["l2"])
        print(f"selected lr={best_cfg.lr:g} l2={best_cfg.l2:g}")
        if not args.no_save:
            results.save_result("mf_bpr", args.dataset, config=base, seed=seeds[0],
                                metrics={"selected_lr": best_cfg.lr, "selected_l2": best_cfg.l2},
                                wall_time=sum(g["time_s"] for g in grid), extra={"grid": grid},
                                root=out_root, name="grid")

    # ---- all seeds with the selected setting
    runs = {"MF-BPR": [], "MostPop": []}
    val_runs = {"MF-BPR": [], "MostPop": []}
    for seed in seeds:
        data = load_split(best_cfg, data_dir, seed)
        t0 = time.perf_counter()
        ckpt = (out_root / "mf_bpr" / args.dataset / "ckpt" / f"{_config_hash(best_cfg)}_seed{seed}"
                if args.resume else None)
        params, hist = train_mf(best_cfg, data, seed, ckpt_dir=ckpt, log=log, log_every=args.log_every)
        score = jax.jit(lambda u, params=params: mf.score_all(params, u))
        test_m = eval_test(score, data)
        val_m = eval_val(score, data)
        wall = time.perf_counter() - t0
        runs["MF-BPR"].append(test_m)
        val_runs["MF-BPR"].append(val_m)
        t1 = time.perf_counter()
        pop = popular.fit(data["train"])
        pop_test = eval_test(popular.score_fn(pop), data)
        pop_val = eval_val(popular.score_fn(pop), data)
        pop_wall = time.perf_counter() - t1
        runs["MostPop"].append(pop_test)
        val_runs["MostPop"].append(pop_val)
        print(f"seed {seed}: MF-BPR test recall@20={test_m['recall@20']:.4f} ndcg@20={test_m['ndcg@20']:.4f} "
              f"(best epoch {hist.best_epoch}, {len(hist)} epochs, {wall:.1f}s) | MostPop recall@20="
              f"{pop_test['recall@20']:.4f} ndcg@20={pop_test['ndcg@20']:.4f}", flush=True)
        if not args.no_save:
            split_info = {"n_users": data["n_users"], "n_items": data["n_items"], "n_train": int(data["train"].nnz),
                          "n_val": int(data["val"].nnz), "n_test": int(data["test"].nnz)}
            results.save_result("mf_bpr", args.dataset, config=best_cfg, seed=seed,
                                metrics={"test": test_m, "val": val_m}, wall_time=wall, root=out_root,
                                name=f"mf_seed{seed}",
                                extra={"model": "MF-BPR", "history": hist.summary(), "grid": grid,
                                       "val_curve": [h["val"][VAL_METRIC] for h in hist if h["val"]],
                                       "split": split_info})
            results.save_result("mf_bpr", args.dataset, config={"model": "MostPop", **dataclasses.asdict(best_cfg)},
                                seed=seed, metrics={"test": pop_test, "val": pop_val}, wall_time=pop_wall,
                                root=out_root, name=f"popular_seed{seed}",
                                extra={"model": "MostPop", "split": split_info})

    cols = [f"{m}@{k}" for m in ("recall", "ndcg", "precision") for k in KS]
    print(f"\n{args.dataset}: test metrics, mean ± std over seeds {seeds} "
          f"(MF-BPR lr={best_cfg.lr:g} l2={best_cfg.l2:g} dim={best_cfg.dim})")
    print(results.format_table(runs, columns=cols, improvement=("MF-BPR", "MostPop")))
    print(f"total wall time {time.perf_counter() - t_all:.1f}s")
    return runs


if __name__ == "__main__":
    main()
