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
same over items (columns of ``R``). The issue writes the denominator without the positive term; that
variant is unbounded below (it rewards growing norms), so the default keeps the positive in the
denominator (standard InfoNCE); ``include_positive=False`` gives the literal form.

Inner (training) loss with one weight per user and per item, ``Lambda = {"user": [U], "item": [I]}``::

    L_in = mean_b [ L_pri(u,i,i') + sigmoid(lam_u) L_aux^U(u) + sigmoid(lam_i) L_aux^I(i) ]
           + l2/2 * mean_b (|p_u|^2 + |q_i|^2 + |q_i'|^2)

(users/items without neighbours contribute no auxiliary term). Outer (meta) loss: mean ``L_pri`` on a
batch of ``D_meta`` (the validation split). Bilevel problem::

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

Algorithm (one jitted step, scanned over an epoch): sample auxiliary positives/negatives on device;
Adam step on Theta with ``grad L_in``; hypergradient on (train batch, meta batch) at the new Theta;
Adam step on Lambda.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse as sp

from jaxrec.losses import bpr_loss
from jaxrec.models import lightgcn, mf
from jaxrec.neighbors import Neighbors, cosine_neighbors

__all__ = [
    "MALConfig",
    "info_nce",
    "bpr_terms",
    "sample_aux",
    "make_losses",
    "make_hypergrad",
    "make_epoch_fn",
    "build_neighbors",
    "init_state",
    "train",
    "score_fn_for",
    "make_step",
    "make_update",
    "fixed_batches",
    "time_hypergradients",
]


# ----------------------------------------------------------------------------------------------- config


@dataclasses.dataclass
class MALConfig:
    """Hyper-parameters of a MAL (or plain base-model) run.

    ``aux=()`` gives the plain base model (MF or LightGCN with BPR); ``mode`` then is irrelevant.
    """

    base: str = "mf"  # "mf" | "lightgcn"
    mode: str = "sog"  # "sog" | "ig" | "fixed"
    aux: tuple = ("user", "item")  # which auxiliary tasks: subset of ("user", "item")
    dim: int = 64
    n_layers: int = 3  # LightGCN layers
    init_scale: float = 0.1
    lr: float = 5e-3  # Adam on Theta
    l2: float = 1e-4  # L2 on the batch's layer-0 embeddings
    tau: float = 0.3  # cosine threshold of the neighbourhoods
    max_neighbors: int = 50  # M
    n_aux_neg: int = 128  # sampled negative candidates per InfoNCE term
    shared_negatives: bool = True  # one candidate set per batch (a matrix product) instead of per anchor
    temperature: float = 1.0
    include_positive: bool = True
    weight_init: float = 0.5  # initial auxiliary weight sigmoid(lambda_0) in [0, 1] (clipped to [0.01, 0.99])
    meta_lr: float = 1e-2  # Adam on Lambda
    # Adam epsilon for Lambda: per-entity hypergradients are tiny (~1e-10 for SOG on ml-100k: one lambda touches
    # a few examples of a mean loss, times alpha), far below Adam's default 1e-8, which would freeze Lambda
    meta_eps: float = 1e-20
    alpha: float = 1e-2  # SOG proxy step size
    unroll_steps: int = 1  # SOG: 1 = one_step, >1 = unrolled
    gamma: float = 1.0  # IG proximal strength (damping)
    cg_steps: int = 2  # IG: k CG steps
    batch_size: int = 5000
    meta_batch_size: int = 5000
    epochs: int = 100
    eval_every: int = 5
    patience: int = 5  # in evaluations, on validation recall@20
    ks: tuple = (5, 10, 15, 20)
    neighbor_block: int = 1024

    def __post_init__(self):
        if self.base not in ("mf", "lightgcn"):
            raise ValueError(f"base must be 'mf' or 'lightgcn', got {self.base!r}")
        if self.mode not in ("sog", "ig", "fixed"):
            raise ValueError(f"mode must be 'sog', 'ig' or 'fixed', got {self.mode!r}")
        self.aux = tuple(self.aux)
        bad = set(self.aux) - {"user", "item"}
        if bad:
            raise ValueError(f"aux must be a subset of ('user', 'item'), got {self.aux!r}")
        self.ks = tuple(self.ks)

    @property
    def meta(self) -> bool:
        """Whether Lambda is meta-learned (there are aux tasks and mode is sog/ig)."""
        return bool(self.aux) and self.mode in ("sog", "ig")

    @property
    def name(self) -> str:
        base = {"mf": "MF", "lightgcn": "LightGCN"}[self.base]
        if not self.aux:
            return base
        if self.aux == ("user", "item") and self.meta:
            return f"{base}-MAL" + ("" if self.mode == "sog" else "-IG")
        tag = "+".join({"user": "U", "item": "I"}[a] for a in self.aux)
        return f"{base}+{tag}" + ("+M" if self.meta else "")


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
    from jaxrec import bilevel

    if config.mode == "sog":
        if config.unroll_steps == 1:
            return bilevel.one_step(inner_loss, outer_loss, lr=config.alpha)
        return bilevel.unrolled(inner_loss, outer_loss, steps=config.unroll_steps, lr=config.alpha)
    if config.mode == "ig":
        return bilevel.implicit(
            inner_loss, outer_loss, solver="cg", maxiter=config.cg_steps, tol=0.0, damping=config.gamma
        )
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


def sample_aux(key, anchors, nbr_index, nbr_count, n_entities: int, n_neg: int, shared: bool = True) -> dict[str, jax.Array]:
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
        slot_of = jnp.full((n_entities + 1,), n_neg, jnp.int32).at[neg].set(jnp.arange(n_neg, dtype=jnp.int32))
        nbrs = nbr_index[anchors]  # [B, M], -1 padding -> looks up the dummy last entry
        hit = slot_of[jnp.where(nbrs < 0, n_entities, nbrs)]  # [B, M] slot in neg or n_neg (= none)
        rows = jnp.broadcast_to(jnp.arange(anchors.shape[0])[:, None], hit.shape)
        mask = jnp.ones(anchors.shape + (n_neg + 1,), bool).at[rows, hit].set(False)[:, :n_neg]
        mask = mask & (neg[None, :] != anchors[:, None])
    else:
        neg = jax.random.randint(kn, anchors.shape + (n_neg,), 0, n_entities, dtype=jnp.int32)
        in_nbr = jnp.any(neg[:, :, None] == nbr_index[anchors][:, None, :], axis=-1)
        mask = (neg != anchors[:, None]) & ~in_nbr
    return {"pos": pos, "neg": neg, "mask": mask, "has": has}


# ------------------------------------------------------------------------------------------ training


def init_state(key, config: MALConfig, n_users: int, n_items: int, dtype=None) -> dict:
    """``{"theta", "lam", "opt_theta", "opt_lam", "step"}``; every ``lam`` entry is
    ``logit(clip(weight_init, 0.01, 0.99))`` so that the initial weight ``sigmoid(lam)`` is ``weight_init``."""
    dtype = dtype or jnp.zeros(()).dtype
    w0 = float(np.clip(config.weight_init, 0.01, 0.99))
    lam0 = float(np.log(w0 / (1.0 - w0)))
    if config.base == "mf":
        theta = mf.init(key, n_users, n_items, config.dim, config.init_scale, dtype)
    else:
        theta = lightgcn.init_params(key, n_users, n_items, config.dim, config.init_scale, dtype)
    lam = {"user": jnp.full((n_users,), lam0, dtype), "item": jnp.full((n_items,), lam0, dtype)}
    return {
        "theta": theta,
        "lam": lam,
        "opt_theta": optax.adam(config.lr).init(theta),
        "opt_lam": optax.adam(config.meta_lr, eps=config.meta_eps).init(lam),
        "step": jnp.zeros((), jnp.int32),
    }


def make_update(config: MALConfig, graph=None):
    """The MAL update on a batch whose auxiliary samples are drawn: ``update(state, batch, meta_batch) ->
    (state, aux)`` (pure; jit it).

    ``batch`` holds ``user, pos, neg`` and the ``{t}_aux_*`` entries of :func:`make_losses`; ``meta_batch``
    ``user, pos, neg``. An Adam step on Theta with ``grad L_in``, then, when Lambda is meta-learned, an Adam
    step on Lambda with the hypergradient of the meta loss at the new Theta (the algorithm box).
    """
    inner_loss, outer_loss = make_losses(config, graph)
    hypergrad = make_hypergrad(config, inner_loss, outer_loss) if config.meta else None
    opt_theta = optax.adam(config.lr)
    opt_lam = optax.adam(config.meta_lr, eps=config.meta_eps)

    def update(state, batch, meta_batch):
        theta, lam = state["theta"], state["lam"]
        loss, g = jax.value_and_grad(inner_loss)(theta, lam, batch)
        upd, opt_theta_state = opt_theta.update(g, state["opt_theta"], theta)
        theta = optax.apply_updates(theta, upd)
        new = dict(state, theta=theta, opt_theta=opt_theta_state, step=state["step"] + 1)
        aux = {"inner": loss}
        if hypergrad is not None:
            meta_val, d_lam = hypergrad(theta, lam, batch, meta_batch)
            upd, opt_lam_state = opt_lam.update(d_lam, state["opt_lam"], lam)
            new["lam"] = optax.apply_updates(lam, upd)
            new["opt_lam"] = opt_lam_state
            aux["meta"] = meta_val
        else:
            aux["meta"] = outer_loss(theta, lam, meta_batch)
        return new, aux

    return update


def make_step(config: MALConfig, n_users: int, n_items: int, neighbors: dict, graph=None):
    """One MAL step ``step(state, train_batch, meta_batch, key) -> (state, aux)`` (pure; jit it).

    ``train_batch``/``meta_batch`` hold ``user, pos, neg``. The step samples the auxiliary batch on device
    and applies :func:`make_update`.
    """
    update = make_update(config, graph)
    nb = {t: (jnp.asarray(n.index), jnp.asarray(n.count)) for t, n in neighbors.items()}

    def step(state, train_batch, meta_batch, key):
        return update(state, _with_aux_samples(config, train_batch, nb, n_users, n_items, key), meta_batch)

    return step


def _with_aux_samples(config: MALConfig, batch: dict, nb: dict, n_users: int, n_items: int, key) -> dict:
    """``batch`` plus the ``{t}_aux_*`` entries of :func:`make_losses`, drawn by :func:`sample_aux` for each
    auxiliary task ``t`` (anchors: ``user`` for users, ``pos`` for items); ``nb[t] = (index, count)``."""
    batch = dict(batch)
    sizes = {"user": n_users, "item": n_items}
    anchor_key = {"user": "user", "item": "pos"}
    keys = jax.random.split(key, 2)
    for j, t in enumerate(config.aux):
        k_neg = min(config.n_aux_neg, sizes[t]) if config.shared_negatives else config.n_aux_neg
        s = sample_aux(keys[j], batch[anchor_key[t]], nb[t][0], nb[t][1], sizes[t], k_neg, config.shared_negatives)
        batch.update({f"{t}_aux_{name}": v for name, v in s.items()})
    return batch


def make_epoch_fn(step: Callable) -> Callable:
    """Jitted ``epoch(state, train_batches, meta_batches, key)`` scanning ``step`` over stacked batches
    (leading axis = steps); returns the new state and the per-step aux (``inner``, ``meta``)."""

    @jax.jit
    def epoch(state, train_batches, meta_batches, key):
        n = jax.tree_util.tree_leaves(train_batches)[0].shape[0]
        keys = jax.random.split(key, n)

        def body(s, xs):
            tb, mb, k = xs
            return step(s, tb, mb, k)

        return jax.lax.scan(body, state, (train_batches, meta_batches, keys))

    return epoch


def _epoch_arrays(rng: np.random.Generator, user, item, neg_csr, n_batches: int, batch: int, replace: bool):
    """Stacked ``{"user", "pos", "neg"}`` of shape ``[n_batches, batch]`` with one sampled negative each.

    ``replace=False``: a random permutation cut into full batches (the remainder is dropped, so every
    jitted step sees the same shape); ``replace=True``: indices drawn with replacement (the meta batches).
    """
    from jaxrec.data import sample_negatives

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


def score_fn_for(config: MALConfig, theta, graph=None) -> Callable:
    """Jitted ``users -> [len(users), n_items]`` all-item scores of the trained model (for evaluate_topk)."""
    eu, ei = _representations_fn(config, graph)(theta)
    return jax.jit(lambda users: eu[users] @ ei.T)


def train(config: MALConfig, split, seed: int = 0, *, log: Callable[[str], None] | None = None,
          eval_test: bool = True, graph_backend: str = "segment") -> dict[str, Any]:
    """Train MAL (or the plain base model when ``config.aux == ()``) on ``split = (train, val, test)``.

    ``train`` gives Theta's data, ``val`` is ``D_meta`` (the meta batches) and the validation set for early
    stopping (recall@20, every ``eval_every`` epochs, ``patience`` evaluations). Test metrics are computed
    once, for the Theta with the best validation recall@20, ranking all items not in the user's training
    or validation set. Returns a dict with ``val``/``test`` metric dicts, ``best_epoch``, ``history``,
    ``lam`` (numpy sigmoid weights per user/item), ``user_degree``/``item_degree`` and timings.

    ``graph_backend`` picks LightGCN's propagation (:data:`jaxrec.models.lightgcn.BACKENDS`): the same model
    and maths, float32 sums in another order; ``"dense"`` is faster on small dense sets such as ml-100k.
    """
    from jaxrec.data import to_csr
    from jaxrec.metrics import evaluate_topk

    tr, va, te = split[0], split[1], split[2]
    n_users, n_items = int(tr.n_users), int(tr.n_items)
    train_csr = to_csr(tr)
    val_csr = to_csr(va)
    test_csr = to_csr(te)
    seen_csr = ((train_csr + val_csr) > 0).astype(np.float32).tocsr()

    t0 = time.perf_counter()
    neighbors = build_neighbors(train_csr, config)
    t_nbr = time.perf_counter() - t0
    graph = (lightgcn.build_graph(tr.user, tr.item, n_users, n_items, backend=graph_backend)
             if config.base == "lightgcn" else None)

    state = init_state(jax.random.PRNGKey(seed), config, n_users, n_items)
    step = make_step(config, n_users, n_items, neighbors, graph)
    epoch_jit = make_epoch_fn(step)

    n_tr, n_va = len(tr.user), len(va.user)
    bs = min(config.batch_size, n_tr)
    mbs = min(config.meta_batch_size, n_va)
    n_batches = n_tr // bs
    eval_users = np.arange(n_users)
    timer = {"train_s": 0.0, "epochs": 0}
    base_key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)

    def epoch_fn(st, epoch):
        # randomness derived from (seed, epoch) only, so a resumed run is identical
        rng = np.random.default_rng((seed, epoch))
        tb = _epoch_arrays(rng, tr.user, tr.item, train_csr, n_batches, bs, replace=False)
        mb = _epoch_arrays(rng, va.user, va.item, seen_csr, n_batches, mbs, replace=True)
        t1 = time.perf_counter()
        st, aux = epoch_jit(st, tb, mb, jax.random.fold_in(base_key, epoch))
        jax.block_until_ready(st["theta"])
        timer["train_s"] += time.perf_counter() - t1
        timer["epochs"] += 1
        return st, {"loss": jnp.mean(aux["inner"]), "meta": jnp.mean(aux["meta"])}

    def evaluate(theta, exclude, target):
        return evaluate_topk(score_fn_for(config, theta, graph), eval_users, exclude, target, ks=config.ks)

    from jaxrec.train import fit

    best_state, history = fit(
        state, epoch_fn, lambda st: evaluate(st["theta"], train_csr, val_csr),
        epochs=config.epochs, patience=config.patience, metric="recall@20", eval_every=config.eval_every,
        log=log, log_every=config.eval_every, desc=config.name,
    )
    out = {
        "config": dataclasses.asdict(config),
        "name": config.name,
        "best_epoch": history.best_epoch,
        "epochs_run": timer["epochs"],
        "history": [{"epoch": r["epoch"], **r["train"], **{f"val_{k}": v for k, v in (r["val"] or {}).items()
                                                          if k in ("recall@20", "ndcg@20")}}
                    for r in history],
        "val": history.best_metrics,
        "train_time_s": timer["train_s"],
        "time_per_epoch_s": timer["train_s"] / max(timer["epochs"], 1),
        "neighbor_time_s": t_nbr,
        "graph_backend": graph_backend if graph is not None else None,
        "n_neighbors": {t: float(np.mean(n.count)) for t, n in neighbors.items()},
        "lam": {k: np.asarray(jax.nn.sigmoid(v)) for k, v in best_state["lam"].items()},
        "user_degree": np.asarray(train_csr.getnnz(axis=1)),
        "item_degree": np.asarray(train_csr.getnnz(axis=0)),
        "theta": best_state["theta"],
    }
    if eval_test:
        out["test"] = evaluate(best_state["theta"], seen_csr, test_csr)
    return out


def fixed_batches(config: MALConfig, split, seed: int = 0) -> tuple[dict, dict]:
    """One train batch with its auxiliary samples and one meta batch, drawn as :func:`train` draws them
    (``config.batch_size`` / ``config.meta_batch_size`` interactions of ``split.train`` / ``split.val``): the
    fixed inputs of timings and cross-checks. Returns ``(batch, meta_batch)`` of device arrays."""
    from jaxrec.data import to_csr

    tr, va = split[0], split[1]
    n_users, n_items = int(tr.n_users), int(tr.n_items)
    train_csr = to_csr(tr)
    seen_csr = ((train_csr + to_csr(va)) > 0).astype(np.float32).tocsr()
    rng = np.random.default_rng(seed)
    bs, mbs = min(config.batch_size, len(tr.user)), min(config.meta_batch_size, len(va.user))
    tb = jax.tree.map(lambda x: x[0], _epoch_arrays(rng, tr.user, tr.item, train_csr, 1, bs, replace=False))
    mb = jax.tree.map(lambda x: x[0], _epoch_arrays(rng, va.user, va.item, seen_csr, 1, mbs, replace=True))
    nb = {t: (jnp.asarray(n.index), jnp.asarray(n.count)) for t, n in build_neighbors(train_csr, config).items()}
    return _with_aux_samples(config, tb, nb, n_users, n_items, jax.random.PRNGKey(seed + 1)), mb


def time_hypergradients(config: MALConfig, split, *, unroll=(1, 2, 3, 4, 5), cg=(1, 2, 3, 5), repeats: int = 20,
                        seed: int = 0, graph_backend: str = "segment") -> dict[str, Any]:
    """Wall time of one Lambda update per hypergradient method vs one plain Theta step.

    All functions are jitted and measured in the same process on the same fixed (train, meta) batch of
    ``config.batch_size`` / ``config.meta_batch_size`` interactions of ``split.train`` / ``split.val``
    (auxiliary samples drawn once). The Theta step is ``grad L_in`` + Adam; a Lambda update is the
    hypergradient + Adam on Lambda. Methods: ``SOG-s`` (``s`` unrolled SGD steps, ``s = 1`` is
    ``bilevel.one_step``) and ``IG k=j`` (``j`` CG steps). Returns ``{"theta_step_s", "methods": {name:
    seconds}, "methods_median", "theta_step_median_s", "wall_s"}``: the minimum over ``repeats`` calls (robust
    to other processes on a shared machine) and the median; calls are interleaved round robin.
    """
    t_start = time.perf_counter()
    tr = split[0]
    n_users, n_items = int(tr.n_users), int(tr.n_items)
    batch, mb = fixed_batches(config, split, seed)  # one auxiliary sample, shared by every method
    graph = (lightgcn.build_graph(tr.user, tr.item, n_users, n_items, backend=graph_backend)
             if config.base == "lightgcn" else None)
    state = init_state(jax.random.PRNGKey(seed), config, n_users, n_items)
    inner_loss, outer_loss = make_losses(config, graph)
    opt_t, opt_l = optax.adam(config.lr), optax.adam(config.meta_lr, eps=config.meta_eps)

    # everything is passed as an argument (closed-over arrays would be constant-folded by XLA)
    @jax.jit
    def theta_step(theta, lam, opt_state, batch):
        g = jax.grad(inner_loss)(theta, lam, batch)
        upd, opt_state = opt_t.update(g, opt_state, theta)
        return optax.apply_updates(theta, upd), opt_state

    def lam_step_fn(cfg):
        hg = make_hypergrad(cfg, inner_loss, outer_loss)

        @jax.jit
        def lam_step(theta, lam, opt_state, batch, meta_batch):
            _, d = hg(theta, lam, batch, meta_batch)
            upd, opt_state = opt_l.update(d, opt_state, lam)
            return optax.apply_updates(lam, upd), opt_state

        return lam_step

    th, lm = state["theta"], state["lam"]
    calls = {"theta": (theta_step, (th, lm, state["opt_theta"], batch))}
    for s_ in unroll:
        fn = lam_step_fn(dataclasses.replace(config, mode="sog", unroll_steps=int(s_)))
        calls[f"SOG-{s_}"] = (fn, (th, lm, state["opt_lam"], batch, mb))
    for k in cg:
        fn = lam_step_fn(dataclasses.replace(config, mode="ig", cg_steps=int(k)))
        calls[f"IG k={k}"] = (fn, (th, lm, state["opt_lam"], batch, mb))
    for fn, args in calls.values():
        jax.block_until_ready(fn(*args))  # compile + warm up
    # round robin: every method is timed once per round, so load changes on a shared machine hit all alike
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (fn, args) in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
    out = {"theta_step_s": float(np.min(times["theta"])), "theta_step_median_s": float(np.median(times["theta"])),
           "methods": {n: float(np.min(v)) for n, v in times.items() if n != "theta"},
           "methods_median": {n: float(np.median(v)) for n, v in times.items() if n != "theta"}}
    out["wall_s"] = time.perf_counter() - t_start
    return out
