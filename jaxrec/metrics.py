"""Evaluation metrics: full-ranking top-K metrics, AUC / RelaImpr, rating errors and rating nDCG.

Full-ranking top-K metrics
--------------------------
For a user ``u`` with target set ``T_u`` (held-out items) and exclusion set ``E_u`` (items already seen,
e.g. training items, and validation items when testing), every item of the catalogue is scored, the items
of ``E_u`` get score ``-inf``, and the top ``K`` items ``R_u^K`` are taken with ``lax.top_k``:

* ``recall@K    = |R_u^K ∩ T_u| / |T_u|``
* ``precision@K = |R_u^K ∩ T_u| / K``                   (always divides by ``K``, even if ``K > n_items``)
* ``hit@K       = 1[|R_u^K ∩ T_u| > 0]``                (HR@K; with one target per user it is recall@K)
* ``ndcg@K      = DCG@K / IDCG@K`` with ``DCG@K = Σ_{r=1..K} 1[R_u^K[r] ∈ T_u] / log2(r + 1)`` and
  ``IDCG@K = Σ_{r=1..min(K, |T_u|)} 1 / log2(r + 1)``
* ``mrr@K       = 1 / r*`` where ``r*`` is the rank of the first hit within the top ``K`` (0 if none)

Each is averaged over users with a non-empty target set (users without targets are dropped by
:func:`evaluate_topk`; :func:`topk_metrics` returns 0 for them and a ``valid`` mask).

Conventions (tested in ``tests/test_metrics.py``):

* **Ties** are broken deterministically by the lower item index first (``lax.top_k`` guarantees this);
  :func:`rank_of_target` uses the same rule, so both agree with a stable ``argsort(-scores)``.
* **K larger than the catalogue** is clipped to ``n_items`` for the ranking; precision still divides by
  the requested ``K``.
* **Excluded items never count as hits**, even when a target is also excluded or when so many items are
  excluded that some ``-inf`` items reach the top ``K``. A user whose every item is excluded gets finite
  metrics (all zero).
* Exclusions and targets travel to the device as padded ``int32`` index arrays (``-1`` = padding), one
  user block at a time; blocks are padded to a fixed ``block_size`` and the padded widths are rounded up to
  powers of two, so one evaluation compiles once.

Sequential recommendation (one target per user, no exclusion) uses the same :func:`evaluate_topk`
with ``targets`` given as an ``int[n_users]`` array; read ``hit@K`` (= HR@K) and ``ndcg@K``.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

__all__ = [
    "METRIC_NAMES",
    "topk_metrics",
    "evaluate_topk",
    "per_positive_metrics",
    "rank_of_target",
    "ranks_to_metrics",
    "pad_rows",
    "auc",
    "rela_impr",
    "mse",
    "rmse",
    "rating_ndcg",
]

METRIC_NAMES = ("recall", "precision", "hit", "ndcg", "mrr")


def _float_dtype(x) -> jnp.dtype:
    dt = jnp.result_type(x)
    return dt if jnp.issubdtype(dt, jnp.floating) else jnp.result_type(float)


def _discounts(n: int, dtype) -> jnp.ndarray:
    """``1 / log2(r + 1)`` for ranks ``r = 1..n``."""
    return 1.0 / jnp.log2(jnp.arange(2, n + 2, dtype=dtype))


def _index_mask(idx: jnp.ndarray, n_items: int) -> jnp.ndarray:
    """Boolean ``[B, n_items]`` mask with ``True`` at the non-negative entries of the padded ``idx[B, W]``."""
    b = idx.shape[0]
    mask = jnp.zeros((b, n_items), dtype=bool)
    if idx.shape[1] == 0:
        return mask
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], idx.shape)
    cols = jnp.where(idx >= 0, idx, n_items)  # out of range -> dropped
    return mask.at[rows, cols].set(True, mode="drop")


@functools.partial(jax.jit, static_argnames=("ks",))
def topk_metrics(scores: jnp.ndarray, exclude: jnp.ndarray | None, targets: jnp.ndarray,
                 ks: Sequence[int] = (5, 10, 15, 20)) -> dict[str, jnp.ndarray]:
    """Per-user full-ranking metrics for one block of users (jitted; ``ks`` is static).

    Args:
      scores: ``float[B, n_items]``, higher is better.
      exclude: ``int[B, E]`` item indices to remove from the ranking (score ``-inf``, never a hit),
        ``-1``-padded; or ``None``.
      targets: ``int[B, T]`` held-out item indices, ``-1``-padded (duplicates are counted once).
      ks: cut-offs; each may exceed ``n_items`` (the ranking is clipped, precision divides by ``K``).

    Returns:
      dict with ``"<metric>@<K>"`` -> ``float[B]`` for metric in ``recall, precision, hit, ndcg, mrr``
      (definitions in the module docstring), ``"n_targets"`` -> ``int[B]`` (``|T_u|``) and
      ``"valid"`` -> ``bool[B]`` (``|T_u| > 0``). Rows with no target get 0 everywhere.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive cut-offs, got {ks}")
    b, n_items = scores.shape
    fdt = _float_dtype(scores)
    scores = scores.astype(fdt)
    kmax = min(max(ks), n_items)

    target_mask = _index_mask(targets, n_items)
    n_t = target_mask.sum(axis=1)
    if exclude is not None:
        excl_mask = _index_mask(exclude, n_items)
        scores = jnp.where(excl_mask, -jnp.inf, scores)
    _, top = jax.lax.top_k(scores, kmax)  # ties: lower index first
    hits = jnp.take_along_axis(target_mask, top, axis=1)
    if exclude is not None:
        hits = hits & ~jnp.take_along_axis(excl_mask, top, axis=1)
    hits_f = hits.astype(fdt)

    disc = _discounts(kmax, fdt)
    dcg_cum = jnp.cumsum(hits_f * disc, axis=1)              # [B, kmax]
    hit_cum = jnp.cumsum(hits_f, axis=1)                     # [B, kmax]
    idcg_table = jnp.concatenate([jnp.zeros((1,), fdt), jnp.cumsum(disc)])  # IDCG for 0..kmax targets
    # rank (1-based) of first hit, or kmax+1 if none
    first = jnp.where(hits.any(axis=1), jnp.argmax(hits, axis=1) + 1, kmax + 1)

    valid = n_t > 0
    n_t_f = jnp.maximum(n_t, 1).astype(fdt)
    out: dict[str, jnp.ndarray] = {}
    for k in ks:
        kc = min(k, n_items)
        nh = hit_cum[:, kc - 1]
        idcg = idcg_table[jnp.minimum(n_t, kc)]
        out[f"recall@{k}"] = jnp.where(valid, nh / n_t_f, 0.0)
        out[f"precision@{k}"] = nh / k
        out[f"hit@{k}"] = (nh > 0).astype(fdt)
        out[f"ndcg@{k}"] = jnp.where(valid, dcg_cum[:, kc - 1] / jnp.where(valid, idcg, 1.0), 0.0)
        out[f"mrr@{k}"] = jnp.where(first <= kc, 1.0 / first.astype(fdt), 0.0)
    out["n_targets"] = n_t
    out["valid"] = valid
    return out


