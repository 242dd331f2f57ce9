"""Meta-Wrapper (differentiable wrapping operator for user-interest selection in CTR prediction).

Notation. ``f_theta`` is the CTR predictor (embeddings + dense layers, :mod:`jaxrec.models.ctr`),
``g_phi`` the interest selector (DIN's attention unit); ``phi`` are only the selector's weights
(:func:`jaxrec.models.ctr.split_params`). With a batch ``D`` of (history, target, label) rows,

    L(theta, phi; D) = mean_{(u, v, y) in D} BCE(y, f_theta(sum_t g_phi(e_t, e_v) e_t, e_v)).

Algorithm (one epoch)::

    split the training set at random into D_in (in_frac) and D_out (the rest)
    for each shuffled batch B_in of D_in, with the next batch B_out of a shuffled cycle over D_out:
        M1:  (theta, phi) <- opt on grad L(theta, phi; B_in u B_out)                      (DIN on the same rows)
        M2:  theta <- opt on grad_theta L(theta, phi; B_in)                                (out-of-bag term C2,
             phi   <- opt on grad_phi [L(theta, phi; B_in) + mu L(theta, phi; B_out)]     on the selector only)
        M3:  theta <- opt on grad_theta L(theta, phi; B_in)                               (first order)
             phi   <- opt on grad_phi   L(theta, phi; B_out)   at the new theta
        M4:  theta_bar = U_phi^N(theta) = N steps theta <- theta - beta grad_theta L(theta, phi; B_in)
             theta <- opt on grad_theta L(theta, phi; B_in)                                (Meta-Wrapper,
             phi   <- opt on grad_phi [L(theta, phi; B_in) + mu L(theta_bar, phi; B_out)]  Algorithm 1)
    every gradient gets + 2 l2 (theta, phi)  (optax.add_decayed_weights before the optimizer)

This is the detached form (``detach=True``, the default): Algorithm 1 line 1 ("Detach Operation: theta' :=
theta^(0)") starts the unroll at a copy of theta, so the outer term of Eq. 12 is differentiated through the
unrolled steps with respect to phi only (``jax.lax.stop_gradient`` on the unroll's start point; in M2 on the
outer term's theta) and theta's gradient is the plain inner gradient on D_in. ``detach=False`` is the
coupled form of the runs stored before issue 33: M2 and M4 differentiate the whole objective in both theta
and phi, so theta trains on ``L_in + mu L_out`` (M4: through the start of the unroll too). Every variant
takes the same steps on the same rows (:func:`epoch_indices`); M1 trains both on all of them.
``opt`` is Adam (``optimizer="adam"``, default) or mini-batch SGD (``"sgd"``, the paper's), at ``lr``
times ``lr_decay`` after every epoch (:func:`optimizer`).

``variant="plain"`` trains any baseline (Base, Wide&Deep, PNN, DeepFM, DIN) on the full training set
(``(theta, phi) <- opt on grad L(theta, phi; B)`` over shuffled batches, dropout if set; no D_in/D_out
split). M3 is :func:`jaxrec.bilevel.alternating` with the first-order hypergradient :func:`jaxrec.bilevel.direct`;
M4's unrolled map is :func:`jaxrec.bilevel.unroll`; in the coupled form its first step also hands out
``L(theta, phi; B_in)`` (``return_start_loss=True``). The objective is differentiated in one reverse pass
(the exact second-order term). The state of every variant is a :class:`jaxrec.bilevel.BilevelState` with
``theta`` / ``lam = phi`` and one optimizer state each (Adam and SGD are per-coordinate, so this equals one
optimizer over all parameters).

Evaluation: AUC and mean BCE on the validation / test rows; with ``track_train_loss`` every evaluation also
records the training-set and test AUC / loss of that epoch (``train_*`` / ``test_*``: the curves of the
synthetic study; recorded only, never selected on).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec import bilevel as bl
from jaxrec.configs.meta_wrapper import VARIANTS, MWConfig
from jaxrec.data.ctr import CTRSplit, load_ctr
from jaxrec.losses import bce_with_logits
from jaxrec.method import Method
from jaxrec.metrics import auc
from jaxrec.models.ctr import CTRModelConfig, ctr_logits, init_params, merge_params, split_params

__all__ = ["MWConfig", "VARIANTS", "DATA_FIELDS", "load", "method", "model_config", "ctr_loss", "objective",
           "objective_grads", "learning_rate", "optimizer", "epoch_indices", "predict", "evaluate_rows"]

DATA_FIELDS = ()  # the CTR split depends on the dataset and the seed only


def load(config: MWConfig, dataset: str, data_dir, seed: int) -> CTRSplit:
    """The CTR split of ``dataset`` (:func:`jaxrec.data.ctr.load_ctr`); ``seed`` fixes its negatives
    (and the synthetic draw and split)."""
    return load_ctr(dataset, data_dir, seed=seed)


def model_config(cfg: MWConfig, n_items: int, n_cats: int) -> CTRModelConfig:
    """The :class:`CTRModelConfig` of ``cfg`` for a dataset with ``n_items`` / ``n_cats``."""
    return CTRModelConfig(n_items=n_items, n_cats=n_cats, emb_dim=cfg.emb_dim, hidden=cfg.hidden,
                          att_hidden=cfg.att_hidden, dropout=cfg.dropout)


def ctr_loss(mcfg: CTRModelConfig, kind: str, params, batch, *, train: bool = False, key=None):
    """Mean binary cross-entropy ``mean BCE(y, sigmoid(logit))`` of model ``kind`` on ``batch``."""
    return bce_with_logits(ctr_logits(params, batch, mcfg, kind, train=train, key=key), batch["label"])


def _joined(b_in: dict, b_out: dict) -> dict:
    """The rows of ``b_in`` and ``b_out`` as one batch (M1's)."""
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=0), b_in, b_out)


