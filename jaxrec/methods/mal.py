r"""MAL: Meta Auxiliary Learning for Top-K recommendation.

Primary task (BPR with one sampled negative ``i'``)::

    r_ui = f(u, i; Theta),        L_pri(u, i, i') = -log sigmoid(r_ui - r_ui')

with ``f`` matrix factorisation (``r_ui = p_u . q_i``) or LightGCN (layer-averaged propagated
embeddings, :mod:`jaxrec.models.lightgcn`). Both bases share the parameter pytree
``Theta = {"user": [n_users, d], "item": [n_items, d]}``.

Auxiliary tasks (InfoNCE over cosine neighbourhoods of the training matrix ``R``)::

    N_u = {v != u : cos(R_u, R_v) >= tau}   (at most M, :func:`jaxrec.neighbors.cosine_neighbors`)
    s(u, v) = e_u . e_v / T                 (T = 1 in the paper)
    L_aux^U(u) = -log( exp s(u, u+) / (exp s(u, u+) + sum_{u- not in N_u} exp s(u, u-)) )

with ``u+`` a uniformly sampled neighbour and ``u-`` uniformly sampled non-neighbours; ``L_aux^I`` is the
same over items (columns of ``R``). ``negatives="threshold"`` (the paper's Eq. 5) draws ``u-`` outside the whole
``N_u`` (every entity with ``cos >= tau``); ``"topm"`` (the stored runs) only outside the top-``M`` list that
also supplies the positives. The issue writes the denominator without the positive term; that
variant is unbounded below (it rewards growing norms), so the default keeps the positive in the
denominator (standard InfoNCE); ``include_positive=False`` gives the literal form.

Inner (training) loss with one weight per user and per item, ``Lambda = {"user": [U], "item": [I]}``::

    L_in = mean_b [ L_pri(u,i,i') + sigmoid(lam_u) L_aux^U(u) + sigmoid(lam_i) L_aux^I(i) ]
           + l2/2 * mean_b (|p_u|^2 + |q_i|^2 + |q_i'|^2)

(users/items without neighbours contribute no auxiliary term). Outer (meta) loss: mean ``L_pri`` on a
batch of ``D_meta``: with ``meta_frac > 0`` (the paper, after lambda-Opt) a per-user share of the training
interactions held out from ``D_train``, disjoint from the validation split (which then only selects models
and stops early); with ``meta_frac = 0`` (the stored runs) the validation split itself. Bilevel problem::

    min_Lambda  sum_{D_meta} L_pri(Theta*(Lambda)),   Theta*(Lambda) = argmin_Theta sum_{D_train} L_in.

Hypergradients come from :mod:`jaxrec.bilevel`:

- ``mode="sog"``: one-step proxy ``Theta~ = Theta - alpha grad_Theta L_in`` (``bilevel.one_step``), or
  ``unroll_steps > 1`` plain gradient steps (``bilevel.unrolled``).
- ``mode="ig"``: implicit gradient of the proximal inner problem
  ``L_in + gamma/2 |Theta - Theta_0|^2``. Its Hessian is ``H + gamma I``; the IFT gives
  ``d_Lambda = -(d^2 L_in / dLambda dTheta) (H + gamma I)^{-1} g``, ``g = grad_Theta L_pri``. The paper
  writes the system as ``(I + H/gamma) w = g``; since ``(H + gamma I)^{-1} g = (1/gamma) (I + H/gamma)^{-1} g``
  the two are the same hypergradient once the paper's ``w`` is divided by ``gamma``. We call
  ``bilevel.implicit(solver="cg", damping=gamma, maxiter=k)``, which solves ``(H + gamma I) w = g`` with
  ``k`` CG steps (paper: k = 2), i.e. the paper's form with the ``1/gamma`` kept explicit. The paper's
  extra trainable matrix mapping Lambda to Theta's size is ill-defined and not implemented; we use the
  standard IFT form above.
- ``mode="fixed"``: Lambda stays at its initial value (grid-searched fixed weights, the ablation rows).

Algorithm (one step, :func:`jaxrec.bilevel.alternating`; :func:`jaxrec.method.train` scans it over an epoch)::

    sample u+, i+ ~ U(N_u), U(N_i) and the negative candidates (on device, sample_aux)
    Theta  <- Theta  + Adam_lr(grad_Theta L_in(Theta, Lambda; D_train batch))
    Lambda <- Lambda + Adam_meta_lr(d_Lambda L_pri(Theta~(Lambda); D_meta batch))   at the new Theta
              (mode "fixed": Lambda stays; the meta loss is only reported)

Each epoch: a shuffle of the training interactions cut into full batches, as many meta batches drawn with
replacement from ``D_meta``, one sampled negative each (``default_rng((seed, epoch))``).
"""
from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse as sp