@functools.partial(jax.jit, static_argnames=("ks",))
def _block_sums(scores, exclude, targets, row_valid, ks):
    """Sums over the valid rows of one block of :func:`topk_metrics` (stays on device)."""
    m = topk_metrics(scores, exclude, targets, ks)
    w = (row_valid & m["valid"]).astype(_float_dtype(scores))
    sums = {k: jnp.sum(v * w) for k, v in m.items() if k not in ("n_targets", "valid")}
    sums["n_users"] = jnp.sum(w)
    return sums


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def pad_rows(csr: sp.csr_matrix, rows: np.ndarray, width: int | None = None) -> np.ndarray:
    """Column indices of the given CSR rows as a ``-1``-padded ``int32[len(rows), width]`` array.

    ``width`` defaults to the longest selected row; a row longer than ``width`` raises ``ValueError``.
    Vectorised (no per-row Python loop).
    """
    rows = np.asarray(rows, dtype=np.int64)
    starts = csr.indptr[rows]
    lengths = csr.indptr[rows + 1] - starts
    need = int(lengths.max()) if len(rows) else 0
    width = need if width is None else int(width)
    if need > width:
        raise ValueError(f"pad_rows: a row has {need} entries but width={width}")
    out = np.full((len(rows), width), -1, dtype=np.int32)
    total = int(lengths.sum())
    if total:
        r = np.repeat(np.arange(len(rows)), lengths)
        offs = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[r, offs] = csr.indices[np.repeat(starts, lengths) + offs]
    return out


