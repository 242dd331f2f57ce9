"""MCLRec (Qin et al., SIGIR 2023), CL4SRec and SASRec as configurations of the same parts.

Notation (per batch of ``B`` left-padded input sequences ``S`` with next-item targets ``y``):

- encoder ``f_theta`` = :class:`jaxrec.models.sasrec.SASRec`; ``h = f(S)``, scores ``h E[1:]^T``,
  ``L_rec = CE(h E[1:]^T, y)`` over all items;
- views ``h1 = f(aug1(S))``, ``h2 = f(aug2(S))`` from :func:`jaxrec.augment.two_views` (two different
  operators among crop / mask / reorder, drawn per sequence on device);
- learnable augmenters ``z1 = w_phi1(h1)``, ``z2 = w_phi2(h2)`` (:class:`Augmenter`, MLP d-32-16-d, GELU);
- ``L_cl1 = L_con(h1, h2)``, ``L_cl2 = L_con(z1, z2) + L_con(h1, z2) + L_con(h2, z1)`` with
  :func:`nt_xent`; ``R = R(h1, z2) + R(h2, z1) + R(z1, z2)`` with :func:`contrastive_regularizer`;
- stage 1 (theta, phi frozen): ``L0 = L_rec + lam L_cl1 + beta (L_cl2 + 0.1 R)``;
- stage 2 (phi, theta frozen, views re-encoded with the updated theta): ``L_phi = L_cl2 + 0.1 R``;
- optional (``repeat_stage1``): stage 1 once more on the same batch, as the authors' code does.

``MCLRec-J`` (``joint=True``) takes one Adam step on ``L0`` w.r.t. ``(theta, phi)`` together.
``CL4SRec`` is ``beta = 0`` (no augmenters), ``SASRec`` is ``lam = beta = 0`` (no views at all).
The whole per-batch update (augmentation, stage 1, stage 2, optional repeat) is ONE jitted function
``step(state, batch, key) -> (state, aux)``.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec import augment
from jaxrec.losses import softmax_cross_entropy
from jaxrec.models.sasrec import SASRec, SASRecConfig, encode_ragged, item_embeddings, trim_batch

__all__ = [
    "MCLRecConfig", "preset", "ABLATIONS", "Augmenter", "nt_xent", "contrastive_regularizer",
    "TrainState", "Model", "build", "init_state", "make_stages", "make_step", "make_eval", "losses_stage1",
    "prepare_data", "evaluate", "train",
]


# --------------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class MCLRecConfig:
    """All hyper-parameters; defaults are MCLRec on Beauty (lam = 0, beta = 0.05)."""

    max_len: int = 50
    hidden: int = 64
    n_blocks: int = 2
    n_heads: int = 2
    ff: int = 256
    dropout: float = 0.5
    attn_dropout: float = 0.5
    aug_hidden: tuple = (32, 16)
    crop_ratio: float = 0.5
    mask_ratio: float = 0.5
    reorder_ratio: float = 0.8
    lam: float = 0.0            # weight of L_cl1
    beta: float = 0.05          # weight of (L_cl2 + reg_weight R)
    reg_weight: float = 0.1     # weight of R inside the meta term (gamma = reg_weight * beta overall)
    temperature: float = 1.0
    use_cl2: bool = True        # ablation "w/o L_cl2": False
    use_reg: bool = True        # ablation "w/o R": False
    shared_augmenter: bool = False  # ablation "phi1 = phi2"
    joint: bool = False         # MCLRec-J: one joint step on all parameters
    repeat_stage1: bool = False  # authors' code: stage 1 again after stage 2 on the same batch
    lr: float = 1e-3
    batch_size: int = 256
    epochs: int = 100
    patience: int = 10
    select_metric: str = "ndcg@10"
    eval_block: int = 1024
    # Cost-only option: encode the longest ``ragged_long_frac`` of the rows at full width and the rest at
    # width ``ragged_width`` (exact, see jaxrec.models.sasrec.encode_ragged); 0 disables.
    ragged_width: int = 16
    ragged_long_frac: float = 0.25

    @property
    def uses_views(self) -> bool:
        return self.lam > 0 or self.beta > 0

    @property
    def uses_augmenters(self) -> bool:
        return self.beta > 0

    def encoder_config(self, n_items: int) -> SASRecConfig:
        return SASRecConfig(n_items=n_items, max_len=self.max_len, hidden=self.hidden,
                            n_blocks=self.n_blocks, n_heads=self.n_heads, ff=self.ff,
                            dropout=self.dropout, attn_dropout=self.attn_dropout)


ABLATIONS = {
    "none": {},
    "no_cl1": {"lam": 0.0},
    "no_cl2": {"use_cl2": False},
    "no_reg": {"use_reg": False},
    "shared": {"shared_augmenter": True},
}


def preset(model: str, ablation: str = "none", **overrides) -> MCLRecConfig:
    """Config of ``model`` in ``sasrec | cl4srec | mclrec | mclrec_j`` with an ablation and overrides.

    ``sasrec``: ``lam = beta = 0``; ``cl4srec``: ``lam = 0.1, beta = 0`` (tune lam in {0.05, 0.1, 0.2});
    ``mclrec``: ``lam = 0, beta = 0.05`` (Beauty), two-stage; ``mclrec_j``: same losses, joint step.
    """
    base = {
        "sasrec": {"lam": 0.0, "beta": 0.0},
        "cl4srec": {"lam": 0.1, "beta": 0.0},
        "mclrec": {"lam": 0.0, "beta": 0.05},
        "mclrec_j": {"lam": 0.0, "beta": 0.05, "joint": True},
    }
    if model not in base:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(base)}")
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; choose one of {sorted(ABLATIONS)}")
    if ablation != "none" and model not in ("mclrec", "mclrec_j"):
        raise ValueError(f"ablation {ablation!r} only applies to mclrec / mclrec_j, not {model!r}")
    kw = {**base[model], **ABLATIONS[ablation], **overrides}
    return MCLRecConfig(**kw)


# --------------------------------------------------------------------------------------------- parts
class Augmenter(nn.Module):
    """Learnable augmenter ``w_phi(h) = W_3 GELU(W_2 GELU(W_1 h + b_1) + b_2) + b_3`` (d -> 32 -> 16 -> d).

    Initialised like PyTorch's ``nn.Linear`` default (uniform, variance ``1 / (3 fan_in)``).
    """

    hidden: tuple = (32, 16)
    out: int = 64
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h):
        init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        for i, n in enumerate(self.hidden):
            h = nn.Dense(n, kernel_init=init, param_dtype=self.param_dtype, name=f"dense_{i}")(h)
            h = jax.nn.gelu(h, approximate=False)
        return nn.Dense(self.out, kernel_init=init, param_dtype=self.param_dtype, name="dense_out")(h)


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


def contrastive_regularizer(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """MCLRec's regulariser ``R(a, b)`` on the pair similarity matrix ``S = a b^T`` (``B x B``).

    Positives ``s+ = diag(S)`` (same sequence), negatives ``s- = S_ij, i != j``;
    ``o_min = min(min s+, max s-)``, ``o_max = max(min s+, max s-)`` (scalars over the batch) and

        ``R = mean([s+ - o_min]_+) + mean([o_max - s-]_+)``.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"contrastive_regularizer expects two [B, d] arrays, got {a.shape} and {b.shape}")
    n = a.shape[0]
    if n < 2:
        raise ValueError("contrastive_regularizer needs a batch of at least 2 sequences (negatives)")
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