from jaxrec import bilevel as bl
from jaxrec.configs.mal import MALConfig
from jaxrec.data import Interactions, load_dataset, ratio_split, resolve_data_dir, sample_negatives, synthetic, to_csr
from jaxrec.losses import bpr_loss
from jaxrec.method import Method
from jaxrec.metrics import evaluate_topk
from jaxrec.models import lightgcn, mf
from jaxrec.neighbors import Neighbors, cosine_neighbors, pair_keys, threshold_pairs

__all__ = [
    "MALConfig", "DATA_FIELDS", "load_split", "prepare", "load", "method", "artifacts",
    "info_nce", "bpr_terms", "sample_aux", "make_losses", "make_hypergrad", "make_update", "init_state",
    "build_neighbors", "build_exclusions", "with_aux_samples", "epoch_batches", "score_fn_for", "fixed_batches",
]

DATA_FIELDS = ("meta_frac",)  # the split depends on (dataset, seed, meta_frac); neighbourhoods / graph per config
SYNTHETIC = dict(n_users=300, n_items=400, n_clusters=8, mean_per_user=30.0)


# ------------------------------------------------------------------------------------------------ data


def load_split(dataset: str, data_dir, seed: int):
    """80/20 per-user random split of the interactions, 10% of train held out as D_meta / validation.

    Sequential sets (Amazon_*) are used as Top-K sets: each user's distinct items, order ignored.
    """
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


def prepare(split, meta_frac: float = 0.0, seed: int = 0) -> dict:
    """A ``(train, val, test)`` split as MAL's data: the parts, their CSR matrices, ``n_users`` / ``n_items``.

    ``meta_frac > 0``: ``meta_frac`` of each user's training interactions (rounded half up, at least one left
    in training; ``ratio_split`` on the training part with ``default_rng((seed, 33))``) become ``D_meta``
    (``meta_part`` / ``meta``), and ``train_part`` / ``train`` (Theta's data, the neighbourhoods, the graph)
    are the rest; validation ranks items not in train or D_meta. ``meta_frac = 0``: ``D_meta`` is the
    validation split (the stored runs). ``seen`` (excluded when testing) = train + D_meta + val.
    """
    tr, va, te = split[0], split[1], split[2]
    if meta_frac > 0:
        tr, _, me = ratio_split(tr, test_frac=meta_frac, val_frac=0.0, seed=np.random.default_rng((seed, 33)))
    else:
        me = va
    train, val, meta = to_csr(tr), to_csr(va), to_csr(me)
    known = ((train + meta) > 0).astype(np.float32).tocsr() if meta_frac > 0 else train
    return {"train_part": tr, "meta_part": me, "val_part": va, "train": train, "meta": meta, "val": val,
            "test": to_csr(te), "val_exclude": known, "seen": ((known + val) > 0).astype(np.float32).tocsr(),
            "n_users": int(tr.n_users), "n_items": int(tr.n_items)}


def load(config: MALConfig, dataset: str, data_dir, seed: int) -> dict:
    """:func:`prepare` of :func:`load_split` (the runner's data hook; only ``meta_frac`` of ``config`` matters)."""
    return prepare(load_split(dataset, data_dir, seed), meta_frac=config.meta_frac, seed=seed)


# ----------------------------------------------------------------------------------------------- losses


