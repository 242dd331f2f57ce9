"""Blockwise cosine-similarity neighbour search over a sparse interaction matrix.

Given a binary (or weighted) matrix ``R`` (rows = entities, columns = features), the cosine similarity of
rows ``a`` and ``b`` is

    cos(a, b) = <R_a, R_b> / (|R_a| |R_b|).

:func:`cosine_neighbors` returns, for every row ``a``, the set

    N_a = { b != a : cos(a, b) >= tau }

truncated to the ``max_neighbors`` most similar rows. The similarities are computed one block of rows at a
time (``block_size`` x ``n_rows`` dense), so a dense ``n_rows x n_rows`` matrix is never formed: memory is
``O(block_size * n_rows)``. Rows without any interaction have no neighbours.

:func:`threshold_pairs` returns the whole (untruncated) set ``{(a, b) : b in N_a}`` as a sparse matrix,
:func:`pair_keys` as sorted keys ``a * n + b`` for membership tests on device, and :func:`no_neighbor_share`
the share of rows whose ``N_a`` is empty at each of several thresholds (one pass over the blocks).

Used by :mod:`jaxrec.methods.mal` for the user-user (rows of ``R``) and item-item (rows of ``R^T``)
auxiliary tasks; nothing in here is specific to MAL.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp

__all__ = ["Neighbors", "cosine_neighbors", "row_normalize", "threshold_pairs", "pair_keys", "no_neighbor_share"]


@dataclasses.dataclass(frozen=True)
class Neighbors:
    """Padded neighbour lists.

    Attributes:
      index: ``int32[n, M]``; ``index[a, :count[a]]`` are the neighbours of ``a`` ordered by decreasing
        similarity, the rest is padding ``-1``.
      sim: ``float32[n, M]`` cosine similarity of each listed neighbour (``0`` in the padding).
      count: ``int32[n]`` number of neighbours of each row (``<= M``).
      tau: the threshold used.
    """

    index: np.ndarray
    sim: np.ndarray
    count: np.ndarray
    tau: float

    @property
    def max_neighbors(self) -> int:
        return int(self.index.shape[1])

    def as_sets(self) -> list[set[int]]:
        """The neighbour lists as Python sets (for tests and inspection; O(n M))."""
        return [set(self.index[a, : self.count[a]].tolist()) for a in range(self.index.shape[0])]


def row_normalize(matrix: sp.spmatrix) -> sp.csr_matrix:
    """Return ``R`` with every non-empty row scaled to unit Euclidean norm: ``R_a / |R_a|`` (float32 CSR)."""
    csr = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    norms = np.sqrt(np.asarray(csr.multiply(csr).sum(axis=1)).ravel())
    inv = np.zeros_like(norms)
    nz = norms > 0
    inv[nz] = 1.0 / norms[nz]
    return sp.diags(inv.astype(np.float32)) @ csr


def cosine_neighbors(
    matrix: sp.spmatrix,
    tau: float,
    max_neighbors: int,
    block_size: int = 1024,
) -> Neighbors:
    """Rows ``b != a`` with ``cos(a, b) >= tau``, at most ``max_neighbors`` per row (the most similar).

    Args:
      matrix: ``n x f`` sparse matrix (scipy); the rows are the entities. For user neighbours pass the
        users x items interaction matrix, for item neighbours its transpose.
      tau: similarity threshold in ``[-1, 1]``; ties at the threshold are included.
      max_neighbors: ``M >= 1``; per row only the ``M`` most similar qualifying rows are kept. Rows tied
        with the ``M``-th similarity are chosen by ``np.argpartition`` (deterministic, but not by index); the
        kept rows are listed by decreasing similarity, then increasing index.
      block_size: number of rows whose similarities are materialised at once (memory
        ``block_size * n`` floats).

    Returns:
      :class:`Neighbors` with ``index``/``sim`` of shape ``[n, max_neighbors]`` padded with ``-1``/``0``.
    """
    if not sp.issparse(matrix):
        raise TypeError("cosine_neighbors expects a scipy.sparse matrix (e.g. jaxrec.data.to_csr(train))")
    if max_neighbors < 1:
        raise ValueError(f"max_neighbors must be >= 1, got {max_neighbors}")
    if not -1.0 <= tau <= 1.0:
        raise ValueError(f"tau is a cosine threshold and must lie in [-1, 1], got {tau}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    rn = row_normalize(matrix)
    rn_t = rn.T.tocsr()
    n = rn.shape[0]
    m = int(max_neighbors)
    index = np.full((n, m), -1, dtype=np.int32)
    sim = np.zeros((n, m), dtype=np.float32)
    count = np.zeros(n, dtype=np.int32)
    # small tolerance so that exact ties at tau (e.g. cos = 0.5 computed as 0.49999997) are kept
    thr = np.float32(tau) - np.float32(1e-6)
    empty_all = np.asarray(rn.getnnz(axis=1)) == 0
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        block = (rn[start:stop] @ rn_t).toarray()  # [b, n] dense, never n x n
        rows = np.arange(stop - start)
        block[rows, start + rows] = -np.inf  # a row is never its own neighbour
        block[block < thr] = -np.inf
        # an all-zero row has cosine 0 with everything: it has no neighbours whatever tau is
        block[empty_all[start:stop]] = -np.inf
        block[:, empty_all] = -np.inf
        k = min(m, n)
        if k < n:
            part = np.argpartition(-block, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(n), (stop - start, n)).copy()
        vals = np.take_along_axis(block, part, axis=1)
        # sort by (-sim, index) for a deterministic order
        order = np.lexsort((part, -vals), axis=1)
        part = np.take_along_axis(part, order, axis=1)
        vals = np.take_along_axis(vals, order, axis=1)
        valid = np.isfinite(vals)
        c = valid.sum(axis=1)
        index[start:stop, :k] = np.where(valid, part, -1)
        sim[start:stop, :k] = np.where(valid, vals, 0.0)
        count[start:stop] = c
    return Neighbors(index=index, sim=sim, count=count, tau=float(tau))


def _blocks(matrix: sp.spmatrix, block_size: int):
    """Yield ``(start, stop, block)``: the cosine similarities of rows ``start:stop`` with every row as a sparse
    ``[stop - start, n]`` matrix, with a row's similarity to itself and every similarity of an all-zero row
    removed (the same conventions as :func:`cosine_neighbors`)."""
    if not sp.issparse(matrix):
        raise TypeError("expected a scipy.sparse matrix (e.g. jaxrec.data.to_csr(train))")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    rn = row_normalize(matrix)
    rn_t = rn.T.tocsr()
    n = rn.shape[0]
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        block = sp.coo_matrix(rn[start:stop] @ rn_t)
        keep = (block.row + start != block.col) & (block.data != 0)  # a row is never its own neighbour
        yield start, stop, sp.csr_matrix((block.data[keep], (block.row[keep], block.col[keep])),
                                         shape=(stop - start, n))


def threshold_pairs(matrix: sp.spmatrix, tau: float, block_size: int = 1024) -> sp.csr_matrix:
    """The whole neighbour relation ``{(a, b) : b != a, cos(a, b) >= tau}`` (no top-M cut) as a boolean
    ``n x n`` CSR matrix, built one block of rows at a time (memory: one sparse block plus the result; the
    dense similarity matrix is never formed). ``tau`` must be > 0: cos 0 pairs are not stored in the
    sparse products (at ``tau > 0`` they never qualify). Ties at ``tau`` are kept (the same tolerance as
    :func:`cosine_neighbors`, whose lists are the ``M`` most similar entries of each row here)."""
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"threshold_pairs needs tau in (0, 1], got {tau}")
    thr = np.float32(tau) - np.float32(1e-6)
    parts = []
    for _, _, block in _blocks(matrix, block_size):
        block.data = (block.data >= thr).astype(np.float32)
        block.eliminate_zeros()
        parts.append(block)
    n = matrix.shape[0]
    out = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, n), dtype=np.float32)
    return out.astype(bool)


def pair_keys(pairs: sp.spmatrix) -> np.ndarray:
    """Sorted ``int32`` keys ``a * n + b`` of the pairs of a square sparse matrix, with ``2**31 - 1`` appended
    as a sentinel (never a real key, so a search never runs off the end). Needs ``n * n < 2**31``."""
    n = pairs.shape[0]
    if n * n >= 2 ** 31 - 1:
        raise ValueError(f"pair_keys: {n} entities give keys beyond int32 (n * n >= 2**31)")
    coo = sp.coo_matrix(pairs)
    keys = np.sort(coo.row.astype(np.int64) * n + coo.col.astype(np.int64))
    return np.concatenate([keys, [2 ** 31 - 1]]).astype(np.int32)


def no_neighbor_share(matrix: sp.spmatrix, taus, block_size: int = 1024) -> dict:
    """For each ``tau`` in ``taus``: the share of rows with no other row at ``cos >= tau`` (an empty ``N_a``,
    so no auxiliary term for that entity), and the mean ``|N_a|`` before any top-M cut. One blockwise pass:
    returns ``{tau: {"no_neighbor": share, "mean_size": mean |N_a|}}``."""
    taus = [float(t) for t in taus]
    n = matrix.shape[0]
    best = np.full(n, -np.inf, dtype=np.float32)
    sizes = {t: np.zeros(n, dtype=np.int64) for t in taus}
    for start, stop, block in _blocks(matrix, block_size):
        rows = np.repeat(np.arange(stop - start), np.diff(block.indptr))
        mx = np.full(stop - start, -np.inf, dtype=np.float32)
        np.maximum.at(mx, rows, block.data.astype(np.float32))
        best[start:stop] = mx
        for t in taus:
            above = block.data >= np.float32(t) - np.float32(1e-6)
            sizes[t][start:stop] = np.bincount(rows[above], minlength=stop - start)
    return {t: {"no_neighbor": float(np.mean(best < np.float32(t) - np.float32(1e-6))),
                "mean_size": float(np.mean(sizes[t]))} for t in taus}