# --------------------------------------------------------------------------------------------- state
class Model(NamedTuple):
    """The Flax modules and optimiser of one configuration (static, not a pytree of arrays)."""

    config: MCLRecConfig
    encoder: SASRec
    augmenter: Augmenter
    opt: optax.GradientTransformation


class TrainState(NamedTuple):
    """Parameters and optimiser states. ``phi`` = ``{"aug1", "aug2"}`` (or ``{"aug"}`` when shared,
    ``{}`` without augmenters). Adam is elementwise, so two Adam states with the same settings equal
    one Adam over ``(theta, phi)``; MCLRec-J uses both in one joint update."""

    theta: Any
    phi: Any
    opt_theta: Any
    opt_phi: Any
    step: jnp.ndarray


@functools.lru_cache(maxsize=64)
def build(config: MCLRecConfig, n_items: int, param_dtype=jnp.float32) -> Model:
    """Modules for ``n_items`` real items (ids ``1..n_items``, 0 = padding).

    Cached on ``(config, n_items, param_dtype)``, and :func:`make_step` / :func:`make_eval` are cached
    on the model, so several seeds or runs of one configuration share one compilation.
    """
    enc = SASRec(config.encoder_config(n_items), param_dtype=param_dtype)
    aug = Augmenter(tuple(config.aug_hidden), config.hidden, param_dtype=param_dtype)
    return Model(config, enc, aug, optax.adam(config.lr))