def info_nce(anchor, positive, negatives, neg_mask, temperature=1.0, include_positive=True):
    r"""Per-row InfoNCE loss.

    ``s_+ = a . p / T``, ``s_k = a . n_k / T``; returns, for each row,

        -s_+ + log( [exp s_+] + sum_{k : mask_k} exp s_k )

    (the bracketed term only with ``include_positive``). Shapes: ``anchor``/``positive`` ``[B, d]``,
    ``negatives`` ``[B, K, d]`` (per-row candidates) or ``[K, d]`` (candidates shared by the batch, one
    matrix product), ``neg_mask`` ``[B, K]`` bool; returns ``[B]``. A row whose mask is all false and
    ``include_positive=False`` has no valid denominator; its loss is defined as 0.
    """
    s_pos = jnp.sum(anchor * positive, axis=-1) / temperature
    if negatives.ndim == 2:
        s_neg = anchor @ negatives.T / temperature
    else:
        s_neg = jnp.einsum("bd,bkd->bk", anchor, negatives) / temperature
    s_neg = jnp.where(neg_mask, s_neg, -jnp.inf)
    if include_positive:
        logits = jnp.concatenate([s_pos[:, None], s_neg], axis=1)
        return jax.nn.logsumexp(logits, axis=1) - s_pos
    any_neg = jnp.any(neg_mask, axis=1)
    lse = jax.nn.logsumexp(jnp.where(any_neg[:, None], s_neg, 0.0), axis=1)
    return jnp.where(any_neg, lse - s_pos, 0.0)


def bpr_terms(eu, ei, users, pos, neg):
    """Per-example BPR loss ``-log sigmoid(e_u . e_i - e_u . e_i')`` (``softplus(-(r_ui - r_ui'))``)."""
    u = eu[users]
    return bpr_loss(jnp.sum(u * ei[pos], axis=-1), jnp.sum(u * ei[neg], axis=-1), reduction="none")


def _representations_fn(config: MALConfig, graph=None) -> Callable:
    """``theta -> (user vectors, item vectors)`` for the configured base model."""
    if config.base == "mf":
        return lambda theta: (theta["user"], theta["item"])
    if graph is None:
        raise ValueError("base='lightgcn' needs the training graph (lightgcn.build_graph)")
    n_layers = config.n_layers
    return lambda theta: lightgcn.representations(theta, graph, n_layers)


def make_losses(config: MALConfig, graph=None) -> tuple[Callable, Callable]:
    """``(inner_loss(theta, lam, batch), outer_loss(theta, lam, batch))`` in the ``jaxrec.bilevel`` form.

    Inner batch keys: ``user, pos, neg`` (``[B]``) and, per auxiliary task ``t`` in ``config.aux``
    (``t = "user"`` uses ``user`` as anchor, ``t = "item"`` uses ``pos``): ``{t}_aux_pos [B]``,
    ``{t}_aux_neg [B, K]``, ``{t}_aux_mask [B, K]`` (valid negatives), ``{t}_aux_has [B]`` (the anchor has
    at least one neighbour). Outer batch keys: ``user, pos, neg``.
    """
    reps = _representations_fn(config, graph)
    aux = config.aux
    l2 = config.l2
    temp = config.temperature
    incl = config.include_positive

    def aux_term(e, anchors, batch, t, lam_t):
        a = e[anchors]
        loss = info_nce(a, e[batch[f"{t}_aux_pos"]], e[batch[f"{t}_aux_neg"]], batch[f"{t}_aux_mask"], temp, incl)
        w = jax.nn.sigmoid(lam_t[anchors]).astype(loss.dtype)
        return w * jnp.where(batch[f"{t}_aux_has"], loss, 0.0)

    def inner_loss(theta, lam, batch):
        eu, ei = reps(theta)
        users, pos, neg = batch["user"], batch["pos"], batch["neg"]
        per = bpr_terms(eu, ei, users, pos, neg)
        if "user" in aux:
            per = per + aux_term(eu, users, batch, "user", lam["user"])
        if "item" in aux:
            per = per + aux_term(ei, pos, batch, "item", lam["item"])
        reg = 0.5 * (
            jnp.sum(theta["user"][users] ** 2, -1)
            + jnp.sum(theta["item"][pos] ** 2, -1)
            + jnp.sum(theta["item"][neg] ** 2, -1)
        )
        return jnp.mean(per + l2 * reg)

    def outer_loss(theta, lam, batch):
        del lam  # the meta objective is the primary loss only
        eu, ei = reps(theta)
        return jnp.mean(bpr_terms(eu, ei, batch["user"], batch["pos"], batch["neg"]))

    return inner_loss, outer_loss


