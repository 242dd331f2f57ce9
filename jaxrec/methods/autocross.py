"""AutoCross (Luo et al., KDD 2019): beam search of feature crosses, each candidate scored by a field-wise
logistic regression trained with successive mini-batch gradient descent.

Algorithm (beam width 1; the paper's Algorithms 1 and 2)::

    preprocess: categorical fields -> ids; each numeric field -> equal-width bins at granularities
        {10, 100, 1000}; fit LR on the categorical fields, score every discretised version by field-wise LR,
        keep the best ``keep_frac`` of them. S <- the kept features; fit the full LR on S (warm start);
        b_sum <- its logits; auc_S <- its validation AUC
    repeat at most max_crosses times:
        C <- { cross(a, b) : a, b in S, a != b, cross(a, b) not in S }         # crosses of crosses: order 3, ...
        # successive mini-batch gradient descent over the candidates (Algorithm 2)
        split the training rows into N = sum_{k=0}^{R-1} 2^k blocks, R = ceil(log2 |C|)
        for k = 0 .. R-1:
            for each of the next 2^k blocks B, for every surviving candidate c at once (one jitted step):
                w_c <- w_c - search_lr * grad_{w_c} mean_{i in B} logloss(y_i, w_c[x_ci] + b_sum_i)
            score every surviving c by validation AUC of w_c[x_c] + b_sum; keep the better half
        c* <- the survivor; S' <- S + {c*}
        refit the full LR on S' (warm start from (w_S, w_c*)) for refit_epochs; its validation AUC auc'
        if auc' - auc_S < min_gain: stop (c* rejected)
        S, b_sum, auc_S <- S', logits of the refit LR, auc'

The field-wise LR ``P(y = 1 | x) = sigmoid(w_c^T x_c + b_sum)`` trains only ``w_c``: its gradient equals
the full LR's gradient for ``w_c`` with ``w_S`` frozen (tested in float64). All candidates' weights live in
one flat vector (one id space, each candidate its own range), so one step is a gather, a sum and one
scatter-add gradient for every candidate together. A cross is an exact index: the observed pairs of value
ids (over all rows, no labels) numbered in sorted order.

Models on a feature set (``model``): ``lr`` (LR; on the searched set: AC+LR), ``wd`` (Wide&Deep: the set as
the wide LR part, an MLP over embeddings of the preprocessed fields as the deep part; AC+W&D), ``deep`` (the
deep part alone) and ``deepfm`` (first order + FM + MLP over the preprocessed fields' embeddings). The
library's ``jaxrec.models.ctr`` models take behaviour histories (target id + history list), not a list of
field ids, so these small ones are written here.

Data: Adult (``adult.data`` split stratified into train / validation by the seed, ``adult.test`` as test)
or a synthetic table whose label depends on a planted 2nd-order cross (c0 x c1) and a planted 3rd-order one
(c2 x c3 x c4, with a 2nd-order marginal on c2 x c3). Metric: AUC (:func:`jaxrec.metrics.auc`).
"""
from __future__ import annotations

import functools
import math
import time
from functools import partial
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec import metrics
from jaxrec import method as protocol
from jaxrec.configs.autocross import MODELS, AutoCrossConfig
from jaxrec.data.loaders import load_adult, load_adult_test
from jaxrec.method import Method
from jaxrec.train import TrainState

__all__ = ["AutoCrossConfig", "DATA_FIELDS", "Feature", "load", "method", "search", "cross",
           "discretize", "successive_halving", "halving_blocks", "fieldwise_loss", "fieldwise_step",
           "fieldwise_auc", "lr_logits", "model_logits", "model_method", "pack", "synthetic_table"]

DATA_FIELDS = ("crosses", "batch_size", "bins", "keep_frac", "max_crosses", "min_gain", "search_lr", "refit_lr",
               "refit_epochs", "val_frac", "n_rows")


class Feature(NamedTuple):
    """One categorical feature over all rows: ``ids`` int32[n] in ``0..card-1``; ``fields`` = the
    preprocessed features it crosses (its order is ``len(fields)``); ``sources`` = their raw columns."""

    name: str
    ids: np.ndarray
    card: int
    fields: tuple
    sources: tuple


