"""MF trained with BPR (Rendle et al., UAI 2009), full-ranking evaluation, and the most-popular baseline.

Algorithm (one epoch)::

    for each shuffled batch of training pairs (u, i), with one uniform negative j per pair:
        L = mean_b softplus(s_uj - s_ui) + l2 * 1/2 mean_b (|P_u|^2 + |Q_i|^2 + |Q_j|^2),   s_ui = P_u . Q_i
        (P, Q) <- Adam(lr) step on grad L

Data: a per-user random split (``ratio_split``: test = ``test_frac`` of each user's interactions,
validation = ``val_frac`` of the rest), every interaction implicit feedback (``min_rating`` keeps ratings
>= a threshold). Validation ranks exclude training items; test ranks exclude training + validation items.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import optax

from jaxrec import losses, metrics
from jaxrec.configs.mf_bpr import MFBPRConfig
from jaxrec.data import load_dataset, ratio_split, sample_negatives, to_csr
from jaxrec.method import Method
from jaxrec.methods import popular
from jaxrec.models import mf
from jaxrec.train import TrainState

__all__ = ["MFBPRConfig", "DATA_FIELDS", "load", "method", "epoch_batches", "most_popular"]

DATA_FIELDS = ("min_rating", "small", "test_frac", "val_frac")
SMALL = {"n_users": 200, "n_items": 300, "n_clusters": 5, "mean_per_user": 30}


def load(config: MFBPRConfig, dataset: str, data_dir, seed: int) -> dict:
    """The ``ratio_split`` of ``dataset`` seeded by ``seed``, as CSR matrices ``train``, ``val``, ``test``,
    ``train_val`` plus ``n_users`` / ``n_items``."""
    if dataset == "synthetic":
        inter = load_dataset("synthetic", seed=0, **(SMALL if config.small else {}))
    else:
        inter = load_dataset(dataset, data_dir)
    if config.min_rating > 0:
        if getattr(inter, "rating", None) is None:
            raise ValueError(f"--min-rating needs explicit ratings; {dataset} has none")
        inter = inter.subset(inter.rating >= config.min_rating)
    split = ratio_split(inter, test_frac=config.test_frac, val_frac=config.val_frac, seed=seed)
    shape = (inter.n_users, inter.n_items)
    train, val, test = (to_csr(part, *shape) for part in split)
    return {"train": train, "val": val, "test": test, "train_val": ((train + val) > 0).astype(np.float32).tocsr(),
            "n_users": inter.n_users, "n_items": inter.n_items}


def epoch_batches(train_csr, seed: int, epoch: int, batch_size: int):
    """Shuffled ``(u, i, j, w)`` of shape ``[n_batches, batch_size]`` for one epoch, one uniform negative
    per training pair, ``w`` 0 on the padding of the last batch; randomness from
    ``numpy.random.default_rng((seed, epoch))`` (resume-safe)."""
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


def bpr_objective(params, batch, l2: float):
    """``(L, mean BPR)`` of the algorithm box on one batch ``(u, i, j, w)``."""
    u, i, j, w = batch
    pu, qi, qj = params["user"][u], params["item"][i], params["item"][j]
    wsum = jnp.maximum(w.sum(), 1.0)
    bpr = losses.bpr_loss(jnp.sum(pu * qi, -1), jnp.sum(pu * qj, -1), reduction="sum", weights=w) / wsum
    reg = 0.5 * jnp.sum(w * (jnp.sum(pu ** 2, -1) + jnp.sum(qi ** 2, -1) + jnp.sum(qj ** 2, -1))) / wsum
    return bpr + l2 * reg, bpr


def method(config: MFBPRConfig, data: dict) -> Method:
    """MF-BPR on ``data`` (from :func:`load`) as a :class:`jaxrec.method.Method`."""
    tx = optax.adam(config.lr)
    batch_size = min(config.batch_size, data["train"].nnz)

    def init(key):
        params = mf.init(key, data["n_users"], data["n_items"], config.dim, config.init_scale)
        return TrainState.create(params, tx, key)

    def step(state, batch, key):
        (_, bpr), g = jax.value_and_grad(bpr_objective, has_aux=True)(state.params, batch, config.l2)
        return state.apply_gradients(g, tx), {"loss": bpr}

    def evaluate(state, part):
        exclude, target = (data["train"], data["val"]) if part == "val" else (data["train_val"], data["test"])
        return metrics.evaluate_topk(lambda u: mf.score_all(state.params, u), None, exclude, target, ks=config.ks)

    return Method(init=init, batches=lambda seed, epoch: epoch_batches(data["train"], seed, epoch, batch_size),
                  step=step, evaluate=evaluate)


def most_popular(data: dict, ks=(5, 10, 15, 20)) -> dict:
    """The most-popular baseline's ``{"val", "test"}`` metrics on ``data`` (no training, no hyperparameters)."""
    score = popular.score_fn(popular.fit(data["train"]))
    return {"val": metrics.evaluate_topk(score, None, data["train"], data["val"], ks=ks),
            "test": metrics.evaluate_topk(score, None, data["train_val"], data["test"], ks=ks)}