def make_hypergrad(config: MALConfig, inner_loss, outer_loss) -> Callable:
    """``hypergrad(theta, lam, inner_batch, outer_batch) -> (outer_value, d_lam)`` from ``jaxrec.bilevel``.

    SOG: ``one_step(lr=alpha)`` (``unroll_steps == 1``) or ``unrolled(steps, lr=alpha)``. IG:
    ``implicit(solver="cg", maxiter=cg_steps, damping=gamma)`` i.e. ``(H + gamma I) w = g`` (see the module
    docstring for the equivalence with the paper's ``(I + H/gamma) w = g``).
    """
    if config.mode == "sog":
        if config.unroll_steps == 1:
            return bl.one_step(inner_loss, outer_loss, lr=config.alpha)
        return bl.unrolled(inner_loss, outer_loss, steps=config.unroll_steps, lr=config.alpha)
    if config.mode == "ig":
        return bl.implicit(inner_loss, outer_loss, solver="cg", maxiter=config.cg_steps, tol=0.0,
                           damping=config.gamma)
    raise ValueError(f"mode {config.mode!r} has no hypergradient")


# ------------------------------------------------------------------------------------------- sampling


def build_neighbors(train_csr: sp.spmatrix, config: MALConfig) -> dict[str, Neighbors]:
    """User neighbourhoods from the rows of ``R`` and item neighbourhoods from its columns."""
    out = {}
    if "user" in config.aux:
        out["user"] = cosine_neighbors(train_csr, config.tau, config.max_neighbors, config.neighbor_block)
    if "item" in config.aux:
        out["item"] = cosine_neighbors(train_csr.T.tocsr(), config.tau, config.max_neighbors, config.neighbor_block)
    return out


def build_exclusions(train_csr: sp.spmatrix, config: MALConfig) -> dict[str, np.ndarray]:
    """``negatives="threshold"``: per task the sorted keys ``a * n + b`` of every pair with ``cos >= tau`` (no
    top-M cut; :func:`jaxrec.neighbors.threshold_pairs`, blockwise); ``{}`` for ``"topm"``."""
    if config.negatives != "threshold":
        return {}
    mats = {"user": train_csr, "item": train_csr.T.tocsr()}
    return {t: pair_keys(threshold_pairs(mats[t], config.tau, config.neighbor_block)) for t in config.aux}