def _as_csr(m, name: str) -> sp.csr_matrix:
    if sp.issparse(m):
        return sp.csr_matrix(m)
    arr = np.asarray(m)
    if arr.ndim == 1:  # one target per user (sequential recommendation)
        n = len(arr)
        ok = arr >= 0
        return sp.csr_matrix((np.ones(ok.sum(), dtype=np.float32), (np.nonzero(ok)[0], arr[ok])),
                             shape=(n, int(arr.max()) + 1 if ok.any() else 1))
    raise TypeError(f"{name} must be a scipy.sparse matrix (users x items) or an int array of one "
                    f"target per user, got {type(m).__name__} with shape {arr.shape}")


def evaluate_topk(score_fn: Callable[[jnp.ndarray], jnp.ndarray], users, exclude_csr, test_csr,
                  ks: Sequence[int] = (5, 10, 15, 20), block_size: int = 1024,
                  per_user: bool = False) -> dict[str, float]:
    """Full-ranking top-K metrics over all items, averaged over users with a non-empty target set.

    Args:
      score_fn: ``score_fn(user_block: int32[B]) -> float[B, n_items]`` (all-item scores for a block of
        users; jit it yourself for speed). Called with blocks of exactly ``block_size`` users (the last
        block is padded with copies of a real user and those rows are ignored).
      users: user indices to evaluate (``None`` = every row of ``test_csr``). Users without targets are
        skipped, so the mean is over users with ``|T_u| > 0``.
      exclude_csr: users x items sparse matrix of items to exclude (training items; training +
        validation items when testing), or ``None``.
      test_csr: users x items sparse matrix of targets, or an ``int[n_users]`` array holding one target
        item per user (``-1`` = none), for sequential recommendation.
      ks: cut-offs.
      block_size: users scored at once; memory is ``O(block_size * n_items)``.
      per_user: also return ``"per_user"`` -> dict of numpy arrays over the evaluated users.

    Returns:
      ``{"recall@K", "precision@K", "hit@K", "ndcg@K", "mrr@K" for K in ks, "n_users"}`` as floats.
    """
    ks = tuple(int(k) for k in ks)
    test_csr = _as_csr(test_csr, "test_csr")
    if exclude_csr is not None:
        exclude_csr = _as_csr(exclude_csr, "exclude_csr")
    users = np.arange(test_csr.shape[0]) if users is None else np.asarray(users, dtype=np.int64).ravel()
    if len(users) and (users.min() < 0 or users.max() >= test_csr.shape[0]):
        raise ValueError(f"evaluate_topk: user indices must lie in [0, {test_csr.shape[0]}) "
                         f"(rows of test_csr), got range [{users.min()}, {users.max()}]")
    n_t = np.diff(test_csr.indptr)[users]
    users = users[n_t > 0]
    if len(users) == 0:
        raise ValueError("evaluate_topk: no user has a target (test set empty for all given users)")
    t_width = _next_pow2(int(np.diff(test_csr.indptr)[users].max()))
    e_width = 0
    if exclude_csr is not None:
        if exclude_csr.shape[0] <= users.max():
            raise ValueError(f"evaluate_topk: exclude_csr has {exclude_csr.shape[0]} rows but user "
                             f"{users.max()} is evaluated")
        e_width = _next_pow2(int(np.diff(exclude_csr.indptr)[users].max()))
    bs = int(min(block_size, _next_pow2(len(users))))

    totals = None
    per = [] if per_user else None
    for start in range(0, len(users), bs):
        blk = users[start:start + bs]
        n_real = len(blk)
        if n_real < bs:
            blk = np.concatenate([blk, np.full(bs - n_real, blk[0])])
        row_valid = np.arange(bs) < n_real
        tg = jnp.asarray(pad_rows(test_csr, blk, t_width))
        ex = jnp.asarray(pad_rows(exclude_csr, blk, e_width)) if exclude_csr is not None else None
        scores = score_fn(jnp.asarray(blk, dtype=jnp.int32))
        if scores.shape[0] != bs:
            raise ValueError(f"score_fn returned {scores.shape[0]} rows for a block of {bs} users")
        if per_user:
            m = topk_metrics(scores, ex, tg, ks)
            per.append({k: np.asarray(v)[:n_real] for k, v in m.items()})
        s = _block_sums(scores, ex, tg, jnp.asarray(row_valid), ks)
        totals = s if totals is None else jax.tree.map(jnp.add, totals, s)
    totals = jax.device_get(totals)
    n = float(totals.pop("n_users"))
    out = {k: float(v) / n for k, v in totals.items()}
    out["n_users"] = int(n)
    if per_user:
        out["per_user"] = {k: np.concatenate([p[k] for p in per]) for k in per[0]}
        out["per_user"]["user"] = users
    return out