def init_state(model: Model, key) -> TrainState:
    """Initial parameters (encoder ``normal(0, 0.02)``) and Adam states (built under ``jax.jit``)."""
    c = model.config

    def init(key):
        k_enc, k1, k2 = jax.random.split(key, 3)
        dummy = jnp.zeros((1, c.max_len), dtype=jnp.int32)
        theta = model.encoder.init(k_enc, dummy)["params"]
        h = jnp.zeros((1, c.hidden), dtype=jax.tree.leaves(theta)[0].dtype)
        if not c.uses_augmenters:
            phi = {}
        elif c.shared_augmenter:
            phi = {"aug": model.augmenter.init(k1, h)["params"]}
        else:
            phi = {"aug1": model.augmenter.init(k1, h)["params"], "aug2": model.augmenter.init(k2, h)["params"]}
        return TrainState(theta, phi, model.opt.init(theta), model.opt.init(phi), jnp.zeros((), jnp.int32))

    return jax.jit(init)(key)


def encode_train(model: Model, theta, x, key):
    """``f_theta(x)`` with dropout on, through :func:`encode_ragged` when ``config.ragged_width > 0``."""
    c = model.config
    if c.ragged_width > 0:
        return encode_ragged(model.encoder, theta, x, key, train=True, short_width=c.ragged_width,
                             long_rows=max(1, int(round(c.ragged_long_frac * x.shape[0]))))
    return model.encoder.apply({"params": theta}, x, deterministic=False, rngs={"dropout": key})


def _phis(phi):
    if "aug" in phi:
        return phi["aug"], phi["aug"]
    return phi["aug1"], phi["aug2"]


def meta_terms(model: Model, phi, h1, h2):
    """``(L_cl2, R)`` from the views ``h1, h2`` through the augmenters ``z_i = w_phi_i(h_i)``."""
    c = model.config
    p1, p2 = _phis(phi)
    z1 = model.augmenter.apply({"params": p1}, h1)
    z2 = model.augmenter.apply({"params": p2}, h2)
    t = c.temperature
    cl2 = nt_xent(z1, z2, t) + nt_xent(h1, z2, t) + nt_xent(h2, z1, t)
    reg = contrastive_regularizer(h1, z2) + contrastive_regularizer(h2, z1) + contrastive_regularizer(z1, z2)
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
    """``L0`` and its parts. Encodes ``[S; aug1(S); aug2(S)]`` in one call (dropout on)."""
    c = model.config
    seq, target = batch["seq"], batch["target"]
    b = seq.shape[0]
    x = jnp.concatenate([seq, views[0], views[1]], axis=0) if c.uses_views else seq
    hs = encode_train(model, theta, x, key)
    h = hs[:b]
    logits = h @ item_embeddings(theta)[1:].T
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


def make_stages(model: Model):
    """``(stage1, stage2)``, pure and unjitted, each ``(state, batch, views, key) -> (state, aux)``.

    ``stage1`` takes one Adam step on theta for ``L0`` (``phi`` is read but never updated);
    ``stage2`` encodes ``views`` with the current theta (dropout on, ``stop_gradient``) and takes one
    Adam step on phi for ``use_cl2 L_cl2 + use_reg 0.1 R`` (theta and its optimiser state untouched).
    """
    opt = model.opt

    def stage1(state, batch, views, key):
        (loss, aux), g = jax.value_and_grad(
            lambda th: losses_stage1(model, th, state.phi, batch, views, key), has_aux=True)(state.theta)
        upd, ot = opt.update(g, state.opt_theta, state.theta)
        return state._replace(theta=optax.apply_updates(state.theta, upd), opt_theta=ot), aux

    def stage2(state, batch, views, key):
        b = batch["seq"].shape[0]
        hs = jax.lax.stop_gradient(encode_train(model, state.theta, jnp.concatenate(views, axis=0), key))
        h1, h2 = hs[:b], hs[b:]

        def phi_loss(phi):
            cl2, reg = meta_terms(model, phi, h1, h2)
            return meta_objective(model, cl2, reg)

        lp, g = jax.value_and_grad(phi_loss)(state.phi)
        upd, op = opt.update(g, state.opt_phi, state.phi)
        return state._replace(phi=optax.apply_updates(state.phi, upd), opt_phi=op), lp

    return stage1, stage2


