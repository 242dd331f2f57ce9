"""Most-popular baseline: every user gets the same ranking, by training interaction count.

``score(u, i) = |{v : (v, i) ∈ train}|`` (ties: lower item index first in top-K evaluation).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

__all__ = ["fit", "score_fn"]


def fit(train_csr: sp.spmatrix, dtype=jnp.float32) -> jnp.ndarray:
    """Item popularity ``float[n_items]``: the number of distinct training users per item."""
    csr = sp.csr_matrix(train_csr)
    counts = np.asarray((csr > 0).sum(axis=0)).ravel()
    return jnp.asarray(counts, dtype=dtype)


def score_fn(popularity: jnp.ndarray):
    """``score_fn(users[B]) -> [B, n_items]`` for :func:`jaxrec.metrics.evaluate_topk`."""
    def f(users):
        return jnp.broadcast_to(popularity[None, :], (users.shape[0], popularity.shape[0]))
    return f