# ------------------------------------------------------------------------------------------ features
def cross(a: Feature, b: Feature) -> Feature:
    """The categorical cross product of ``a`` and ``b``: value ``(a_i, b_i)`` -> an exact index (the observed
    pairs numbered in sorted order of ``a_i * card_b + b_i``)."""
    code = a.ids.astype(np.int64) * b.card + b.ids.astype(np.int64)
    _, ids = np.unique(code, return_inverse=True)
    fields = tuple(sorted(set(a.fields) | set(b.fields)))
    return Feature(" x ".join(fields), ids.astype(np.int32).ravel(), int(ids.max()) + 1, fields,
                   tuple(sorted(set(a.sources) | set(b.sources))))


def discretize(x: np.ndarray, train: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins of ``x`` over the training rows' range ``[min, max]`` (values outside are clipped):
    int32 ids in ``0..n_bins-1``."""
    lo, hi = float(np.min(x[train])), float(np.max(x[train]))
    scale = n_bins / (hi - lo) if hi > lo else 0.0
    return np.clip(np.floor((x - lo) * scale), 0, n_bins - 1).astype(np.int32)


def pack(features) -> tuple[np.ndarray, int]:
    """Ids of every row in one id space: ``X`` int32[n, F] (feature f's ids shifted by the cards before it)
    and the number of ids."""
    offsets = np.cumsum([0] + [f.card for f in features])
    if not features:
        return np.zeros((0, 0), np.int32), 0
    return np.stack([f.ids + o for f, o in zip(features, offsets[:-1])], axis=1).astype(np.int32), int(offsets[-1])


# ------------------------------------------------------------------------------------------ data
def synthetic_table(n_rows: int, seed: int = 0):
    """A table with categorical columns c0..c5, numeric x0 (a main effect) and x1 (noise); the label's logit
    has small main effects, a planted cross ``1.5 T[c0, c1]`` and ``1.5 U[c2, c3] g[c4]`` (T, U = +-1,
    g = (1.5, 1.5, -0.5): a 3rd-order cross with a 2nd-order marginal on c2 x c3)."""
    rng = np.random.default_rng(seed)
    cards = (6, 5, 4, 4, 3, 8)
    x_cat = np.stack([rng.integers(0, c, n_rows) for c in cards], axis=1).astype(np.int32)
    x_num = rng.uniform(0, 1, (n_rows, 2)).astype(np.float32)
    T, U = rng.choice([-1.0, 1.0], (6, 5)), rng.choice([-1.0, 1.0], (4, 4))
    g = np.array([1.5, 1.5, -0.5])
    main = sum(0.3 * rng.normal(size=c)[x_cat[:, j]] for j, c in enumerate(cards))
    logit = (-0.3 + main + 1.5 * (x_num[:, 0] - 0.5) + 1.5 * T[x_cat[:, 0], x_cat[:, 1]]
             + 1.5 * U[x_cat[:, 2], x_cat[:, 3]] * g[x_cat[:, 4]])
    y = (rng.uniform(size=n_rows) < 1 / (1 + np.exp(-logit))).astype(np.int32)
    return x_num, x_cat, y, ["x0", "x1"], [f"c{j}" for j in range(len(cards))]


def _stratified(y: np.ndarray, frac: float, rng) -> tuple[np.ndarray, np.ndarray]:
    val = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: int(round(frac * np.sum(y == c)))]
                          for c in np.unique(y)])
    mask = np.zeros(len(y), bool)
    mask[val] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def load(config: AutoCrossConfig, dataset: str, data_dir, seed: int) -> dict:
    """Split (stratified train / validation by ``seed``; test = adult.test, or the last quarter of the
    synthetic rows), preprocess (see the module docstring) and, with ``config.crosses``, run :func:`search`.
    Returns ``{"base", "features", "y", "parts", "search"}``."""
    if dataset == "synthetic":
        x_num, x_cat, y, num_names, cat_names = synthetic_table(config.n_rows, seed=0)
        n_test = len(y) // 4
        n_tv = len(y) - n_test
        test = np.arange(n_tv, len(y))
    elif dataset == "adult":
        tr = load_adult(data_dir)
        te = load_adult_test(data_dir, tr.cat_vocab)
        x_num, x_cat = np.concatenate([tr.x_num, te.x_num]), np.concatenate([tr.x_cat, te.x_cat])
        y, num_names, cat_names = np.concatenate([tr.y, te.y]), tr.num_names, tr.cat_names
        n_tv = len(tr)
        test = np.arange(n_tv, len(y))
    else:
        raise ValueError(f"unknown dataset {dataset!r} for autocross; use synthetic or adult")
    rng = np.random.default_rng((seed, 0))
    tr_rel, va_rel = _stratified(y[:n_tv], config.val_frac, rng)
    parts = {"train": rng.permutation(tr_rel), "val": va_rel, "test": test}
    if len(parts["val"]) == 0 or len(np.unique(y[parts["val"]])) < 2:
        raise ValueError("the validation split needs both labels; raise --val-frac or --n-rows")
    cats = [Feature(n, x_cat[:, j].astype(np.int32), int(x_cat[:, j].max()) + 1, (n,), (n,))
            for j, n in enumerate(cat_names)]
    nums = [Feature(f"{n}@{b}", discretize(x_num[:, j], parts["train"], b), b, (f"{n}@{b}",), (n,))
            for j, n in enumerate(num_names) for b in config.bins]
    data = {"y": y.astype(np.int32), "parts": parts}
    t0 = time.perf_counter()
    print(f"{dataset} (seed {seed}): {len(parts['train'])} train / {len(parts['val'])} validation / {len(test)} "
          f"test rows; multi-granularity discretisation of {len(nums)} numeric versions", flush=True)
    base, state, scores = preprocess(config, data, cats, nums, seed)
    data.update(base=base, features=list(base), search={"preprocess_s": time.perf_counter() - t0,
                                                          "numeric_scores": scores})
    if config.crosses:
        print(f"preprocessed {dataset} (seed {seed}) in {time.perf_counter() - t0:.1f}s: "
              f"{', '.join(f.name for f in base)}; searching crosses", flush=True)
        data["search"].update(search(config, data, base, state, seed))
        data["features"] = data["search"].pop("features")
    return data


# ------------------------------------------------------------------------------------------ models
class _MLP(nn.Module):
    hidden: tuple

    @nn.compact
    def __call__(self, x):
        for h in self.hidden:
            x = nn.relu(nn.Dense(h)(x))
        return nn.Dense(1)(x)[..., 0]


def lr_logits(params, x):
    """``b + sum_f w[x_f]``: the LR logit of rows of ids ``x`` int[..., F] (an id -1 is padding: no term)."""
    return params["b"] + jnp.sum(jnp.where(x >= 0, params["w"][x], 0.0), -1)


def model_logits(kind: str, params, xw, xd, hidden: tuple = (64, 32)):
    """Logits of model ``kind`` (see the module docstring): ``xw`` the wide / LR ids, ``xd`` the ids of the
    preprocessed fields embedded by the deep models."""
    if kind == "lr":
        return lr_logits(params["lin"], xw)
    e = params["emb"][xd]  # [B, F, d]
    deep = _MLP(hidden).apply({"params": params["mlp"]}, e.reshape(e.shape[:-2] + (-1,)))
    if kind == "wd":
        return lr_logits(params["lin"], xw) + deep
    if kind == "deep":
        return deep + params["b"]
    fm = 0.5 * jnp.sum(jnp.sum(e, -2) ** 2 - jnp.sum(e ** 2, -2), -1)
    return lr_logits(params["lin"], xd) + fm + deep


def init_params(kind: str, key, n_wide: int, n_deep: int, f_deep: int, emb_dim: int, hidden: tuple) -> dict:
    """Initial parameters: linear weights 0, embeddings N(0, 0.01), the MLP flax's default."""
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; choose one of {MODELS}")
    k_emb, k_mlp = jax.random.split(key)
    if kind == "lr":
        return {"lin": {"w": jnp.zeros(n_wide), "b": jnp.zeros(())}}
    params = {"emb": 0.01 * jax.random.normal(k_emb, (n_deep, emb_dim)),
              "mlp": _MLP(hidden).init(k_mlp, jnp.zeros((1, f_deep * emb_dim)))["params"]}
    if kind == "wd":
        params["lin"] = {"w": jnp.zeros(n_wide), "b": jnp.zeros(())}
    elif kind == "deepfm":
        params["lin"] = {"w": jnp.zeros(n_deep), "b": jnp.zeros(())}
    else:
        params["b"] = jnp.zeros(())
    return params


@functools.lru_cache(maxsize=None)
def _step_fn(kind: str, hidden: tuple, lr: float, l2: float):
    """``(tx, step)`` of model ``kind``: Adam(lr) with ``2 l2 theta`` added to the gradient, weighted mean
    log loss of a batch ``{"xw", "xd", "y", "w"}``. Cached, so equal settings share one function."""
    tx = optax.chain(optax.add_decayed_weights(2 * l2), optax.adam(lr))

    def loss(params, b):
        z = model_logits(kind, params, b["xw"], b["xd"], hidden)
        return jnp.sum(optax.sigmoid_binary_cross_entropy(z, b["y"]) * b["w"]) / jnp.maximum(b["w"].sum(), 1.0)

    def step(state, b, key):
        value, g = jax.value_and_grad(loss)(state.params, b)
        return state.apply_gradients(g, tx), {"loss": value}

    return tx, step


@functools.lru_cache(maxsize=None)
def _epoch_fn(kind: str, hidden: tuple, lr: float, l2: float):
    """One jitted epoch (:func:`jaxrec.method.epoch_function`) per setting, re-used by every refit."""
    return protocol.epoch_function(_step_fn(kind, hidden, lr, l2)[1])


_auc = jax.jit(metrics.auc)


@partial(jax.jit, static_argnames=("kind", "hidden"))
def _predict(params, xw, xd, kind, hidden):
    return model_logits(kind, params, xw, xd, hidden)


def _eval(y, z) -> dict:
    return {"auc": float(_auc(y, z)),
            "logloss": float(jnp.mean(optax.sigmoid_binary_cross_entropy(z, jnp.asarray(y, z.dtype))))}


def model_method(kind: str, wide, deep, y, parts, *, lr: float, l2: float, batch_size: int, emb_dim: int = 8,
                 hidden: tuple = (64, 32), init=None, summary=None) -> Method:
    """Model ``kind`` on ids ``wide`` = ``(X int32[n, F], n_ids)`` and ``deep`` (same form) as a
    :class:`jaxrec.method.Method`: Adam(lr) with L2 ``2 l2 theta`` added to the gradient, mean log loss
    over shuffled training batches; ``init`` = warm-start parameters (else :func:`init_params`)."""
    (xw, n_wide), (xd, n_deep) = wide, deep
    tx, step = _step_fn(kind, tuple(hidden), lr, l2)
    train_rows = parts["train"]
    bs = min(batch_size, len(train_rows))

    def init_fn(key):
        params = init if init is not None else init_params(kind, key, n_wide, n_deep, xd.shape[1], emb_dim, hidden)
        return TrainState.create(params, tx, key)

    def batches(seed, epoch):
        rows = np.random.default_rng((seed, 1, epoch)).permutation(train_rows)
        n_b = -(-len(rows) // bs)
        pad = n_b * bs - len(rows)
        w = np.concatenate([np.ones(len(rows), np.float32), np.zeros(pad, np.float32)]).reshape(n_b, bs)
        rows = np.concatenate([rows, np.zeros(pad, rows.dtype)]).reshape(n_b, bs)
        return {"xw": jnp.asarray(xw[rows]), "xd": jnp.asarray(xd[rows]), "y": jnp.asarray(y[rows], jnp.float32),
                "w": jnp.asarray(w)}

    def evaluate(state, part):
        rows = parts[part]
        return _eval(y[rows], _predict(state.params, jnp.asarray(xw[rows]), jnp.asarray(xd[rows]), kind, hidden))

    return Method(init=init_fn, batches=batches, step=step, evaluate=evaluate, summary=summary)


def _fit_lr(features, data, init, epochs, lr, batch_size, seed, width=None):
    """Full LR on ``features`` (warm start ``init``) through :func:`jaxrec.method.train`. The ids are padded
    (id -1) to ``width`` features and the weights to a power of two, so that refits of growing sets reuse
    one compiled epoch. Returns ``(RunResult, the LR parameters on the unpadded ids)``."""
    x, n_ids = pack(features)
    xp = np.full((len(x), max(width or 0, x.shape[1])), -1, np.int32)
    xp[:, : x.shape[1]] = x
    n_pad = _pow2(n_ids + 1)
    init = {"w": jnp.zeros(n_ids), "b": jnp.zeros(())} if init is None else init
    init = {"lin": {"w": jnp.zeros(n_pad).at[:n_ids].set(init["w"]), "b": init["b"]}}
    m = model_method("lr", (xp, n_pad), (xp[:, :1], 1), data["y"], data["parts"], lr=lr, l2=0.0,
                     batch_size=batch_size, init=init)
    res = protocol.train(m, seed=seed, epochs=epochs, metric="auc", log=None, epoch_fn=_epoch_fn("lr", (), lr, 0.0))
    lin = res.state.params["lin"]
    return res, {"w": lin["w"][:n_ids], "b": lin["b"]}


def _warm(lin, extra: np.ndarray) -> dict:
    return {"w": jnp.concatenate([lin["w"], jnp.asarray(extra, lin["w"].dtype)]), "b": lin["b"]}


# ------------------------------------------------------------------------------------------ field-wise LR
def fieldwise_loss(w, ids, bsum, y, mask):
    """``sum_c mean_i mask_i logloss(y_i, w[ids[c, i]] + bsum_i)``: every candidate's field-wise LR on one
    block (candidate c's weights are its own range of the flat ``w``, so its gradient is its own loss's)."""
    z = w[ids] + bsum[None]
    return jnp.sum(optax.sigmoid_binary_cross_entropy(z, y[None].astype(z.dtype)) * mask[None]) / jnp.maximum(
        mask.sum(), 1.0)


@partial(jax.jit, donate_argnums=0)
def fieldwise_step(w, ids_tr, bsum_tr, y_tr, rows, mask, alive_w, lr):
    """One gradient-descent step of every candidate's field-wise LR on one block (``rows`` int32[B], the
    block's row positions in the training part; ``mask`` 0 on padding): the gradient of
    :func:`fieldwise_loss`, ``dL/dz_ci = (sigmoid(z_ci) - y_i) mask_i / |B|``, scatter-added (a segment
    sum) at each candidate's ids; weights where ``alive_w`` is 0 stay. ``w`` is updated in place."""
    ids = ids_tr[:, rows]
    z = w[ids] + bsum_tr[rows][None]
    dz = (jax.nn.sigmoid(z) - y_tr[rows][None].astype(z.dtype)) * mask[None] / jnp.maximum(mask.sum(), 1.0)
    return w.at[ids].add(-lr * alive_w[ids] * dz)


@jax.jit
def fieldwise_auc(w, ids_val, bsum_val, y_val):
    """Validation AUC of every candidate's field-wise LR: float[C]."""
    return jax.vmap(lambda z: metrics.auc(y_val, z))(w[ids_val] + bsum_val[None])


def halving_blocks(n_candidates: int) -> list[list[int]]:
    """Blocks consumed by each round of successive halving: round k takes the next ``2^k`` blocks;
    ``R = ceil(log2 n)`` rounds, ``N = 2^R - 1`` blocks in all."""
    rounds = math.ceil(math.log2(n_candidates)) if n_candidates > 1 else 0
    return [list(range(2 ** k - 1, 2 ** (k + 1) - 1)) for k in range(rounds)]


def successive_halving(n_candidates: int, train, score) -> tuple[int, list[dict]]:
    """Algorithm 2's bookkeeping: in round k, ``train(alive, blocks)`` warm-starts the surviving candidates
    on the round's new blocks, ``score(alive)`` rates them (validation AUC), the better half (``ceil``)
    survives; stops at one. Returns ``(winner, one record per round)``."""
    if n_candidates < 1:
        raise ValueError("successive halving needs at least one candidate")
    alive = np.arange(n_candidates)
    log = []
    for k, blocks in enumerate(halving_blocks(n_candidates)):
        train(alive, blocks)
        s = np.asarray(score(alive), np.float64)
        keep = -(-len(alive) // 2)
        best = np.argsort(-s, kind="stable")[:keep]
        log.append({"round": k, "alive": int(len(alive)), "blocks": [blocks[0], blocks[-1]], "kept": keep,
                    "best_val_auc": float(s[best[0]])})
        alive = alive[np.sort(best)]
    return int(alive[0]), log


def _pow2(n: int) -> int:
    return 1 << max(int(n - 1).bit_length(), 0)


def _fieldwise(cands, data, bsum, config, seed, step, full_pass=False):
    """Train / score the field-wise LRs of ``cands`` (successive halving, or with ``full_pass`` every
    candidate on all blocks then scored once). Returns ``(winner or scores, round log, winner weights)``."""
    parts, y = data["parts"], data["y"]
    tr, va = parts["train"], parts["val"]
    offsets = np.cumsum([0] + [c.card for c in cands])
    n_w = _pow2(int(offsets[-1]) + 1)
    dummy = n_w - 1  # the padding candidates' one weight, never alive
    n_c = _pow2(len(cands))
    ids = np.full((n_c, len(y)), dummy, np.int32)
    for j, c in enumerate(cands):
        ids[j] = c.ids + offsets[j]
    ids_tr, ids_va = jnp.asarray(ids[:, tr]), jnp.asarray(ids[:, va])
    b_tr, b_va = jnp.asarray(bsum[tr], jnp.float32), jnp.asarray(bsum[va], jnp.float32)
    y_tr, y_va = jnp.asarray(y[tr]), jnp.asarray(y[va])
    plan = halving_blocks(len(cands))
    n_blocks = max(2 ** len(plan) - 1, 1)
    split = np.array_split(np.random.default_rng((seed, 2, step)).permutation(len(tr)), n_blocks)
    width = max(len(b) for b in split)
    blocks = np.zeros((n_blocks, width), np.int32)
    masks = np.zeros((n_blocks, width), np.float32)
    for i, b in enumerate(split):
        blocks[i, : len(b)], masks[i, : len(b)] = b, 1.0
    blocks_d, masks_d = list(jnp.asarray(blocks)), list(jnp.asarray(masks))
    state = {"w": jnp.zeros(n_w, jnp.float32)}

    def alive_mask(alive):
        m = np.zeros(n_w, np.float32)
        for j in alive:
            m[offsets[j]: offsets[j + 1]] = 1.0
        return jnp.asarray(m)

    def train(alive, blks):
        alive_w = alive_mask(alive)
        for i in blks:
            state["w"] = fieldwise_step(state["w"], ids_tr, b_tr, y_tr, blocks_d[i], masks_d[i], alive_w,
                                        config.search_lr)

    def score(alive):
        return np.asarray(fieldwise_auc(state["w"], ids_va, b_va, y_va))[np.asarray(alive)]

    if full_pass:
        everyone = np.arange(len(cands))
        train(everyone, list(range(n_blocks)))
        return score(everyone), [], np.asarray(state["w"]), offsets
    winner, log = successive_halving(len(cands), train, score)
    w = np.asarray(state["w"])[offsets[winner]: offsets[winner + 1]]
    return winner, log, w, offsets


def _logits_all(lin, features) -> np.ndarray:
    return np.asarray(lr_logits(lin, jnp.asarray(pack(features)[0])))


def preprocess(config: AutoCrossConfig, data: dict, cats, nums, seed: int):
    """Multi-granularity discretisation: the LR of the categorical fields gives ``b_sum``; every discretised
    numeric version is scored by field-wise LR on all training blocks; the best ``keep_frac`` (at least one)
    are kept. Returns ``(S, full LR parameters on S, {version: validation AUC})``."""
    n_all = len(data["y"])
    keep = max(1, int(math.ceil(config.keep_frac * len(nums)))) if nums else 0
    width = len(cats) + keep + config.max_crosses  # as in search: one compiled refit epoch for all
    lin = _fit_lr(cats, data, None, config.refit_epochs, config.refit_lr, config.batch_size, seed, width)[1] \
        if cats else {"w": jnp.zeros(0), "b": jnp.zeros(())}
    if not nums:
        return cats, lin, {}
    bsum = _logits_all(lin, cats) if cats else np.zeros(n_all, np.float32)
    print(f"LR on the {len(cats)} categorical fields fitted; scoring the discretised versions", flush=True)
    scores, _, w, offsets = _fieldwise(nums, data, bsum, config, seed, step=0, full_pass=True)
    kept = sorted(np.argsort(-scores, kind="stable")[:keep])
    base = list(cats) + [nums[j] for j in kept]
    init = _warm(lin, np.concatenate([w[offsets[j]: offsets[j + 1]] for j in kept]))
    lin = _fit_lr(base, data, init, config.refit_epochs, config.refit_lr, config.batch_size, seed, width)[1]
    return base, lin, {n.name: float(s) for n, s in zip(nums, scores)}


def search(config: AutoCrossConfig, data: dict, base, lin, seed: int, log=print) -> dict:
    """Algorithm 1 (beam width 1) from the preprocessed set ``base`` and its LR ``lin`` (module docstring).
    Returns ``{"features", "trace", "search_s"}``; ``trace[0]`` is the start, each later entry one accepted
    (or, last, the rejected) cross with its validation AUC after the refit and its halving rounds."""
    t0 = time.perf_counter()
    va = data["parts"]["val"]
    S = list(base)
    width = len(base) + config.max_crosses
    z = _logits_all(lin, S)
    cur = float(metrics.auc(data["y"][va], z[va]))
    trace = [{"step": 0, "cross": None, "order": None, "val_auc": cur, "gain": None, "candidates": 0,
              "accepted": True, "time_s": time.perf_counter() - t0}]
    made: dict = {}
    for step in range(1, config.max_crosses + 1):
        have = {frozenset(f.fields) for f in S}
        keys, cands = [], []
        for i in range(len(S)):
            for j in range(i + 1, len(S)):
                a, b = S[i], S[j]
                key = frozenset(a.fields) | frozenset(b.fields)
                if key in have or key in keys or (len(a.fields) == len(b.fields) == 1 and a.sources == b.sources):
                    continue  # already in S, a duplicate, or two granularities of one numeric field
                if key not in made:
                    made[key] = cross(a, b)
                keys.append(key)
                cands.append(made[key])
        if not cands:
            break
        winner, rounds, w_c, _ = _fieldwise(cands, data, z, config, seed, step)
        c = cands[winner]
        res, new_lin = _fit_lr(S + [c], data, _warm(lin, w_c), config.refit_epochs, config.refit_lr,
                               config.batch_size, seed, width)
        new = res.val["auc"]
        gain = new - cur
        ok = gain >= config.min_gain
        trace.append({"step": step, "cross": c.name, "order": len(c.fields), "val_auc": new, "gain": gain,
                      "candidates": len(cands), "accepted": ok, "rounds": rounds,
                      "time_s": time.perf_counter() - t0})
        if log is not None:
            log(f"search step {step}: {len(cands)} candidates -> {c.name} (order {len(c.fields)}), val AUC "
                f"{new:.4f} (gain {gain:+.4f}){'' if ok else ', rejected: search stops'} "
                f"[{time.perf_counter() - t0:.1f}s]")
        if not ok:
            break
        S.append(c)
        lin = new_lin
        z, cur = _logits_all(lin, S), new
    return {"features": S, "trace": trace, "search_s": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------ the method
def _latency_ms(params, xw, xd, kind, hidden, repeats: int = 5) -> float:
    """Inference time per example (ms) of the jitted model on the given rows (best of ``repeats``)."""
    xw, xd = jnp.asarray(xw), jnp.asarray(xd)
    jax.block_until_ready(_predict(params, xw, xd, kind, hidden))
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(_predict(params, xw, xd, kind, hidden))
        best = min(best, time.perf_counter() - t)
    return 1e3 * best / len(xw)


def method(config: AutoCrossConfig, data: dict) -> Method:
    """The final model ``config.model`` on the searched set (``config.crosses``) or the preprocessed fields."""
    feats = data["features"] if config.crosses else data["base"]
    wide, deep = pack(feats), pack(data["base"])
    hidden = tuple(config.hidden)
    test = data["parts"]["test"]

    def summary(state):
        s = {k: v for k, v in data["search"].items()}
        s["features"] = [f.name for f in feats]
        s["crosses"] = [{"name": f.name, "order": len(f.fields)} for f in feats if len(f.fields) > 1]
        s["latency_ms"] = _latency_ms(state.params, wide[0][test], deep[0][test], config.model, hidden)
        return s

    return model_method(config.model, wide, deep, data["y"], data["parts"], lr=config.lr, l2=config.l2,
                        batch_size=config.batch_size, emb_dim=config.emb_dim, hidden=hidden, summary=summary)