def objective(cfg: MWConfig, mcfg: CTRModelConfig, theta, phi, batch_in, batch_out):
    """The objective of M1, M2, M4 (without l2; M3 alternates, it has no single objective) whose gradient in
    ``(theta, phi)`` is the step's: with ``cfg.detach`` the outer term sees theta through
    ``jax.lax.stop_gradient``, so ``grad_theta`` is ``grad_theta L_in`` and only phi gets the outer term."""
    L = lambda th, ph, b: ctr_loss(mcfg, cfg.model, merge_params(th, ph), b)  # noqa: E731
    if cfg.variant == "M1":
        return L(theta, phi, _joined(batch_in, batch_out))
    start = jax.lax.stop_gradient(theta) if cfg.detach else theta
    if cfg.variant == "M2":
        return L(theta, phi, batch_in) + cfg.mu * L(start, phi, batch_out)
    if cfg.variant == "M4":
        if cfg.detach:
            tbar = bl.unroll(L, steps=cfg.n_inner, lr=cfg.beta)(start, phi, batch_in)
            return L(theta, phi, batch_in) + cfg.mu * L(tbar, phi, batch_out)
        tbar, l_in = bl.unroll(L, steps=cfg.n_inner, lr=cfg.beta, return_start_loss=True)(theta, phi, batch_in)
        return l_in + cfg.mu * L(tbar, phi, batch_out)
    raise ValueError(f"objective() is defined for M1, M2, M4, not {cfg.variant}")


def objective_grads(cfg: MWConfig, mcfg: CTRModelConfig):
    """``(theta, phi, batch_in, batch_out) -> (value, (g_theta, g_phi))``: reverse mode over :func:`objective`
    (for M4 the exact unrolled hypergradient in phi, and in the coupled form in theta too, plus grad L_in)."""
    return jax.value_and_grad(lambda th, ph, bi, bo: objective(cfg, mcfg, th, ph, bi, bo), argnums=(0, 1))