def sample_aux(key, anchors, nbr_index, nbr_count, n_entities: int, n_neg: int, shared: bool = True,
               exclude_keys=None) -> dict[str, jax.Array]:
    """Sample one neighbour ``v+ ~ U(N_a)`` per anchor and ``n_neg`` uniform negative candidates, on device.

    A candidate ``v-`` is valid for anchor ``a`` (``mask``) when ``v- != a`` and ``v- not in N_a``; invalid
    candidates are masked out of the InfoNCE denominator (not resampled), which is the same as uniform
    sampling from the complement. ``N_a`` is the stored, truncated neighbourhood (at most ``M`` rows): a row
    with ``cos >= tau`` that ranked below the ``M`` most similar is not in it and can be drawn as a negative.
    At small ``tau`` that is common (ml-100k, ``tau = 0.1``, ``M = 50``: about 510 qualifying users per user
    on average, so most of them are possible negatives). With ``shared=True`` one set of ``n_neg``
    candidates serves the whole batch (``neg [n_neg]``, scored with one matrix product); otherwise
    ``neg [B, n_neg]``. Returns ``pos [B]``, ``neg``, ``mask [B, n_neg]``, ``has [B]`` (the anchor has at
    least one neighbour).

    ``exclude_keys`` (sorted ``int32`` keys ``a * n + b`` of the whole neighbour relation, from
    :func:`build_exclusions`): a candidate is valid when ``v- != a`` and ``(a, v-)`` is not a key, i.e. it
    lies outside every entity with ``cos >= tau`` (Eq. 5), found by a binary search per (anchor, candidate);
    the positives still come from the top-M lists. The candidates drawn are the same either way.
    """
    kp, kn = jax.random.split(key)
    cnt = nbr_count[anchors]
    r = jax.random.uniform(kp, anchors.shape)
    slot = jnp.minimum(jnp.floor(r * cnt).astype(jnp.int32), jnp.maximum(cnt - 1, 0))
    pos = nbr_index[anchors, slot]
    has = cnt > 0
    pos = jnp.where(has, pos, anchors)
    if shared:
        # distinct candidates (without replacement), so membership can be scattered in O(B * M)
        neg = jax.random.choice(kn, n_entities, (n_neg,), replace=False).astype(jnp.int32)
        if exclude_keys is not None:
            return {"pos": pos, "neg": neg, "has": has,
                    "mask": _outside(exclude_keys, anchors[:, None], neg[None, :], n_entities)}
        slot_of = jnp.full((n_entities + 1,), n_neg, jnp.int32).at[neg].set(jnp.arange(n_neg, dtype=jnp.int32))
        nbrs = nbr_index[anchors]  # [B, M], -1 padding -> looks up the dummy last entry
        hit = slot_of[jnp.where(nbrs < 0, n_entities, nbrs)]  # [B, M] slot in neg or n_neg (= none)
        rows = jnp.broadcast_to(jnp.arange(anchors.shape[0])[:, None], hit.shape)
        mask = jnp.ones(anchors.shape + (n_neg + 1,), bool).at[rows, hit].set(False)[:, :n_neg]
        mask = mask & (neg[None, :] != anchors[:, None])
    else:
        neg = jax.random.randint(kn, anchors.shape + (n_neg,), 0, n_entities, dtype=jnp.int32)
        if exclude_keys is not None:
            return {"pos": pos, "neg": neg, "has": has,
                    "mask": _outside(exclude_keys, anchors[:, None], neg, n_entities)}
        in_nbr = jnp.any(neg[:, :, None] == nbr_index[anchors][:, None, :], axis=-1)
        mask = (neg != anchors[:, None]) & ~in_nbr
    return {"pos": pos, "neg": neg, "mask": mask, "has": has}


def _outside(keys, anchors, cands, n: int):
    """``[B, K]`` bool: ``cands != anchors`` and ``anchors * n + cands`` is not in the sorted ``keys``."""
    q = anchors * n + cands
    found = keys[jnp.searchsorted(keys, q)] == q  # the sentinel 2**31 - 1 keeps the index in range
    return (cands != anchors) & ~found


def with_aux_samples(config: MALConfig, batch: dict, nb: dict, n_users: int, n_items: int, key) -> dict:
    """``batch`` plus the ``{t}_aux_*`` entries of :func:`make_losses`, drawn by :func:`sample_aux` for each
    auxiliary task ``t`` (anchors: ``user`` for users, ``pos`` for items); ``nb[t] = (index, count)`` or
    ``(index, count, exclude_keys)`` (``negatives="threshold"``)."""
    batch = dict(batch)
    sizes = {"user": n_users, "item": n_items}
    anchor_key = {"user": "user", "item": "pos"}
    keys = jax.random.split(key, 2)
    for j, t in enumerate(config.aux):
        k_neg = min(config.n_aux_neg, sizes[t]) if config.shared_negatives else config.n_aux_neg
        s = sample_aux(keys[j], batch[anchor_key[t]], nb[t][0], nb[t][1], sizes[t], k_neg, config.shared_negatives,
                       nb[t][2] if len(nb[t]) > 2 else None)
        batch.update({f"{t}_aux_{name}": v for name, v in s.items()})
    return batch



# -------------------------------------------------------------------------------------------- the step


def _optimizers(config: MALConfig) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """Adam on Theta and Adam on Lambda (``meta_eps``: see the config)."""
    return optax.adam(config.lr), optax.adam(config.meta_lr, eps=config.meta_eps)


