"""Meta-Wrapper (differentiable wrapping operator for user-interest selection in CTR prediction).

Notation. ``f_theta`` is the CTR predictor (embeddings + dense layers, :mod:`jaxrec.models.ctr`),
``g_phi`` the interest selector (DIN's attention unit); ``phi`` are only the selector's weights
(:func:`jaxrec.models.ctr.split_params`). With a batch ``D`` of (history, target, label) rows,

    L(theta, phi; D) = mean_{(u, v, y) in D} BCE(y, f_theta(sum_t g_phi(e_t, e_v) e_t, e_v)).

Every epoch the training set is split at random 80/20 into ``D_in`` / ``D_out``; every step draws one batch
from each. The wrapper is ``min_phi L_out(theta_bar(phi), phi)`` with ``theta_bar = U_phi(theta, D_in)`` =
``N`` gradient steps of rate ``beta`` on ``L_in`` from the current ``theta``. The trained objectives (the
paper's ablation components C1-C4):

* ``M1``: ``L_in(theta, phi)`` -- DIN (attentive selector C1) on ``D_in`` only.
* ``M2``: ``L_in(theta, phi) + mu L_out(theta, phi)`` -- adds the out-of-bag term (C2), no inner steps.
* ``M3``: first-order wrapper (C3): alternate ``theta <- opt(grad_theta L_in(theta, phi))`` then
  ``phi <- opt(grad_phi L_out(theta, phi))`` at the updated, fixed ``theta`` (N = 1).
* ``M4`` (Meta-Wrapper, C4): ``L_in(theta, phi) + mu L_out(U_phi(theta, D_in), phi)``, gradient in both
  ``theta`` and ``phi`` through the ``N`` unrolled steps (the exact second-order term).

``variant="plain"`` trains any baseline (Base, Wide&Deep, PNN, DeepFM, DIN) on the full training set with
``L + l2 ||params||^2`` (no D_in/D_out split).

The unrolled map ``theta_bar = U_phi^N(theta, D_in)`` is :func:`jaxrec.bilevel.unrolled.unroll` (the map
behind :func:`jaxrec.bilevel.unrolled.unrolled`), so no private inner loop exists here; M4's gradient in
``theta`` and ``phi`` is reverse mode over the joint objective, and ``L_in(theta, phi)`` comes from the first
inner step's own forward pass (``return_start_loss=True``) instead of a second evaluation.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.bilevel.unrolled import unroll
from jaxrec.losses import bce_with_logits
from jaxrec.models.ctr import (
    MODELS,
    CTRModelConfig,
    cast_params,
    ctr_logits,
    init_params,
    merge_params,
    split_params,
)

__all__ = [
    "MWConfig",
    "VARIANTS",
    "TrainState",
    "model_config",
    "ctr_loss",
    "objective",
    "objective_grads",
    "make_step",
    "build_step",
    "init_state",
    "predict",
    "make_predict",
    "evaluate",
    "train",
]

VARIANTS = ("plain", "M1", "M2", "M3", "M4")


@dataclasses.dataclass
class MWConfig:
    """Hyper-parameters. ``variant`` one of :data:`VARIANTS`; ``model`` one of
    :data:`jaxrec.models.ctr.MODELS` (``M1``-``M4`` need ``"din"``). ``mu`` weighs the outer term,
    ``beta`` is the inner rate and ``n_inner`` the number N of unrolled steps. ``l2`` is added to every
    trained objective as ``l2 * ||params||^2``. Training runs ``epochs`` epochs and keeps the epoch with
    the best validation AUC (``patience`` epochs without improvement stop early; 0 = never)."""

    model: str = "din"
    variant: str = "M4"
    emb_dim: int = 16
    hidden: tuple[int, ...] = (80, 40)
    att_hidden: tuple[int, ...] = (80, 40)
    dropout: float = 0.0
    l2: float = 0.0
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 10
    mu: float = 0.4
    beta: float = 1e-2
    n_inner: int = 1
    in_frac: float = 0.8
    eval_batch: int = 4096
    patience: int = 0
    track_train_loss: bool = True

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.variant != "plain" and self.model != "din":
            raise ValueError(f"variant {self.variant} needs the attentive selector: use model='din'")
        if self.variant in ("M3", "M4") and self.n_inner < 1:
            raise ValueError("n_inner must be >= 1 for M3/M4")
        if self.variant != "plain" and self.dropout > 0:
            raise ValueError(f"dropout is applied by the 'plain' variant only; {self.variant} would ignore "
                             f"dropout={self.dropout}: use variant='plain' or dropout=0")
        self.hidden = tuple(self.hidden)
        self.att_hidden = tuple(self.att_hidden)


def model_config(cfg: MWConfig, n_items: int, n_cats: int) -> CTRModelConfig:
    """The :class:`CTRModelConfig` of ``cfg`` for a dataset with ``n_items`` / ``n_cats``."""
    return CTRModelConfig(
        n_items=n_items, n_cats=n_cats, emb_dim=cfg.emb_dim, hidden=cfg.hidden,
        att_hidden=cfg.att_hidden, dropout=cfg.dropout,
    )


def ctr_loss(mcfg: CTRModelConfig, kind: str, params, batch, *, train: bool = False, key=None):
    """Mean binary cross-entropy ``mean BCE(y, sigmoid(logit))`` of model ``kind`` on ``batch``."""
    logits = ctr_logits(params, batch, mcfg, kind, train=train, key=key)
    return bce_with_logits(logits, batch["label"])


def objective(cfg: MWConfig, mcfg: CTRModelConfig, theta, phi, batch_in, batch_out):
    """Value of the variant's joint objective (without the l2 term), for ``M1``, ``M2``, ``M4``:

    M1: ``L_in(theta, phi)``; M2: ``L_in + mu L_out(theta, phi)``;
    M4: ``L_in + mu L_out(U_phi^N(theta, D_in), phi)`` with ``U`` = N GD steps of rate beta on L_in.
    (M3 is an alternating scheme, not one objective.)"""
    L = lambda th, ph, b: ctr_loss(mcfg, cfg.model, merge_params(th, ph), b)  # noqa: E731
    if cfg.variant == "M1":
        return L(theta, phi, batch_in)
    if cfg.variant == "M2":
        return L(theta, phi, batch_in) + cfg.mu * L(theta, phi, batch_out)
    if cfg.variant == "M4":
        # the first inner step's forward pass also gives L_in(theta, phi): no second evaluation
        tbar, l_in = unroll(L, steps=cfg.n_inner, lr=cfg.beta, return_start_loss=True)(theta, phi, batch_in)
        return l_in + cfg.mu * L(tbar, phi, batch_out)
    raise ValueError(f"objective() is defined for M1, M2, M4, not {cfg.variant}")


def objective_grads(cfg: MWConfig, mcfg: CTRModelConfig):
    """``(theta, phi, batch_in, batch_out) -> (value, (g_theta, g_phi))`` of the joint objective.

    Reverse mode over :func:`objective` for M1, M2 and M4. For M4 that is the exact unrolled hypergradient of
    ``F = L_out(U_phi^N(theta, D_in), phi)`` in both ``theta`` and ``phi`` (reverse mode through the
    :func:`jaxrec.bilevel.unrolled.unroll` map, as :func:`jaxrec.bilevel.unrolled.unrolled` with
    ``wrt_theta=True`` computes it) plus ``grad L_in``, with ``L_in``'s forward and backward pass shared with
    the first inner step."""
    if cfg.variant in ("M1", "M2", "M4"):
        return jax.value_and_grad(lambda th, ph, bi, bo: objective(cfg, mcfg, th, ph, bi, bo), argnums=(0, 1))
    raise ValueError(f"objective_grads() is defined for M1, M2, M4, not {cfg.variant}")


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array


def _optimizers(cfg: MWConfig):
    return optax.adam(cfg.lr)


def init_state(cfg: MWConfig, mcfg: CTRModelConfig, key, dtype=None) -> TrainState:
    """Initial :class:`TrainState` (params cast to ``dtype`` if given). For M3 the optimizer state is a
    pair (theta's, phi's)."""
    params = init_params(mcfg, cfg.model, key)
    if dtype is not None:
        params = cast_params(params, dtype)
    opt = _optimizers(cfg)
    if cfg.variant == "M3":
        theta, phi = split_params(params)
        opt_state = (opt.init(theta), opt.init(phi))
    else:
        opt_state = opt.init(params)
    return TrainState(params, opt_state, jnp.zeros((), jnp.int32))


def _take(data, idx):
    return {k: v[idx] for k, v in data.items()}


def make_step(cfg: MWConfig, mcfg: CTRModelConfig):
    """Cached :func:`build_step` (one compilation per distinct configuration and input shapes)."""
    return _cached_step(dataclasses.astuple(cfg), mcfg)


@functools.lru_cache(maxsize=32)
def _cached_step(cfg_tuple, mcfg):
    return build_step(MWConfig(*cfg_tuple), mcfg)


def build_step(cfg: MWConfig, mcfg: CTRModelConfig):
    """The jitted training step ``step(state, data, idx_in, idx_out, key) -> (state, aux)``.

    ``data`` is the dict of device arrays of the whole training set; ``idx_in`` / ``idx_out`` index the
    D_in / D_out batch (``plain`` uses ``idx_in`` only). ``aux = {"loss": objective value}``."""
    opt = _optimizers(cfg)
    l2 = cfg.l2

    def add_l2(g, p):
        if l2 == 0:
            return g
        return jax.tree_util.tree_map(lambda gi, pi: gi + 2 * l2 * pi, g, p)

    if cfg.variant == "plain":

        def loss_fn(params, batch, key):
            return ctr_loss(mcfg, cfg.model, params, batch, train=True, key=key)

        def step(state, data, idx_in, idx_out, key):
            batch = _take(data, idx_in)
            val, g = jax.value_and_grad(loss_fn)(state.params, batch, key)
            g = add_l2(g, state.params)
            upd, opt_state = opt.update(g, state.opt_state, state.params)
            return TrainState(optax.apply_updates(state.params, upd), opt_state, state.step + 1), {"loss": val}

    elif cfg.variant == "M3":
        L = lambda th, ph, b: ctr_loss(mcfg, cfg.model, merge_params(th, ph), b)  # noqa: E731

        def step(state, data, idx_in, idx_out, key):
            b_in, b_out = _take(data, idx_in), _take(data, idx_out)
            theta, phi = split_params(state.params)
            s_t, s_p = state.opt_state
            l_in, g_t = jax.value_and_grad(L, argnums=0)(theta, phi, b_in)
            upd, s_t = opt.update(add_l2(g_t, theta), s_t, theta)
            theta = optax.apply_updates(theta, upd)
            l_out, g_p = jax.value_and_grad(L, argnums=1)(theta, phi, b_out)
            upd, s_p = opt.update(add_l2(g_p, phi), s_p, phi)
            phi = optax.apply_updates(phi, upd)
            return (TrainState(merge_params(theta, phi), (s_t, s_p), state.step + 1),
                    {"loss": l_in + cfg.mu * l_out})

    else:
        grads = objective_grads(cfg, mcfg)

        def step(state, data, idx_in, idx_out, key):
            b_in, b_out = _take(data, idx_in), _take(data, idx_out)
            theta, phi = split_params(state.params)
            val, (g_t, g_p) = grads(theta, phi, b_in, b_out)
            g = add_l2(merge_params(g_t, g_p), state.params)
            upd, opt_state = opt.update(g, state.opt_state, state.params)
            return TrainState(optax.apply_updates(state.params, upd), opt_state, state.step + 1), {"loss": val}

    return jax.jit(step)


@functools.lru_cache(maxsize=32)
def make_predict(mcfg: CTRModelConfig, kind: str):
    """Jitted inference ``(params, batch) -> logits [B]`` (identical for DIN and Meta-Wrapper: the
    wrapper changes training only)."""
    return jax.jit(lambda params, batch: ctr_logits(params, batch, mcfg, kind))


def predict(predict_fn, params, arrays: dict[str, np.ndarray], block: int = 4096) -> np.ndarray:
    """Logits for every row of ``arrays`` in fixed-size blocks (the last block is padded, so one
    compilation serves every block)."""
    n = len(arrays["label"])
    out = np.empty(n, dtype=np.float64)
    block = min(block, max(n, 1))
    for s in range(0, n, block):
        idx = np.arange(s, s + block)
        idx = np.minimum(idx, n - 1)
        batch = {k: jnp.asarray(v[idx]) for k, v in arrays.items()}
        out[s:s + block] = np.asarray(predict_fn(params, batch))[: min(block, n - s)]
    return out


def evaluate(predict_fn, params, arrays, block: int = 4096) -> dict[str, float]:
    """``{"auc": AUC, "loss": mean BCE}`` of the model on ``arrays`` (AUC via :func:`jaxrec.metrics.auc`)."""
    from jaxrec.metrics import auc

    logits = predict(predict_fn, params, arrays, block)
    y = arrays["label"].astype(np.float64)
    loss = float(np.mean(np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))))
    return {"auc": float(auc(jnp.asarray(y), jnp.asarray(logits))), "loss": loss}


def train(cfg: MWConfig, split, seed: int = 0, *, log=None, dtype=None) -> dict[str, Any]:
    """Train ``cfg`` on ``split`` (a :class:`jaxrec.data.ctr.CTRSplit`) with ``seed`` via
    :func:`jaxrec.train.fit` (early stopping on validation AUC, best state kept).

    Each epoch: ``plain`` shuffles the training set into batches; the wrapper variants split it 80/20
    (``in_frac``) at random into D_in / D_out, iterate D_in in shuffled batches and draw each step's D_out
    batch from a shuffled cycle over D_out. After each epoch the model is evaluated on validation and test
    (and the whole training set's loss if ``track_train_loss``); the epoch with the best validation AUC is
    kept (the test numbers are only recorded, never used for selection).

    Returns ``{"best": {...val/test metrics at the best-val epoch...}, "history": [per-epoch dicts],
    "params": best params, "step_time": mean seconds per training step (after compilation)}``.
    """
    from jaxrec.train import fit

    tr = split.train
    mcfg = model_config(cfg, tr.n_items, tr.n_cats)
    key = jax.random.PRNGKey(seed)
    key, k_init = jax.random.split(key)
    state = init_state(cfg, mcfg, k_init, dtype)
    step = make_step(cfg, mcfg)
    pred = make_predict(mcfg, cfg.model)
    rng = np.random.default_rng(seed)
    train_arrays = tr.arrays()
    data = {k: jnp.asarray(v) for k, v in train_arrays.items()}
    n = len(tr)
    bs = cfg.batch_size
    step_times = []

    def epoch_fn(carry, epoch):
        state, key = carry
        perm = rng.permutation(n)
        if cfg.variant == "plain":
            d_in, d_out = perm, perm
        else:
            n_in = int(round(cfg.in_frac * n))
            d_in, d_out = perm[:n_in], perm[n_in:]
        n_steps = max(1, len(d_in) // bs)
        out_bs = min(bs, len(d_out))
        reps = math.ceil(n_steps * out_bs / max(len(d_out), 1)) + 1
        # drawn for 'plain' too (unused there), so the rng stream, hence the batch order of saved runs, is unchanged
        out_cycle = np.concatenate([rng.permutation(d_out) for _ in range(reps)])
        losses = []
        t0 = time.perf_counter()
        for i in range(n_steps):
            key, k = jax.random.split(key)
            idx_in = jnp.asarray(d_in[i * bs:(i + 1) * bs])
            idx_out = jnp.asarray(out_cycle[i * out_bs:(i + 1) * out_bs])
            state, aux = step(state, data, idx_in, idx_out, k)
            losses.append(aux["loss"])
            if i == 0:  # exclude compilation from the step time
                jax.block_until_ready(state.params)
                t0 = time.perf_counter()
        jax.block_until_ready(state.params)
        if n_steps > 1:
            step_times.append((time.perf_counter() - t0) / (n_steps - 1))
        return (state, key), {"loss": jnp.mean(jnp.stack(losses))}

    def eval_fn(carry):
        params = carry[0].params
        rec = {}
        if cfg.track_train_loss:
            rec.update({f"train_{k}": v for k, v in evaluate(pred, params, train_arrays, cfg.eval_batch).items()})
        rec.update({f"val_{k}": v for k, v in evaluate(pred, params, split.val.arrays(), cfg.eval_batch).items()})
        rec.update({f"test_{k}": v for k, v in evaluate(pred, params, split.test.arrays(), cfg.eval_batch).items()})
        return rec

    emit = None if log is None else log
    (best_state, _), hist = fit((state, key), epoch_fn, eval_fn, epochs=cfg.epochs,
                                patience=cfg.patience or None, metric="val_auc", mode="max", log=emit,
                                desc=f"{cfg.model}/{cfg.variant}")
    history = [dict(epoch=r["epoch"] + 1, objective=r["train"].get("loss"), **(r["val"] or {})) for r in hist]
    best = dict(hist.best_metrics or {}, epoch=(hist.best_epoch or 0) + 1)
    return {
        "best": best,
        "history": history,
        "params": best_state.params,
        "step_time": float(np.mean(step_times)) if step_times else float("nan"),
    }