def learning_rate(cfg: MWConfig, steps_per_epoch: int):
    """``lr`` (a float) or the schedule ``lr * lr_decay ** floor(step / steps_per_epoch)``
    (``optax.exponential_decay``, staircase: the rate drops once at the end of every epoch)."""
    if cfg.lr_decay == 1.0:
        return cfg.lr
    return optax.exponential_decay(cfg.lr, transition_steps=max(1, int(steps_per_epoch)), decay_rate=cfg.lr_decay,
                                   staircase=True)


def optimizer(cfg: MWConfig, steps_per_epoch: int = 1) -> optax.GradientTransformation:
    """``cfg.optimizer`` (Adam or plain SGD) at :func:`learning_rate` on the gradient plus ``2 l2 params``."""
    rate = learning_rate(cfg, steps_per_epoch)
    opt = optax.adam(rate) if cfg.optimizer == "adam" else optax.sgd(rate)
    return optax.chain(optax.add_decayed_weights(2 * cfg.l2), opt)


def _sizes(cfg: MWConfig, n: int) -> tuple[int, int, int]:
    """``(|D_in|, steps per epoch, D_out batch size)`` for ``n`` training rows."""
    n_in = n if cfg.variant == "plain" else int(round(cfg.in_frac * n))
    n_out = n if cfg.variant == "plain" else n - n_in
    return n_in, max(1, n_in // cfg.batch_size), min(cfg.batch_size, n_out)


def epoch_indices(cfg: MWConfig, n: int, rng: np.random.Generator) -> dict:
    """One epoch's row indices ``{"in": int32[steps, B], "out": int32[steps, B_out]}`` drawn from ``rng``:
    a permutation split into D_in / D_out (``plain``: both the whole set), D_in in order, D_out as a
    cycle of fresh permutations (drawn for ``plain`` too, so the random stream is the same for all)."""
    n_in, n_steps, out_bs = _sizes(cfg, n)
    perm = rng.permutation(n)
    d_in, d_out = (perm, perm) if cfg.variant == "plain" else (perm[:n_in], perm[n_in:])
    reps = -(-n_steps * out_bs // max(len(d_out), 1)) + 1
    cycle = np.concatenate([rng.permutation(d_out) for _ in range(reps)])
    bs = cfg.batch_size
    return {"in": d_in[:n_steps * bs].reshape(n_steps, bs).astype(np.int32),
            "out": cycle[:n_steps * out_bs].reshape(n_steps, out_bs).astype(np.int32)}


def predict(predict_fn, params, arrays: dict, block: int = 4096) -> np.ndarray:
    """Logits of every row of ``arrays`` in blocks of ``block`` rows (the last one padded with copies of the
    last row, so that every part evaluated with the same ``block`` shares one compilation)."""
    n = len(arrays["label"])
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, block):
        idx = np.minimum(np.arange(s, s + block), n - 1)
        out[s:s + block] = np.asarray(predict_fn(params, {k: jnp.asarray(v[idx]) for k, v in arrays.items()}))[
            : min(block, n - s)]
    return out


def evaluate_rows(predict_fn, params, arrays: dict, block: int = 4096) -> dict:
    """``{"auc", "loss"}`` (mean BCE) of the model on ``arrays``."""
    logits = predict(predict_fn, params, arrays, block)
    y = arrays["label"].astype(np.float64)
    loss = float(np.mean(np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))))
    return {"auc": float(auc(jnp.asarray(y), jnp.asarray(logits))), "loss": loss}