def make_update(config: MALConfig, graph=None) -> bl.AlternatingStep:
    """The MAL step of the algorithm box on a batch whose auxiliary samples are drawn, as
    :func:`jaxrec.bilevel.alternating`: ``update(state, batch, meta_batch) -> (state, {"inner", "outer"})``.

    ``batch`` holds ``user, pos, neg`` and the ``{t}_aux_*`` entries of :func:`make_losses`; ``meta_batch``
    ``user, pos, neg``. Without meta-learning (``mode="fixed"`` or no auxiliary task) Lambda stays and
    ``outer`` is the meta loss at the new Theta.
    """
    inner_loss, outer_loss = make_losses(config, graph)
    hypergrad = make_hypergrad(config, inner_loss, outer_loss) if config.meta else None
    inner_tx, outer_tx = _optimizers(config)
    return bl.alternating(inner_loss, hypergrad, inner_tx, outer_tx, outer_loss=outer_loss)


def init_state(key, config: MALConfig, n_users: int, n_items: int, dtype=None) -> bl.BilevelState:
    """``BilevelState(theta, lam, Adam states, step=0)``; every ``lam`` entry is
    ``logit(clip(weight_init, 0.01, 0.99))`` so that the initial weight ``sigmoid(lam)`` is ``weight_init``."""
    dtype = dtype or jnp.zeros(()).dtype
    w0 = float(np.clip(config.weight_init, 0.01, 0.99))
    lam0 = float(np.log(w0 / (1.0 - w0)))
    if config.base == "mf":
        theta = mf.init(key, n_users, n_items, config.dim, config.init_scale, dtype)
    else:
        theta = lightgcn.init_params(key, n_users, n_items, config.dim, config.init_scale, dtype)
    lam = {"user": jnp.full((n_users,), lam0, dtype), "item": jnp.full((n_items,), lam0, dtype)}
    inner_tx, outer_tx = _optimizers(config)
    return bl.BilevelState(theta, lam, inner_tx.init(theta), outer_tx.init(lam), jnp.zeros((), jnp.int32))


# ----------------------------------------------------------------------------------------- the method


def _epoch_arrays(rng: np.random.Generator, user, item, neg_csr, n_batches: int, batch: int, replace: bool):
    """Stacked ``{"user", "pos", "neg"}`` of shape ``[n_batches, batch]`` with one sampled negative each.

    ``replace=False``: a random permutation cut into full batches (the remainder is dropped, so every
    jitted step sees the same shape); ``replace=True``: indices drawn with replacement (the meta batches).
    """
    n = len(user)
    if replace:
        idx = rng.integers(0, n, size=n_batches * batch)
    else:
        idx = rng.permutation(n)[: n_batches * batch]
    u = user[idx].astype(np.int32)
    neg = np.asarray(sample_negatives(rng, u, neg_csr, n=1)).reshape(-1).astype(np.int32)
    shape = (n_batches, batch)
    return {
        "user": jnp.asarray(u.reshape(shape)),
        "pos": jnp.asarray(item[idx].astype(np.int32).reshape(shape)),
        "neg": jnp.asarray(neg.reshape(shape)),
    }


def epoch_batches(config: MALConfig, data: dict, seed: int, epoch: int) -> tuple[dict, dict]:
    """One epoch's ``(train batches, meta batches)``, stacked ``[n_batches, batch]``: a shuffle of the
    training interactions cut into full batches and as many meta batches drawn with replacement from
    ``D_meta`` (:func:`prepare`); randomness from ``default_rng((seed, epoch))`` only (a resumed run is identical)."""
    tr, va = data["train_part"], data["meta_part"]
    bs, mbs = min(config.batch_size, len(tr.user)), min(config.meta_batch_size, len(va.user))
    n_batches = len(tr.user) // bs
    rng = np.random.default_rng((seed, epoch))
    tb = _epoch_arrays(rng, tr.user, tr.item, data["train"], n_batches, bs, replace=False)
    mb = _epoch_arrays(rng, va.user, va.item, data["seen"], n_batches, mbs, replace=True)
    return tb, mb


def score_fn_for(config: MALConfig, theta, graph=None) -> Callable:
    """Jitted ``users -> [len(users), n_items]`` all-item scores of the trained model (for evaluate_topk)."""
    eu, ei = _representations_fn(config, graph)(theta)
    return jax.jit(lambda users: eu[users] @ ei.T)


