"""Negative sampling and mini-batch iteration.

* :func:`to_csr` -- the binary user x item matrix of an :class:`Interactions`.
* :func:`sample_negatives` -- uniform negatives per user: vectorised rejection sampling with a CSR
  membership test (binary search over the sorted keys ``user * n_items + item``), with an exact
  inverse-rank draw for the few that are still rejected after ``max_rounds``; no per-example Python loop.
* :func:`batch_iterator` -- shuffled mini-batches of a dict of aligned arrays, as ``jnp`` arrays.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import jax.numpy as jnp
import scipy.sparse as sp

from .errors import data_error
from .types import Interactions

__all__ = ["to_csr", "sample_negatives", "batch_iterator"]


def to_csr(inter: Interactions, n_users: int | None = None, n_items: int | None = None) -> sp.csr_matrix:
    """Binary CSR matrix R (n_users x n_items, float32) with R[u, i] = 1 iff (u, i) occurs in ``inter``
    (repeated pairs count once); indices sorted within each row."""
    n_users = inter.n_users if n_users is None else n_users
    n_items = inter.n_items if n_items is None else n_items
    m = sp.csr_matrix((np.ones(len(inter), np.float32), (inter.user, inter.item)), shape=(n_users, n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    m.sort_indices()
    return m


def _csr_keys(csr: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted int64 keys ``row * n_cols + col`` of the stored entries, the row starts, and the row-local
    rank-adjusted keys ``row * n_cols + (col - j)`` (j = position of the entry within its row)."""
    if not csr.has_sorted_indices:
        csr = csr.copy()
        csr.sort_indices()
    n_cols = csr.shape[1]
    indptr = csr.indptr.astype(np.int64)
    rows = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(indptr))
    cols = csr.indices.astype(np.int64)
    keys = rows * n_cols + cols
    within = np.arange(len(cols), dtype=np.int64) - indptr[rows]
    adj = rows * n_cols + (cols - within)
    return keys, indptr, adj


def sample_negatives(rng, users, csr: sp.csr_matrix, n: int = 1, max_rounds: int = 20) -> np.ndarray:
    """int32[len(users), n]: for each user u, ``n`` items drawn uniformly (independently, with replacement)
    from the items u never interacted with, i.e. from ``{i : csr[u, i] == 0}``.

    Vectorised rejection sampling: draw uniform items for all slots, test membership in the CSR by binary
    search on sorted keys ``u * n_items + i``, redraw only the rejected slots; after ``max_rounds`` the
    remaining slots use an exact draw -- r uniform in ``[0, n_items - deg_u)`` mapped to the r-th free item
    ``r + #{positives p_j : p_j - j <= r}``. Raises :class:`DataError` if a user has interacted with every
    item. ``rng``: a ``numpy.random.Generator`` or a seed.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    csr = sp.csr_matrix(csr)
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    n_users, n_items = csr.shape
    if users.size and (users.min() < 0 or users.max() >= n_users):
        raise data_error(f"user ids must lie in [0, {n_users}), got [{users.min()}, {users.max()}]")
    keys, indptr, adj = _csr_keys(csr)
    deg = np.diff(indptr)
    full = np.flatnonzero(deg[users] >= n_items)
    if full.size:
        raise data_error(f"user {users[full[0]]} has interacted with all {n_items} items, so there is no "
                         "negative to sample", fix="drop such users (they carry no ranking signal)")
    out = rng.integers(0, n_items, size=(users.size, n), dtype=np.int64)
    flat_u = np.repeat(users, n)
    flat = out.reshape(-1)

    def positive(u, i):
        q = u * n_items + i
        pos = np.searchsorted(keys, q)
        return (pos < len(keys)) & (keys[np.minimum(pos, len(keys) - 1)] == q) if len(keys) else np.zeros(len(q), bool)

    todo = np.flatnonzero(positive(flat_u, flat))
    for _ in range(max_rounds):
        if todo.size == 0:
            break
        flat[todo] = rng.integers(0, n_items, size=todo.size)
        todo = todo[positive(flat_u[todo], flat[todo])]
    if todo.size:
        u = flat_u[todo]
        r = (rng.random(todo.size) * (n_items - deg[u])).astype(np.int64)
        r = np.minimum(r, n_items - deg[u] - 1)
        j = np.searchsorted(adj, u * n_items + r, side="right") - indptr[u]
        flat[todo] = r + j
    return out.astype(np.int32)


def batch_iterator(arrays: dict, batch_size: int, rng=None, shuffle: bool = True, drop_last: bool = False,
                   n_batches: int | None = None) -> Iterator[dict]:
    """Yield mini-batches ``{name: jnp.ndarray}`` of the aligned arrays in ``arrays`` (equal first axes).

    One pass over the data in a random order (``shuffle``; ``rng`` a ``numpy.random.Generator`` or seed);
    ``drop_last`` drops a final short batch (keep shapes static for ``jax.jit``). With ``n_batches`` it
    yields exactly that many full batches instead, drawing from successive reshuffled passes.
    """

    if not arrays:
        raise data_error("batch_iterator got no arrays")
    if batch_size < 1:
        raise data_error(f"batch_size must be >= 1, got {batch_size}")
    lens = {k: len(v) for k, v in arrays.items()}
    n = next(iter(lens.values()))
    if any(v != n for v in lens.values()):
        raise data_error(f"batch_iterator arrays have different lengths {lens}", fix="align them first")
    if n == 0:
        raise data_error("batch_iterator got empty arrays (an empty split?)", fix="check the split sizes")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    np_arrays = {k: np.asarray(v) for k, v in arrays.items()}

    def order():
        return rng.permutation(n) if shuffle else np.arange(n)

    if n_batches is not None:
        buf = np.zeros(0, np.int64)
        for _ in range(n_batches):
            while len(buf) < batch_size:
                buf = np.concatenate([buf, order()])
            idx, buf = buf[:batch_size], buf[batch_size:]
            yield {k: jnp.asarray(v[idx]) for k, v in np_arrays.items()}
        return
    perm = order()
    stop = n - n % batch_size if drop_last else n
    for s in range(0, stop, batch_size):
        idx = perm[s: s + batch_size]
        yield {k: jnp.asarray(v[idx]) for k, v in np_arrays.items()}
