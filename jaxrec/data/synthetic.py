"""Offline synthetic datasets (the embedded default of every experiment). Deterministic given ``seed``.

* :func:`implicit_clusters` -- implicit feedback from planted user/item clusters with a popularity skew.
* :func:`sequences` -- item sequences from a cluster Markov chain with a learnable "successor" structure.
* :func:`ratings_with_features` -- explicit ratings 1..5 driven by categorical user and item features.
* :func:`ctr_rows` -- re-export of ``jaxrec.data.ctr.synthetic_interest_groups`` (Meta-Wrapper's set).
"""
from __future__ import annotations

import numpy as np

from .errors import data_error
from .types import Interactions, Sequences

__all__ = ["implicit_clusters", "sequences", "ratings_with_features", "ctr_rows"]


def _gumbel_topk_rows(logw: np.ndarray, k: np.ndarray, rng: np.random.Generator, chunk: int = 256):
    """For each row r draw ``k[r]`` distinct columns without replacement with probabilities proportional to
    ``exp(logw[r])`` (Gumbel top-k = sequential Plackett-Luce draws). Returns (rows, cols, draw_index)."""
    rows, cols, order = [], [], []
    n_rows, n_cols = logw.shape
    for s in range(0, n_rows, chunk):
        block = logw[s: s + chunk] + rng.gumbel(size=(min(chunk, n_rows - s), n_cols))
        ranked = np.argsort(-block, axis=1, kind="stable")
        kk = k[s: s + chunk]
        mask = np.arange(n_cols)[None, :] < kk[:, None]
        r, c = np.nonzero(mask)
        rows.append(r + s)
        cols.append(ranked[r, c])
        order.append(c)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(order)


def _balanced_clusters(n: int, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % n_clusters).astype(np.int32)


def implicit_clusters(n_users: int = 1000, n_items: int = 1500, n_clusters: int = 10, mean_per_user: float = 50.0,
                      min_per_user: int = 10, in_cluster: float = 0.8, popularity: float = 0.8,
                      seed: int = 0) -> Interactions:
    """Implicit feedback with planted clusters and a popularity skew (default ~1000 x 1500, ~50k pairs).

    Users and items get balanced random clusters; item i has popularity ``w_i = rank_i^(-popularity)``
    (Zipf-like, random ranks). User u (cluster c) draws ``n_u ~ max(min_per_user, Gamma(2, mean/2))``
    distinct items without replacement with probability proportional to ``w_i * a_c^[cluster(i) = c]``,
    where ``a_c`` makes the expected share of in-cluster draws equal ``in_cluster`` for the first draw.
    ``timestamp`` is the draw order. ``user_features['cluster']`` / ``item_features['cluster']`` hold the
    planted clusters, ``item_features['popularity']`` the weights. A cluster model (MF) therefore beats
    most-popular, which only sees ``w``.
    """
    if not (0 < in_cluster < 1) or n_clusters < 1 or min_per_user < 1:
        raise data_error(f"need 0 < in_cluster < 1, n_clusters >= 1, min_per_user >= 1 (got {in_cluster}, "
                         f"{n_clusters}, {min_per_user})")
    rng = np.random.default_rng(seed)
    u_cl = _balanced_clusters(n_users, n_clusters, rng)
    i_cl = _balanced_clusters(n_items, n_clusters, rng)
    w = (rng.permutation(n_items) + 1.0) ** (-popularity)
    w /= w.sum()
    mass = np.bincount(i_cl, weights=w, minlength=n_clusters)
    a = in_cluster / (1 - in_cluster) * (1 - mass) / np.maximum(mass, 1e-12)
    a = np.where(mass >= 1 - 1e-12, 1.0, a)
    logw = np.log(w)[None, :] + np.where(i_cl[None, :] == u_cl[:, None], np.log(a)[u_cl][:, None], 0.0)
    n_u = np.maximum(min_per_user, np.round(rng.gamma(2.0, mean_per_user / 2.0, size=n_users))).astype(np.int64)
    n_u = np.minimum(n_u, n_items - 1)
    rows, cols, order = _gumbel_topk_rows(logw, n_u, rng)
    return Interactions(user=rows, item=cols, n_users=n_users, n_items=n_items, timestamp=order,
                        user_features={"cluster": u_cl}, item_features={"cluster": i_cl, "popularity": w.astype(np.float32)},
                        name="synthetic")