def _device_neighbors(neighbors: dict, exclusions: dict) -> dict:
    """``{t: (index, count[, exclude_keys])}`` as device arrays (the ``nb`` of :func:`with_aux_samples`)."""
    return {t: (jnp.asarray(n.index), jnp.asarray(n.count))
            + ((jnp.asarray(exclusions[t]),) if t in exclusions else ()) for t, n in neighbors.items()}


def method(config: MALConfig, data: dict) -> Method:
    """MAL (or the plain base model when ``config.aux == ()``) on ``data`` (:func:`prepare`) as a
    :class:`jaxrec.method.Method`: Theta's data is ``train``, ``val`` is ``D_meta`` (the meta batches) and
    the validation set (ranking items not in train); test ranks items not in train or val. With
    ``meta_frac > 0``, ``D_meta`` is ``data["meta"]`` instead and validation also skips D_meta's items."""
    n_users, n_items = data["n_users"], data["n_items"]
    t0 = time.perf_counter()
    neighbors = build_neighbors(data["train"], config)
    exclusions = build_exclusions(data["train"], config)
    t_nbr = time.perf_counter() - t0
    tr = data["train_part"]
    graph = (lightgcn.build_graph(tr.user, tr.item, n_users, n_items, backend=config.graph_backend)
             if config.base == "lightgcn" else None)
    alt = make_update(config, graph)
    nb = _device_neighbors(neighbors, exclusions)
    eval_users = np.arange(n_users)

    def step(state, batch, key):
        train_batch, meta_batch = batch
        state, aux = alt.update(state, with_aux_samples(config, train_batch, nb, n_users, n_items, key), meta_batch)
        return state, {"loss": aux["inner"], "meta": aux["outer"]}

    def evaluate(state, part):
        exclude, target = (data["val_exclude"], data["val"]) if part == "val" else (data["seen"], data["test"])
        return evaluate_topk(score_fn_for(config, state.theta, graph), eval_users, exclude, target, ks=config.ks)

    def summary(state):
        lam = {k: np.asarray(jax.nn.sigmoid(v)) for k, v in state.lam.items()}
        return {"neighbor_time_s": t_nbr, "mean_neighbors": {t: float(np.mean(n.count)) for t, n in neighbors.items()},
                "graph_backend": config.graph_backend if graph is not None else None,
                "lam_summary": {k: {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
                                    "max": float(v.max())} for k, v in lam.items()}}

    return Method(init=lambda key: init_state(key, config, n_users, n_items),
                  batches=lambda seed, epoch: epoch_batches(config, data, seed, epoch),
                  step=step, evaluate=evaluate, summary=summary)


def artifacts(config: MALConfig, data: dict, state) -> dict:
    """The learned weights ``sigmoid(lambda)`` per user / item with the training degrees (``<run>.lam.npz``,
    read by the lambda-vs-degree plot); nothing for the plain base model."""
    if not config.aux:
        return {}
    lam = {k: np.asarray(jax.nn.sigmoid(v)) for k, v in state.lam.items()}
    return {"lam": {**lam, "user_degree": np.asarray(data["train"].getnnz(axis=1)),
                    "item_degree": np.asarray(data["train"].getnnz(axis=0))}}


def fixed_batches(config: MALConfig, data: dict, seed: int = 0) -> tuple[dict, dict]:
    """One train batch with its auxiliary samples and one meta batch of ``data`` (:func:`prepare`), drawn as
    an epoch draws them (``default_rng(seed)``; auxiliary samples from ``PRNGKey(seed + 1)``): the fixed inputs
    of timings and cross-checks. Returns ``(batch, meta_batch)`` of device arrays."""
    tr, va = data["train_part"], data["meta_part"]
    rng = np.random.default_rng(seed)
    bs, mbs = min(config.batch_size, len(tr.user)), min(config.meta_batch_size, len(va.user))
    tb = jax.tree.map(lambda x: x[0], _epoch_arrays(rng, tr.user, tr.item, data["train"], 1, bs, replace=False))
    mb = jax.tree.map(lambda x: x[0], _epoch_arrays(rng, va.user, va.item, data["seen"], 1, mbs, replace=True))
    nb = _device_neighbors(build_neighbors(data["train"], config), build_exclusions(data["train"], config))
    return with_aux_samples(config, tb, nb, data["n_users"], data["n_items"], jax.random.PRNGKey(seed + 1)), mb