@functools.partial(jax.jit, static_argnames=("ks",))
def _per_positive_sums(scores, tgt, tgt_valid, negative, row_valid, ks):
    """Sums over the valid users of one block of the per-user means of :func:`per_positive_metrics`.

    ``scores`` float[B, n], ``tgt`` int32[B, P] the users' target items (padded), ``tgt_valid`` bool[B, P],
    ``negative`` bool[B, n]. Each target's score is compared with the n scores of its row (B x P x n
    comparisons, reduced on the fly): no sort of the catalogue."""
    s_t = jnp.take_along_axis(scores, tgt, axis=1)
    neg = negative[:, None, :]
    above = jnp.sum(neg & (scores[:, None, :] > s_t[:, :, None]), -1)  # negatives scored strictly higher
    below = jnp.sum(neg & (scores[:, None, :] < s_t[:, :, None]), -1)  # negatives scored strictly lower
    n_neg = negative.sum(1)
    rank = 1 + above
    t = tgt_valid.astype(scores.dtype)
    n_pos = t.sum(1)
    valid = row_valid & (n_pos > 0) & (n_neg > 0)
    denom = jnp.where(valid, n_pos, 1.0)
    out = {"auc": jnp.sum(t * below, 1) / (denom * jnp.maximum(n_neg, 1))}
    for k in ks:
        hit = t * (rank <= k)
        out[f"hr@{k}"] = hit.sum(1) / denom
        out[f"ndcg@{k}"] = jnp.sum(hit / jnp.log2(1.0 + rank), 1) / denom
    sums = {k: jnp.sum(jnp.where(valid, v, 0.0)) for k, v in out.items()}
    sums["n_users"] = valid.sum()
    return sums