@functools.lru_cache(maxsize=64)
def make_step(model: Model, jit: bool = True):
    """The whole per-batch update as one pure function ``step(state, batch, key) -> (state, aux)``.

    ``batch = {"seq": int[B, L] (left-padded), "target": int[B] (1..n_items)}``. Two-stage mode:
    stage 1 updates theta on ``L0`` (phi frozen), stage 2 re-encodes the same views with the new theta
    and updates phi on ``L_cl2 + 0.1 R`` (theta frozen, ``stop_gradient``), then optionally stage 1
    again (same views, fresh dropout). Joint mode: one update of ``(theta, phi)`` on ``L0``. The views
    are drawn on device from ``key``; the returned function is ``jax.jit``-ed whole unless ``jit=False``.
    """
    c = model.config
    opt = model.opt
    stage1, stage2 = make_stages(model)

    def step(state: TrainState, batch, key):
        k_aug, k1, k2, k3 = jax.random.split(key, 4)
        views = None
        if c.uses_views:
            views = augment.two_views(k_aug, batch["seq"], c.crop_ratio, c.mask_ratio, c.reorder_ratio)
        if c.joint:
            (loss, aux), (gt, gp) = jax.value_and_grad(
                lambda th, ph: losses_stage1(model, th, ph, batch, views, k1), argnums=(0, 1), has_aux=True
            )(state.theta, state.phi)
            ut, ot = opt.update(gt, state.opt_theta, state.theta)
            up, op = opt.update(gp, state.opt_phi, state.phi)
            state = state._replace(theta=optax.apply_updates(state.theta, ut), opt_theta=ot,
                                   phi=optax.apply_updates(state.phi, up), opt_phi=op)
            aux = dict(aux, phi_loss=jnp.zeros_like(loss))
        else:
            state, aux = stage1(state, batch, views, k1)
            aux = dict(aux, phi_loss=jnp.zeros_like(aux["loss"]))
            if c.uses_augmenters:
                state, aux["phi_loss"] = stage2(state, batch, views, k2)
                if c.repeat_stage1:
                    state, aux1 = stage1(state, batch, views, k3)
                    aux = dict(aux1, phi_loss=aux["phi_loss"])
        return state._replace(step=state.step + 1), aux

    return jax.jit(step) if jit else step


# --------------------------------------------------------------------------------------------- eval
@functools.lru_cache(maxsize=64)
def make_eval(model: Model):
    """Jitted ``ranks(theta, seq[B, L], target[B]) -> int[B]``: 0-based rank of each target among all
    ``n_items`` items under ``h E[1:]^T`` (no history exclusion; ties: lower id first)."""
    from jaxrec.metrics import rank_of_target

    @jax.jit
    def ranks(theta, seq, target):
        h = model.encoder.apply({"params": theta}, seq, deterministic=True)
        scores = h @ item_embeddings(theta)[1:].T
        return rank_of_target(scores, target - 1)

    return ranks


def evaluate(model: Model, theta, seq: np.ndarray, target: np.ndarray, ks=(5, 10, 20), ranks_fn=None,
             block: int | None = None) -> dict:
    """Full-ranking HR@K / NDCG@K / MRR@K of single targets (``jaxrec.metrics.ranks_to_metrics``).

    ``seq``: ``int[U, L]`` left-padded histories; ``target``: ``int[U]`` item ids. For each user the
    rank ``r`` of the target among all ``n_items`` scores ``h E[1:]^T`` (history items NOT excluded)
    gives ``HR@K = 1[r < K]``, ``NDCG@K = 1[r < K] / log2(r + 2)``, ``MRR@K = 1[r < K] / (r + 1)``,
    averaged over users. Users are scored in fixed-size blocks (the last one padded) in order of history
    length, each block trimmed to a bucketed width (exact; at most four compilations).
    """
    from jaxrec.metrics import ranks_to_metrics

    ranks_fn = ranks_fn or make_eval(model)
    block = int(block or model.config.eval_block)
    seq, target = np.asarray(seq), np.asarray(target)
    n = len(target)
    # Users sorted by history extent so that each block can drop its all-padding leading columns
    # (exact; widths bucketed to 8/16/32/max_len, so at most four compilations).
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


