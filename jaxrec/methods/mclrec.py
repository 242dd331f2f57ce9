"""MCLRec (Qin et al., SIGIR 2023), CL4SRec and SASRec as configurations of the same parts.

Notation (per batch of ``B`` left-padded input sequences ``S`` with next-item targets ``y``):

- encoder ``f_theta`` = :class:`jaxrec.models.sasrec.SASRec`; ``h = f(S)``, scores ``h E[1:]^T``,
  ``L_rec = CE(h E[1:]^T, y)`` over all items;
- views ``h1 = f(aug1(S))``, ``h2 = f(aug2(S))`` from :func:`jaxrec.augment.two_views` (two different
  operators among crop / mask / reorder, drawn per sequence on device);
- learnable augmenters ``z1 = w_phi1(h1)``, ``z2 = w_phi2(h2)`` (:class:`Augmenter`, MLP d-32-16-d, GELU;
  ``normalize_aug``: each ``z`` row L2-normalised, as the authors' ``Extractor``; ``h1, h2`` stay raw);
- ``L_cl1 = L_con(h1, h2)``, ``L_cl2 = L_con(z1, z2) + L_con(h1, z2) + L_con(h2, z1)`` with
  :func:`nt_xent`; ``R = R(h1, z2) + R(h2, z1) + R(z1, z2)`` with :func:`contrastive_regularizer`
  (``reg_per_row``: o_min / o_max per row of the 2B x 2B matrix, as the authors' code; else global).

Algorithm (one batch; ``bl.alternating(L0, bl.direct(L_phi), Adam, Adam)``)::

    views  <- two_views(S)                                       # on device, per-row operators
    stage 1 (theta, phi frozen):  L0 = L_rec + lam L_cl1 + beta (L_cl2 + 0.1 R)
                                  theta <- Adam(lr) step on grad_theta L0
    stage 2 (phi, theta frozen):  h1, h2 <- stop_gradient(f_theta_new(views))   # re-encoded, new theta
                                  L_phi = L_cl2 + 0.1 R;   phi <- Adam(lr) step on grad_phi L_phi
    optional (repeat_stage1):     stage 1 once more on the same batch, as the authors' code does
                                  (on in the ``mclrec`` preset, the reproduction path)

``MCLRec-J`` (``joint=True``) takes one Adam step on ``L0`` w.r.t. ``(theta, phi)`` together.
``CL4SRec`` is ``beta = 0`` (no augmenters: stage 1 alone), ``SASRec`` is ``lam = beta = 0`` (no views).
The whole per-batch update (augmentation, stage 1, stage 2, optional repeat) is one pure function
``step(state, batch, key) -> (state, aux)`` over a :class:`jaxrec.bilevel.BilevelState` (``theta`` = the
encoder, ``lam`` = ``phi`` = the augmenters), scanned over the epoch by :func:`jaxrec.method.train`.

Protocol: leave-one-out (:func:`prepare_data`), full ranking over all items without history exclusion
(:func:`evaluate`), HR / NDCG / MRR @ {5, 10, 20}, model selection on validation NDCG@10.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec import augment
from jaxrec import bilevel as bl
from jaxrec.configs.mclrec import (ABLATIONS, AUTHORS, LAMBDA_GRID, PRESETS, STORED_1EPOCH, MCLRecConfig,
                                    config_problem, preset)
from jaxrec.data import leave_one_out, load_sequences, pad_sequences, prefix_instances, synthetic
from jaxrec.losses import softmax_cross_entropy
from jaxrec.method import Method, Static
from jaxrec.metrics import rank_of_target, ranks_to_metrics
from jaxrec.models.sasrec import SASRec, SASRecConfig, encode_ragged, extents, item_embeddings, trim_batch

__all__ = [
    "MCLRecConfig", "PRESETS", "ABLATIONS", "AUTHORS", "STORED_1EPOCH", "LAMBDA_GRID", "preset", "DATA_FIELDS", "SYNTHETIC", "load", "method",
    "Augmenter", "nt_xent", "contrastive_regularizer", "Model", "build", "init_state", "make_parts",
    "make_step", "make_eval", "losses_stage1", "prepare_data", "epoch_batches", "evaluate",
]

DATA_FIELDS = ("max_len",)
# The synthetic default: a cluster Markov chain with a learnable successor rule (offline).
SYNTHETIC = dict(n_users=1000, n_items=500, n_clusters=10, mean_len=15, min_len=5, max_len=40, p_follow=0.6,
                 seed=0)
KS = (5, 10, 20)


# --------------------------------------------------------------------------------------------- parts
class Augmenter(nn.Module):
    """Learnable augmenter ``w_phi(h) = W_3 GELU(W_2 GELU(W_1 h + b_1) + b_2) + b_3`` (d -> 32 -> 16 -> d).

    Initialised like PyTorch's ``nn.Linear`` default (uniform, variance ``1 / (3 fan_in)``). With
    ``normalize`` each output row is divided by its L2 norm, ``z / ||z||_2`` (no epsilon), after the last
    layer, as the authors' ``Extractor`` does (its ``Normalize`` module); only the augmenter outputs are
    normalised there, the encoder views ``h`` enter the dot-product similarities raw.
    """

    hidden: tuple = (32, 16)
    out: int = 64
    param_dtype: Any = jnp.float32
    normalize: bool = False

    @nn.compact
    def __call__(self, h):
        init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        for i, n in enumerate(self.hidden):
            h = nn.Dense(n, kernel_init=init, param_dtype=self.param_dtype, name=f"dense_{i}")(h)
            h = jax.nn.gelu(h, approximate=False)
        z = nn.Dense(self.out, kernel_init=init, param_dtype=self.param_dtype, name="dense_out")(h)
        if self.normalize:
            z = z / jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True))
        return z


def nt_xent(a: jnp.ndarray, b: jnp.ndarray, temperature: float = 1.0) -> jnp.ndarray:
    """NT-Xent ``L_con(a, b)`` with dot-product similarity, both directions.

    With ``u = [a; b]`` (``2B x d``) and ``s_ij = u_i . u_j / tau``, the positive of row ``i`` is its
    other view ``p(i) = i +- B`` and the candidates are all ``j != i`` (the positive plus the ``2(B-1)``
    other views in the batch):

        ``L = 1/(2B) sum_i [ -s_{i,p(i)} + log sum_{j != i} exp(s_ij) ]``.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"nt_xent expects two [B, d] arrays of equal shape, got {a.shape} and {b.shape}")
    n = a.shape[0]
    u = jnp.concatenate([a, b], axis=0)
    s = (u @ u.T) / temperature
    s = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, s)
    pos = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    s_pos = jnp.take_along_axis(s, pos[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(s, axis=1) - s_pos)


def contrastive_regularizer(a: jnp.ndarray, b: jnp.ndarray, per_row: bool = False) -> jnp.ndarray:
    """MCLRec's regulariser ``R(a, b)``.

    ``per_row=False`` (global, the stored runs): on the pair matrix ``S = a b^T`` (``B x B``), positives
    ``s+ = diag(S)``, negatives ``s- = S_ij, i != j``; scalars ``o_min = min(min s+, max s-)``,
    ``o_max = max(min s+, max s-)`` over the batch and

        ``R = mean([s+ - o_min]_+) + mean([o_max - s-]_+)``.

    ``per_row=True`` (the authors' ``meta_contrast_rl``): on the ``2B x 2B`` matrix ``S = u u^T`` of
    ``u = [a; b]`` (the NT-Xent matrix), row ``i`` has one positive ``s+_i = S_{i, p(i)}`` (``p(i) = i +- B``)
    and ``2B - 2`` negatives ``s-_ij`` (``j != i, p(i)``: both views); per row ``o_min_i = min(s+_i,
    max_j s-_ij)``, ``o_max_i = max(s+_i, max_j s-_ij)`` and

        ``R = mean_i [s+_i - o_min_i]_+ + mean_{i, j} [o_max_i - s-_ij]_+``.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"contrastive_regularizer expects two [B, d] arrays, got {a.shape} and {b.shape}")
    n = a.shape[0]
    if n < 2:
        raise ValueError("contrastive_regularizer needs a batch of at least 2 sequences (negatives)")
    if per_row:
        u = jnp.concatenate([a, b], axis=0)
        s = u @ u.T
        pos_idx = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
        neg = jnp.ones((2 * n, 2 * n), dtype=bool).at[jnp.arange(2 * n), jnp.arange(2 * n)].set(False)
        neg = neg.at[jnp.arange(2 * n), pos_idx].set(False)
        pos = s[jnp.arange(2 * n), pos_idx]
        max_neg = jnp.max(jnp.where(neg, s, -jnp.inf), axis=1)
        o_min, o_max = jnp.minimum(pos, max_neg), jnp.maximum(pos, max_neg)
        r_pos = jnp.mean(jax.nn.relu(pos - o_min))
        r_neg = jnp.sum(jnp.where(neg, jax.nn.relu(o_max[:, None] - s), 0.0)) / (2 * n * (2 * n - 2))
        return r_pos + r_neg
    s = a @ b.T
    eye = jnp.eye(n, dtype=bool)
    pos = jnp.diagonal(s)
    min_pos = jnp.min(pos)
    max_neg = jnp.max(jnp.where(eye, -jnp.inf, s))
    o_min = jnp.minimum(min_pos, max_neg)
    o_max = jnp.maximum(min_pos, max_neg)
    r_pos = jnp.mean(jax.nn.relu(pos - o_min))
    r_neg = jnp.sum(jnp.where(eye, 0.0, jax.nn.relu(o_max - s))) / (n * (n - 1))
    return r_pos + r_neg


# --------------------------------------------------------------------------------------------- model
class Model(NamedTuple):
    """The Flax modules and optimiser of one configuration (static, not a pytree of arrays)."""

    config: MCLRecConfig
    encoder: SASRec
    augmenter: Augmenter
    opt: optax.GradientTransformation


def encoder_config(c: MCLRecConfig, n_items: int) -> SASRecConfig:
    return SASRecConfig(n_items=n_items, max_len=c.max_len, hidden=c.hidden, n_blocks=c.n_blocks,
                        n_heads=c.n_heads, ff=c.ff, dropout=c.dropout, attn_dropout=c.attn_dropout)


@functools.lru_cache(maxsize=64)
def build(config: MCLRecConfig, n_items: int, param_dtype=jnp.float32) -> Model:
    """Modules for ``n_items`` real items (ids ``1..n_items``, 0 = padding); cached on its arguments, and
    :func:`make_step` / :func:`make_eval` are cached on the model (shared compilations)."""
    problem = config_problem(config)
    if problem:
        raise ValueError(problem)
    enc = SASRec(encoder_config(config, n_items), param_dtype=param_dtype)
    aug = Augmenter(tuple(config.aug_hidden), config.hidden, param_dtype=param_dtype, normalize=config.normalize_aug)
    return Model(config, enc, aug, optax.adam(config.lr))


def long_rows(config: MCLRecConfig, n_rows: int) -> int:
    """How many of ``n_rows`` encoded rows the ragged encoding runs at full width."""
    return max(1, int(round(config.ragged_long_frac * n_rows)))


def ragged_flag(config: MCLRecConfig, seq: np.ndarray) -> Static | None:
    """``Static(ok)`` for an epoch's training sequences ``seq`` ``[n, B, L]`` (host side), ``None`` when the
    ragged encoding is off (or ``ragged_width >= L``). ``ok``: in every batch, each encode call (``[S; v1;
    v2]`` in stage 1, ``[v1; v2]`` in stage 2, ``S`` alone without views) has at most ``long_rows`` rows
    longer than ``ragged_width``. Views never extend a row (crop shortens it, mask and reorder keep its
    first item or pad it), so ``m`` stacked copies of a batch with ``k`` long rows have at most ``m k``. The check is
    sufficient, not necessary: where it says no but a call's views would fit, that call runs at full width
    (the same law as the cond's split, other dropout draws); on Beauty at the preset's 16 / 0.25 every
    batch fits."""
    c = config
    seq = np.asarray(seq)
    if c.ragged_width <= 0 or c.ragged_width >= seq.shape[-1]:  # off, or no narrower width to run at
        return None
    k = (np.asarray(extents(seq)) > c.ragged_width).sum(-1)  # [n] long rows per batch
    b = seq.shape[1]
    ok = all(bool(np.all(m * k <= long_rows(c, m * b))) for m in (1, 2, 3))
    return Static(ok)


def encode_train(model: Model, theta, x, key, fits=None):
    """``f_theta(x)`` with dropout on, through :func:`encode_ragged` when ``config.ragged_width > 0``.

    ``fits`` (a :class:`jaxrec.method.Static` from :func:`ragged_flag`, or ``None``) picks the ragged path
    at trace time; ``None`` leaves it to a ``lax.cond`` on the device (slow under ``jax.grad``)."""
    c = model.config
    if c.ragged_width > 0:
        return encode_ragged(model.encoder, theta, x, key, train=True, short_width=c.ragged_width,
                             long_rows=long_rows(c, x.shape[0]),
                             fits=None if fits is None else bool(fits.value))
    return model.encoder.apply({"params": theta}, x, deterministic=False, rngs={"dropout": key})


def _phis(phi):
    if "aug" in phi:
        return phi["aug"], phi["aug"]
    return phi["aug1"], phi["aug2"]


def meta_terms(model: Model, phi, h1, h2):
    """``(L_cl2, R)`` from the views ``h1, h2`` through the augmenters ``z_i = w_phi_i(h_i)``."""
    t = model.config.temperature
    p1, p2 = _phis(phi)
    z1 = model.augmenter.apply({"params": p1}, h1)
    z2 = model.augmenter.apply({"params": p2}, h2)
    cl2 = nt_xent(z1, z2, t) + nt_xent(h1, z2, t) + nt_xent(h2, z1, t)
    r = functools.partial(contrastive_regularizer, per_row=model.config.reg_per_row)
    reg = r(h1, z2) + r(h2, z1) + r(z1, z2)
    return cl2, reg


def meta_objective(model: Model, cl2, reg):
    """``use_cl2 * L_cl2 + use_reg * reg_weight * R`` (the term beta multiplies, and stage 2's loss)."""
    c = model.config
    out = jnp.zeros_like(cl2)
    if c.use_cl2:
        out = out + cl2
    if c.use_reg:
        out = out + c.reg_weight * reg
    return out


def losses_stage1(model: Model, theta, phi, batch, views, key):
    """``(L0, parts)``. Encodes ``[S; aug1(S); aug2(S)]`` in one call (dropout on)."""
    c = model.config
    seq, target = batch["seq"], batch["target"]
    b = seq.shape[0]
    x = jnp.concatenate([seq, views[0], views[1]], axis=0) if c.uses_views else seq
    hs = encode_train(model, theta, x, key, batch.get("ragged"))
    logits = hs[:b] @ item_embeddings(theta)[1:].T
    l_rec = softmax_cross_entropy(logits, target - 1)
    zero = jnp.zeros_like(l_rec)
    aux = {"l_rec": l_rec, "l_cl1": zero, "l_cl2": zero, "reg": zero}
    loss = l_rec
    if c.uses_views:
        h1, h2 = hs[b:2 * b], hs[2 * b:]
        if c.lam > 0:
            aux["l_cl1"] = nt_xent(h1, h2, c.temperature)
            loss = loss + c.lam * aux["l_cl1"]
        if c.uses_augmenters:
            aux["l_cl2"], aux["reg"] = meta_terms(model, phi, h1, h2)
            loss = loss + c.beta * meta_objective(model, aux["l_cl2"], aux["reg"])
    aux["loss"] = loss
    return loss, aux


def init_state(model: Model, key) -> bl.BilevelState:
    """``BilevelState(theta = encoder (normal(0, 0.02)), lam = phi = {"aug1", "aug2"} | {"aug"} | {}, two
    Adam states)``, built under ``jax.jit``."""
    c = model.config

    def init(key):
        k_enc, k1, k2 = jax.random.split(key, 3)
        theta = model.encoder.init(k_enc, jnp.zeros((1, c.max_len), dtype=jnp.int32))["params"]
        h = jnp.zeros((1, c.hidden), dtype=jax.tree.leaves(theta)[0].dtype)
        if not c.uses_augmenters:
            phi = {}
        elif c.shared_augmenter:
            phi = {"aug": model.augmenter.init(k1, h)["params"]}
        else:
            phi = {"aug1": model.augmenter.init(k1, h)["params"], "aug2": model.augmenter.init(k2, h)["params"]}
        return make_parts(model).init(theta, phi)

    return jax.jit(init)(key)


@functools.lru_cache(maxsize=64)
def make_parts(model: Model) -> bl.AlternatingStep:
    """The two stages as ``bl.alternating(L0, bl.direct(L_phi), Adam, Adam, has_aux=True)``.

    ``inner`` is stage 1 on ``inner_batch = {"seq", "target", "views", "key"}`` (one Adam step on theta
    for ``L0``; phi read, never updated). ``outer`` is stage 2 on ``outer_batch = {"views", "key"}``: the
    views re-encoded with the current theta (dropout on, ``stop_gradient``), one Adam step on phi for
    ``use_cl2 L_cl2 + use_reg 0.1 R`` (theta and its optimiser state untouched)."""

    def inner_loss(theta, phi, batch):
        return losses_stage1(model, theta, phi, batch, batch["views"], batch["key"])

    def phi_loss(theta, phi, batch):
        v1, v2 = batch["views"]
        hs = jax.lax.stop_gradient(encode_train(model, theta, jnp.concatenate([v1, v2], axis=0), batch["key"],
                                                batch.get("ragged")))
        b = v1.shape[0]
        return meta_objective(model, *meta_terms(model, phi, hs[:b], hs[b:]))

    return bl.alternating(inner_loss, bl.direct(phi_loss), model.opt, model.opt, has_aux=True)


@functools.lru_cache(maxsize=64)
def make_step(model: Model, jit: bool = True):
    """The whole per-batch update ``step(state, batch, key) -> (state, aux)`` (see the module docstring).

    ``batch = {"seq": int[B, L] (left-padded), "target": int[B] (1..n_items)}``; ``key`` splits into the
    views' key and one dropout key per pass. Two-stage mode: ``parts.update`` (stage 1 then stage 2 at
    the new theta), then optionally ``parts.inner`` again (same views, fresh dropout; the three passes run
    as a two-trip loop so that stage 1 is compiled once). Joint mode: one
    Adam step of ``(theta, phi)`` on ``L0``. ``aux``: ``loss, l_rec, l_cl1, l_cl2, reg, phi_loss``.
    """
    c = model.config
    parts = make_parts(model)
    vg_joint = jax.value_and_grad(lambda th, ph, b: losses_stage1(model, th, ph, b, b["views"], b["key"]),
                                  argnums=(0, 1), has_aux=True)

    def stage1_stage2_stage1(state, inner_batch, outer_batch, keys):
        """Stage 1 (key ``keys[0]``), stage 2, stage 1 again (``keys[1]``) as a two-trip ``lax.scan`` whose
        second trip skips stage 2: the same updates as three straight-line calls, with stage 1 compiled
        once. ``aux`` is the second stage 1's, ``phi_loss`` stage 2's."""

        def trip(state, xs):
            i, key = xs
            state, _, aux = parts.inner(state, dict(inner_batch, key=key))
            state, phi_loss = jax.lax.cond(i == 0, lambda st: parts.outer(st, inner_batch, outer_batch),
                                           lambda st: (st, jnp.zeros_like(aux["loss"])), state)
            return state, (aux, phi_loss)

        state, (aux, phi_loss) = jax.lax.scan(trip, state, (jnp.arange(2), jnp.stack(keys)))
        return state._replace(step=state.step + 1), jax.tree.map(lambda a: a[1], aux), phi_loss[0]

    def step(state: bl.BilevelState, batch, key):
        k_aug, k1, k2, k3 = jax.random.split(key, 4)
        views = augment.two_views(k_aug, batch["seq"], c.crop_ratio, c.mask_ratio, c.reorder_ratio) \
            if c.uses_views else None
        inner_batch = {"seq": batch["seq"], "target": batch["target"], "views": views, "key": k1,
                       "ragged": batch.get("ragged")}
        outer_batch = {"views": views, "key": k2, "ragged": batch.get("ragged")}
        if c.joint:
            (_, aux), (gt, gp) = vg_joint(state.theta, state.lam, inner_batch)
            ut, inner_opt = model.opt.update(gt, state.inner_opt, state.theta)
            up, outer_opt = model.opt.update(gp, state.outer_opt, state.lam)
            state = state._replace(theta=optax.apply_updates(state.theta, ut), inner_opt=inner_opt,
                                   lam=optax.apply_updates(state.lam, up), outer_opt=outer_opt,
                                   step=state.step + 1)
            phi_loss = jnp.zeros_like(aux["loss"])
        elif c.uses_augmenters and c.repeat_stage1:
            state, aux, phi_loss = stage1_stage2_stage1(state, inner_batch, outer_batch, (k1, k3))
        elif c.uses_augmenters:
            state, out = parts.update(state, inner_batch, outer_batch)
            aux, phi_loss = {k: out[k] for k in ("loss", "l_rec", "l_cl1", "l_cl2", "reg")}, out["outer"]
        else:  # CL4SRec / SASRec: stage 1 alone (no augmenters to update)
            state, _, aux = parts.inner(state, inner_batch)
            state, phi_loss = state._replace(step=state.step + 1), jnp.zeros_like(aux["loss"])
        return state, dict(aux, phi_loss=phi_loss)

    return jax.jit(step) if jit else step


# --------------------------------------------------------------------------------------------- eval
@functools.lru_cache(maxsize=64)
def make_eval(model: Model):
    """Jitted ``ranks(theta, seq[B, L], target[B]) -> int[B]``: 0-based rank of each target among all
    ``n_items`` items under ``h E[1:]^T`` (no history exclusion; ties: lower id first)."""

    @jax.jit
    def ranks(theta, seq, target):
        h = model.encoder.apply({"params": theta}, seq, deterministic=True)
        return rank_of_target(h @ item_embeddings(theta)[1:].T, target - 1)

    return ranks


def evaluate(model: Model, theta, seq: np.ndarray, target: np.ndarray, ks=KS, ranks_fn=None,
             block: int | None = None) -> dict:
    """Full-ranking HR@K / NDCG@K / MRR@K of single targets (``jaxrec.metrics.ranks_to_metrics``).

    ``seq``: ``int[U, L]`` left-padded histories; ``target``: ``int[U]`` item ids. For each user the
    rank ``r`` of the target among all ``n_items`` scores ``h E[1:]^T`` (history items NOT excluded)
    gives ``HR@K = 1[r < K]``, ``NDCG@K = 1[r < K] / log2(r + 2)``, ``MRR@K = 1[r < K] / (r + 1)``,
    averaged over users. Users are scored in fixed-size blocks (the last one padded) in order of history
    extent, each block trimmed to a bucketed width (exact; widths 8/16/32/max_len, at most four
    compilations).
    """
    ranks_fn = ranks_fn or make_eval(model)
    block = int(block or model.config.eval_block)
    seq, target = np.asarray(seq), np.asarray(target)
    n = len(target)
    nz = seq != 0
    ext = np.where(nz.any(1), seq.shape[1] - nz.argmax(1), 0)
    order = np.argsort(ext, kind="stable")
    out = np.empty(n, dtype=np.int64)
    for s in range(0, n, block):
        idx = order[s:s + block]
        m = len(idx)
        if m < block:
            idx = np.concatenate([idx, np.repeat(idx[-1:], block - m)])
        sq = trim_batch(seq[idx])
        out[order[s:s + m]] = np.asarray(ranks_fn(theta, jnp.asarray(sq), jnp.asarray(target[idx])))[:m]
    return ranks_to_metrics(out, ks)


# --------------------------------------------------------------------------------------------- data / method
def prepare_data(seqs, max_len: int = 50) -> dict:
    """Leave-one-out arrays for sequences (a ``jaxrec.data.Sequences``).

    Training instances are every prefix of ``seq[:-2]`` (``(s_1..s_{t-1}) -> s_t``, inputs truncated to
    the last ``max_len`` items, left-padded); validation = history ``seq[:-2]`` -> ``seq[-2]``; test =
    history ``seq[:-1]`` -> ``seq[-1]``. Returns numpy arrays and ``n_items``.
    """
    split = leave_one_out(seqs)
    x, y, _ = prefix_instances(split.train, max_len)
    return {
        "train_seq": x, "train_target": y,
        "valid_seq": pad_sequences(split.train, max_len, side="left"), "valid_target": split.valid_target,
        "test_seq": pad_sequences(split.test_history, max_len, side="left"), "test_target": split.test_target,
        "n_items": int(seqs.n_items),
    }


def load(config: MCLRecConfig, dataset: str, data_dir, seed: int) -> dict:
    """:func:`prepare_data` of ``dataset`` (``synthetic``: :data:`SYNTHETIC`) at ``config.max_len``; the
    leave-one-out split does not depend on ``seed``."""
    seqs = synthetic.sequences(**SYNTHETIC) if dataset == "synthetic" else load_sequences(dataset, data_dir)
    return prepare_data(seqs, max_len=config.max_len)


def epoch_batches(data: dict, seed: int, epoch: int, batch_size: int, max_batches: int = 0,
                  config: MCLRecConfig | None = None) -> dict:
    """One epoch's batches ``{"seq": [n, B, L], "target": [n, B], "key": [n, 2]}``: the training instances
    in the order of ``numpy.random.default_rng((seed, epoch)).permutation``, the last short batch
    dropped (and at most ``max_batches`` batches when > 0). ``key[i] = fold_in(fold_in(PRNGKey(seed),
    epoch), i)`` is batch ``i``'s step key, the stream every stored MCLRec result was trained with
    (resume-safe: a function of ``(seed, epoch)`` only). With a ``config`` whose ragged encoding is on,
    ``"ragged"`` is :func:`ragged_flag` of the epoch (the step then compiles without a ``lax.cond``)."""
    n = len(data["train_target"])
    bs = min(batch_size, n)
    perm = np.random.default_rng((seed, epoch)).permutation(n)
    n_b = n // bs if max_batches <= 0 else min(n // bs, max_batches)
    idx = perm[:n_b * bs].reshape(n_b, bs)
    ekey = jax.random.fold_in(jax.random.PRNGKey(seed), epoch)
    keys = jax.vmap(lambda i: jax.random.fold_in(ekey, i))(jnp.arange(n_b))
    seq = data["train_seq"][idx]
    out = {"seq": jnp.asarray(seq), "target": jnp.asarray(data["train_target"][idx]), "key": keys}
    flag = ragged_flag(config, seq) if config is not None else None
    if flag is not None:
        out["ragged"] = flag
    return out


def method(config: MCLRecConfig, data: dict) -> Method:
    """MCLRec / MCLRec-J / CL4SRec / SASRec (by ``config``) on ``data`` (from :func:`load`).

    ``init(PRNGKey(seed))`` draws the parameters from ``fold_in(PRNGKey(seed), 10**6)`` and ``step`` uses
    the key each batch carries (:func:`epoch_batches`), not the runner's per-step key: both are the
    streams of the stored runs, which the port reproduces exactly."""
    model = build(config, data["n_items"])
    step = make_step(model, jit=False)
    ranks_fn = make_eval(model)
    parts = {"val": ("valid_seq", "valid_target"), "test": ("test_seq", "test_target")}

    def evaluate_part(state, part):
        seq, target = parts[part]
        return evaluate(model, state.theta, data[seq], data[target], KS, ranks_fn)

    return Method(init=lambda key: init_state(model, jax.random.fold_in(key, 10**6)),
                  batches=lambda seed, epoch: epoch_batches(data, seed, epoch, config.batch_size, config.max_batches,
                                                            config),
                  step=lambda state, batch, key: step(state, batch, batch["key"]),
                  evaluate=evaluate_part)