def sequences(n_users: int = 1000, n_items: int = 500, n_clusters: int = 10, mean_len: float = 20.0,
              min_len: int = 5, max_len: int = 50, p_follow: float = 0.6, p_switch: float = 0.05,
              popularity: float = 0.8, seed: int = 0) -> Sequences:
    """Sequences from a cluster Markov chain (items ``1..n_items``; 0 stays padding).

    Items get balanced clusters; inside each cluster a random cycle defines ``succ(i)``. A user starts in a
    random cluster at a popularity-weighted item and at each step goes to ``succ(current)`` with probability
    ``p_follow``, jumps to a popularity-weighted item of a uniformly random cluster with probability
    ``p_switch``, and otherwise draws a popularity-weighted item of the current cluster. Lengths are
    ``clip(min_len + Poisson(mean_len - min_len), min_len, max_len)``. The successor rule makes the next
    item predictable (a sequential model can reach HR@10 near ``p_follow``); popularity alone cannot.
    """
    if not (0 <= p_follow and 0 <= p_switch and p_follow + p_switch <= 1) or min_len < 1 or max_len < min_len:
        raise data_error("need p_follow, p_switch >= 0 with p_follow + p_switch <= 1 and 1 <= min_len <= max_len")
    rng = np.random.default_rng(seed)
    i_cl = _balanced_clusters(n_items, n_clusters, rng)
    w = (rng.permutation(n_items) + 1.0) ** (-popularity)
    succ = np.empty(n_items, np.int64)
    members, cdf = [], []
    for c in range(n_clusters):
        m = rng.permutation(np.flatnonzero(i_cl == c))
        succ[m] = np.roll(m, -1)
        members.append(m)
        cdf.append(np.cumsum(w[m]) / w[m].sum())
    sizes = np.array([len(m) for m in members])
    if (sizes == 0).any():
        raise data_error(f"n_items={n_items} must be >= n_clusters={n_clusters}")
    width = sizes.max()
    mem = np.zeros((n_clusters, width), np.int64)
    cdfs = np.ones((n_clusters, width))
    for c in range(n_clusters):
        mem[c, : sizes[c]] = members[c]
        cdfs[c, : sizes[c]] = cdf[c]

    def draw(clusters):
        u = rng.random(len(clusters))
        idx = (cdfs[clusters] < u[:, None]).sum(axis=1)
        return mem[clusters, np.minimum(idx, sizes[clusters] - 1)]

    lengths = np.clip(min_len + rng.poisson(max(mean_len - min_len, 0), size=n_users), min_len, max_len)
    T = int(lengths.max())
    cl = rng.integers(0, n_clusters, size=n_users)
    cur = draw(cl)
    out = np.zeros((n_users, T), np.int64)
    out[:, 0] = cur
    for t in range(1, T):
        r = rng.random(n_users)
        jump = (r >= p_follow) & (r < p_follow + p_switch)
        cl = np.where(jump, rng.integers(0, n_clusters, size=n_users), cl)
        nxt = np.where(r < p_follow, succ[cur], draw(cl))
        cur = nxt
        cl = i_cl[cur]
        out[:, t] = cur
    seqs = [out[u, : lengths[u]] + 1 for u in range(n_users)]
    return Sequences(seqs=seqs, n_items=n_items, name="synthetic-seq")