# --------------------------------------------------------------------------------------------- data / train
def prepare_data(seqs, max_len: int = 50) -> dict:
    """Leave-one-out arrays for sequences (a ``jaxrec.data.Sequences``).

    Training instances are every prefix of ``seq[:-2]`` (``(s_1..s_{t-1}) -> s_t``, inputs truncated to
    the last ``max_len`` items, left-padded); validation = history ``seq[:-2]`` -> ``seq[-2]``; test =
    history ``seq[:-1]`` -> ``seq[-1]``. Returns numpy arrays and ``n_items``.
    """
    from jaxrec.data import leave_one_out, pad_sequences, prefix_instances

    split = leave_one_out(seqs)
    x, y, _ = prefix_instances(split.train, max_len)
    return {
        "train_seq": x, "train_target": y,
        "valid_seq": pad_sequences(split.train, max_len, side="left"), "valid_target": split.valid_target,
        "test_seq": pad_sequences(split.test_history, max_len, side="left"), "test_target": split.test_target,
        "n_items": int(seqs.n_items),
    }


def train(config: MCLRecConfig, data: dict, seed: int = 0, *, ckpt_dir=None, log=print,
          max_batches: int | None = None, eval_users: int | None = None, ks=(5, 10, 20)) -> dict:
    """Train with early stopping on validation ``config.select_metric`` and evaluate the best state.

    ``data`` comes from :func:`prepare_data`. Batches of ``config.batch_size`` (last short batch dropped,
    so the step compiles once) are drawn with ``numpy.random.default_rng((seed, epoch))`` and step keys
    are ``fold_in(fold_in(PRNGKey(seed), epoch), batch)``, so a run resumed from ``ckpt_dir`` (via
    ``jaxrec.train.fit``) repeats the uninterrupted one. ``max_batches`` caps batches per epoch and
    ``eval_users`` evaluates on the first users only (both for smoke tests).

    Returns ``{"valid": metrics of the best epoch, "test": test metrics of the best state,
    "history": per-epoch records, "best_epoch", "train_time_s", "eval_time_s"}``.
    """
    from jaxrec.data import batch_iterator
    from jaxrec.train import fit

    c = config
    model = build(c, data["n_items"])
    base_key = jax.random.PRNGKey(seed)
    state = init_state(model, jax.random.fold_in(base_key, 10**6))
    step = make_step(model)
    ranks_fn = make_eval(model)
    n_eval = len(data["valid_target"]) if eval_users is None else int(eval_users)
    arrays = {"seq": data["train_seq"], "target": data["train_target"]}
    bs = min(c.batch_size, len(data["train_target"]))

    def epoch_fn(state, epoch):
        rng = np.random.default_rng((seed, epoch))
        ekey = jax.random.fold_in(base_key, epoch)
        auxes = []
        for i, batch in enumerate(batch_iterator(arrays, bs, rng, shuffle=True, drop_last=True)):
            if max_batches is not None and i >= max_batches:
                break
            state, aux = step(state, batch, jax.random.fold_in(ekey, i))
            auxes.append(aux)
        logs = jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *auxes)
        return state, logs

    eval_times = []

    def eval_fn(state):
        t = time.perf_counter()
        m = evaluate(model, state.theta, data["valid_seq"][:n_eval], data["valid_target"][:n_eval], ks,
                     ranks_fn)
        eval_times.append(time.perf_counter() - t)
        return m

    t0 = time.perf_counter()
    best, history = fit(state, epoch_fn, eval_fn, epochs=c.epochs, patience=c.patience,
                        metric=c.select_metric, ckpt_dir=ckpt_dir, log=log)
    train_time = time.perf_counter() - t0
    t = time.perf_counter()
    test = evaluate(model, best.theta, data["test_seq"][:n_eval], data["test_target"][:n_eval], ks, ranks_fn)
    return {"valid": history.best_metrics, "test": test, "history": list(history),
            "best_epoch": history.best_epoch, "summary": history.summary(), "train_time_s": train_time,
            "eval_time_s": float(np.median(eval_times)) if eval_times else None,
            "test_eval_time_s": time.perf_counter() - t, "state": best}