def _padded_rows(csr: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """The column indices of each row of ``csr``, padded to the next power of two: (int32[B, P], bool[B, P])."""
    cnt = np.diff(csr.indptr)
    p = _next_pow2(int(max(cnt.max(), 1)))
    pos = np.arange(csr.nnz) - np.repeat(csr.indptr[:-1], cnt)
    row = np.repeat(np.arange(csr.shape[0]), cnt)
    idx, ok = np.zeros((csr.shape[0], p), np.int32), np.zeros((csr.shape[0], p), bool)
    idx[row, pos], ok[row, pos] = csr.indices, True
    return idx, ok


def per_positive_metrics(score_fn: Callable[[jnp.ndarray], jnp.ndarray], target_csr, interacted_csr,
                         ks: Sequence[int] = (50, 100), block_size: int = 256,
                         max_block_targets: int = 2048) -> dict[str, float]:
    """lambda-Opt's evaluation: each target positive of a user is ranked against the user's negatives, the
    items the user never interacted with (``interacted_csr == 0``; other positives do not count). Per
    positive: ``rank = 1 + #{negatives scored strictly higher}``, ``HR@K = [rank <= K]``, ``NDCG@K =
    [rank <= K] / log2(1 + rank)``, ``AUC = #{negatives scored strictly lower} / #negatives``; each averaged
    over the user's positives, then over the users with at least one positive and one negative.

    ``score_fn(user_block: int32[B]) -> float[B, n_items]`` as in :func:`evaluate_topk`. Users are visited
    in order of their number of targets, so a block's padded target width ``P`` (a power of two) stays
    small; a block holds at most ``block_size`` users and ``max_block_targets`` padded targets (so at most
    a few distinct block shapes compile). Returns ``{"hr@K", "ndcg@K" for K in ks, "auc", "n_users"}``."""
    ks = tuple(int(k) for k in ks)
    target_csr, interacted_csr = _as_csr(target_csr, "target_csr"), _as_csr(interacted_csr, "interacted_csr")
    if target_csr.shape != interacted_csr.shape:
        raise ValueError(f"per_positive_metrics: target_csr {target_csr.shape} and interacted_csr "
                         f"{interacted_csr.shape} must have the same shape")
    if (target_csr.multiply(interacted_csr) != 0).sum() != (target_csr != 0).sum():
        raise ValueError("per_positive_metrics: every target must be an interacted item (interacted_csr "
                         "holds all of the user's interactions, targets included)")
    cnt = np.diff(target_csr.indptr)
    users = np.flatnonzero(cnt > 0)
    if len(users) == 0:
        raise ValueError("per_positive_metrics: no user has a target")
    users = users[np.argsort(cnt[users], kind="stable")]
    cap = int(min(block_size, _next_pow2(len(users))))
    totals, start = None, 0
    while start < len(users):
        p = _next_pow2(int(cnt[users[min(start + cap, len(users)) - 1]]))  # the widest user of a full block
        bs = int(min(cap, max(8, 1 << int(math.log2(max(1, max_block_targets // p))))))
        blk = users[start:start + bs]
        n_real = len(blk)
        blk = np.concatenate([blk, np.full(bs - n_real, blk[0])])
        tgt, ok = _padded_rows(target_csr[blk])
        neg = jnp.asarray(interacted_csr[blk].toarray() == 0)
        s = _per_positive_sums(score_fn(jnp.asarray(blk, jnp.int32)), jnp.asarray(tgt), jnp.asarray(ok), neg,
                               jnp.asarray(np.arange(bs) < n_real), ks)
        totals = s if totals is None else jax.tree.map(jnp.add, totals, s)
        start += bs
    totals = jax.device_get(totals)
    n = float(totals.pop("n_users"))
    return {**{k: float(v) / n for k, v in totals.items()}, "n_users": int(n)}


@jax.jit
def rank_of_target(scores: jnp.ndarray, target: jnp.ndarray, exclude: jnp.ndarray | None = None) -> jnp.ndarray:
    """0-based rank of one target item per row under full ranking.

    ``rank = #{j ∉ E : s_j > s_t} + #{j ∉ E : s_j = s_t, j < t}`` (ties: lower index first, as
    :func:`topk_metrics`). ``scores: float[B, n]``, ``target: int[B]``, ``exclude: int[B, E]`` (-1 padded)
    or ``None``. The target itself is never excluded here.
    """
    b, n = scores.shape
    s_t = jnp.take_along_axis(scores, target[:, None], axis=1)
    idx = jnp.arange(n)[None, :]
    ahead = (scores > s_t) | ((scores == s_t) & (idx < target[:, None]))
    if exclude is not None:
        ahead = ahead & ~_index_mask(exclude, n)
    return ahead.sum(axis=1)


def ranks_to_metrics(ranks, ks: Sequence[int] = (5, 10, 20)) -> dict[str, float]:
    """HR@K, NDCG@K and MRR@K from 0-based ranks of single targets, averaged over rows.

    ``hit@K = 1[rank < K]``, ``ndcg@K = 1[rank < K] / log2(rank + 2)``, ``mrr@K = 1[rank < K] / (rank + 1)``.
    """
    r = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        h = r < k
        out[f"hit@{k}"] = float(h.mean())
        out[f"ndcg@{k}"] = float(np.where(h, 1.0 / np.log2(r + 2), 0.0).mean())
        out[f"mrr@{k}"] = float(np.where(h, 1.0 / (r + 1), 0.0).mean())
    return out


def _average_ranks(x: jnp.ndarray) -> jnp.ndarray:
    """1-based ranks of ``x`` with ties given their average rank (midrank)."""
    s = jnp.sort(x)
    lo = jnp.searchsorted(s, x, side="left")
    hi = jnp.searchsorted(s, x, side="right")
    return (lo + hi + 1).astype(_float_dtype(x)) / 2


@jax.jit
def auc(labels: jnp.ndarray, scores: jnp.ndarray) -> jnp.ndarray:
    """Area under the ROC curve via the Mann-Whitney U statistic, ties counted 1/2.

    ``AUC = (Σ_{i: y_i=1} rank_i - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with midranks for ties,
    i.e. ``P(s_pos > s_neg) + 0.5 P(s_pos = s_neg)``. Labels are 0/1 (any positive value = positive).
    Returns NaN when one class is absent. 1-D inputs; ``jax.vmap`` it for per-group AUC.
    """
    scores = jnp.asarray(scores)
    fdt = _float_dtype(scores)
    pos = (jnp.asarray(labels) > 0)
    n_pos = pos.sum().astype(fdt)
    n_neg = (~pos).sum().astype(fdt)
    r = _average_ranks(scores.astype(fdt))
    u = jnp.sum(jnp.where(pos, r, 0.0)) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def rela_impr(auc_model, auc_base):
    """RelaImpr in percent: ``((AUC_model - 0.5) / (AUC_base - 0.5) - 1) * 100``."""
    return ((auc_model - 0.5) / (auc_base - 0.5) - 1.0) * 100.0


def mse(pred, true, mask=None):
    """Mean squared error ``mean((pred - true)^2)`` over entries where ``mask`` (if given) is true."""
    err = (jnp.asarray(pred) - jnp.asarray(true)) ** 2
    if mask is None:
        return jnp.mean(err)
    m = jnp.asarray(mask).astype(err.dtype)
    return jnp.sum(err * m) / jnp.maximum(jnp.sum(m), 1)


def rmse(pred, true, mask=None):
    """Root mean squared error ``sqrt(mse)``."""
    return jnp.sqrt(mse(pred, true, mask))


@functools.partial(jax.jit, static_argnames=("k",))
def rating_ndcg(pred: jnp.ndarray, true: jnp.ndarray, k: int, mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """Rating nDCG@k with graded gain ``2^r - 1`` for one list or a batch of padded lists.

    Items are ordered by ``pred`` (descending; ties lower index first); ``DCG@k = Σ_{r=1..k} (2^{y_(r)} -
    1) / log2(r + 1)``, ``IDCG@k`` the same with items ordered by the true ratings; ``nDCG = DCG / IDCG``
    (0 when ``IDCG = 0``). ``pred``/``true``: ``[n]`` or ``[U, n]``; ``mask`` (same shape, optional)
    marks real entries of padded lists. Returns a scalar or ``[U]``; average it over users yourself.
    """
    pred = jnp.asarray(pred)
    true = jnp.asarray(true)
    single = pred.ndim == 1
    if single:
        pred, true = pred[None], true[None]
        mask = None if mask is None else jnp.asarray(mask)[None]
    fdt = _float_dtype(pred)
    true = true.astype(fdt)
    n = pred.shape[1]
    kk = min(int(k), n)
    gain = jnp.exp2(true) - 1.0
    p = pred.astype(fdt)
    if mask is not None:
        mask = jnp.asarray(mask).astype(bool)
        p = jnp.where(mask, p, -jnp.inf)
        gain = jnp.where(mask, gain, 0.0)
    disc = _discounts(kk, fdt)
    _, order = jax.lax.top_k(p, kk)
    dcg = jnp.sum(jnp.take_along_axis(gain, order, axis=1) * disc, axis=1)
    ideal, _ = jax.lax.top_k(gain, kk)
    idcg = jnp.sum(ideal * disc, axis=1)
    out = jnp.where(idcg > 0, dcg / jnp.where(idcg > 0, idcg, 1.0), 0.0)
    return out[0] if single else out