def ratings_with_features(n_users: int = 600, n_items: int = 400, user_card=(2, 7, 21), item_card=(6, 25),
                          dim: int = 4, min_ratings: int = 13, max_ratings: int = 60, noise: float = 0.3,
                          seed: int = 0) -> Interactions:
    """Explicit ratings 1..5 driven by categorical features (for cold-start meta-learning).

    User features ``gender, age, occupation`` and item features ``rate, genre`` (cardinalities
    ``user_card`` / ``item_card``) are drawn uniformly; each feature value has a random vector in R^dim
    and bias; a user's (item's) vector is the sum over its features plus a small individual part. The
    score ``s_ui = <x_u, y_i> + b_u + b_i + noise * eps`` is cut at fixed quantiles of all scores into
    1..5 with shares (6%, 11%, 27%, 35%, 21%) (MovieLens-like). Each user rates a uniform number in
    ``[min_ratings, max_ratings]`` of distinct uniformly chosen items (``timestamp`` = rating order).
    """
    if len(user_card) != 3 or len(item_card) != 2:
        raise data_error("user_card needs 3 cardinalities (gender, age, occupation), item_card 2 (rate, genre)")
    if not (1 <= min_ratings <= max_ratings < n_items):
        raise data_error(f"need 1 <= min_ratings <= max_ratings < n_items, got {min_ratings}, {max_ratings}, {n_items}")
    rng = np.random.default_rng(seed)
    u_names, i_names = ("gender", "age", "occupation"), ("rate", "genre")
    ufeat = {f: rng.integers(0, c, size=n_users).astype(np.int32) for f, c in zip(u_names, user_card)}
    ifeat = {f: rng.integers(0, c, size=n_items).astype(np.int32) for f, c in zip(i_names, item_card)}
    scale = 1.0 / np.sqrt(dim)
    x = 0.3 * rng.normal(size=(n_users, dim)) * scale
    y = 0.3 * rng.normal(size=(n_items, dim)) * scale
    bu = 0.2 * rng.normal(size=n_users)
    bi = 0.2 * rng.normal(size=n_items)
    for f, c in zip(u_names, user_card):
        x += rng.normal(size=(c, dim))[ufeat[f]] * scale
        bu += 0.5 * rng.normal(size=c)[ufeat[f]]
    for f, c in zip(i_names, item_card):
        y += rng.normal(size=(c, dim))[ifeat[f]] * scale
        bi += 0.5 * rng.normal(size=c)[ifeat[f]]
    n_u = rng.integers(min_ratings, max_ratings + 1, size=n_users)
    rows, cols, order = _gumbel_topk_rows(np.zeros((n_users, n_items)), n_u, rng)
    s = np.einsum("nd,nd->n", x[rows], y[cols]) + bu[rows] + bi[cols] + noise * rng.normal(size=len(rows))
    cuts = np.quantile(s, np.cumsum([0.06, 0.11, 0.27, 0.35]))
    rating = (np.searchsorted(cuts, s) + 1).astype(np.float32)
    vocab = {f: [f"{f}_{k}" for k in range(c)] for f, c in zip(u_names + i_names, tuple(user_card) + tuple(item_card))}
    return Interactions(user=rows, item=cols, n_users=n_users, n_items=n_items, rating=rating, timestamp=order,
                        user_features=ufeat, item_features=ifeat, vocab=vocab, name="synthetic-ratings")


def ctr_rows(*args, **kwargs):
    """Meta-Wrapper's synthetic interest-group CTR set: forwards to
    ``jaxrec.data.ctr.synthetic_interest_groups(*args, **kwargs)`` (owned by the Meta-Wrapper module)."""
    try:
        from .ctr import synthetic_interest_groups
    except ImportError as exc:
        raise ImportError("jaxrec.data.synthetic.ctr_rows needs jaxrec.data.ctr.synthetic_interest_groups, "
                          "which is not available in this installation") from exc
    return synthetic_interest_groups(*args, **kwargs)