def method(config: MWConfig, data: CTRSplit) -> Method:
    """``config`` on ``data`` (a :class:`jaxrec.data.ctr.CTRSplit`) as a :class:`jaxrec.method.Method`.

    ``batches(seed, epoch)`` gives the epoch's D_in / D_out batches ``{"in": rows, "out": rows}`` (each a
    dict of ``[steps, B, ...]`` arrays), gathered on the host at the row indices of :func:`epoch_indices`
    from one ``numpy.random.default_rng(seed)`` stream continued over the epochs (replayed from epoch 0
    after a resume). The training set is not closed over by the step (XLA would embed it as a constant:
    twice the compilation time)."""
    cfg, tr = config, data.train
    mcfg = model_config(cfg, tr.n_items, tr.n_cats)
    rows = tr.arrays()
    parts = {"train": tr.arrays(), "val": data.val.arrays(), "test": data.test.arrays()}
    n_steps = _sizes(cfg, len(tr))[1]
    tx = optimizer(cfg, n_steps)
    L = lambda th, ph, b: ctr_loss(mcfg, cfg.model, merge_params(th, ph), b)  # noqa: E731

    if cfg.variant == "M3":  # theta on L_in, then phi on L_out at the new theta
        m3 = bl.alternating(L, bl.direct(L), tx, tx)
    elif cfg.variant == "plain":
        loss = lambda th, ph, b, key: ctr_loss(mcfg, cfg.model, merge_params(th, ph), b, train=True, key=key)  # noqa: E731
        grads = jax.value_and_grad(lambda th, ph, bi, bo, key: loss(th, ph, bi, key), argnums=(0, 1))
    else:
        joint = objective_grads(cfg, mcfg)
        grads = lambda th, ph, bi, bo, key: joint(th, ph, bi, bo)  # noqa: E731

    def init(key) -> bl.BilevelState:
        theta, phi = split_params(init_params(mcfg, cfg.model, jax.random.split(key)[1]))
        return bl.BilevelState(theta, phi, tx.init(theta), tx.init(phi), jnp.zeros((), jnp.int32))

    def step(state: bl.BilevelState, batch, key):
        b_in, b_out = batch["in"], batch["out"]
        if cfg.variant == "M3":
            state, aux = m3.update(state, b_in, b_out)
            return state, {"loss": aux["inner"] + cfg.mu * aux["outer"]}
        value, (g_t, g_p) = grads(state.theta, state.lam, b_in, b_out, key)
        u_t, inner_opt = tx.update(g_t, state.inner_opt, state.theta)
        u_p, outer_opt = tx.update(g_p, state.outer_opt, state.lam)
        return bl.BilevelState(optax.apply_updates(state.theta, u_t), optax.apply_updates(state.lam, u_p),
                               inner_opt, outer_opt, state.step + 1), {"loss": value}

    streams: dict = {}

    def batches(seed: int, epoch: int) -> dict:
        last, rng = streams.get(seed, (-1, None))
        if rng is None or last != epoch - 1:  # not the stream's next epoch (a resume): replay from epoch 0
            last, rng = -1, np.random.default_rng(seed)
        while last < epoch - 1:
            epoch_indices(cfg, len(tr), rng)
            last += 1
        idx = epoch_indices(cfg, len(tr), rng)
        streams[seed] = (epoch, rng)
        return {part: {k: jnp.asarray(v[i]) for k, v in rows.items()} for part, i in idx.items()}

    predict_fn = jax.jit(lambda params, batch: ctr_logits(params, batch, mcfg, cfg.model))
    block = min(cfg.eval_batch, max(len(p["label"]) for p in parts.values()))  # one shape: one compilation

    def evaluate(state: bl.BilevelState, part: str) -> dict:
        params = merge_params(state.theta, state.lam)
        out = evaluate_rows(predict_fn, params, parts[part], block)
        if cfg.track_train_loss:
            for name in ("train", "test"):
                out.update({f"{name}_{k}": v for k, v in evaluate_rows(predict_fn, params, parts[name], block).items()})
        return out

    return Method(init=init, batches=batches, step=step, evaluate=evaluate,
                  summary=lambda state: {"steps_per_epoch": n_steps})
