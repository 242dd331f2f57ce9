"""Matrix factorisation: user and item embeddings, score = inner product.

``params = {"user": float[n_users, dim], "item": float[n_items, dim]}``;
``score(u, i) = <P_u, Q_i>``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["init", "score", "score_all", "embed"]


def init(key: jax.Array, n_users: int, n_items: int, dim: int = 64, scale: float = 0.1,
         dtype=jnp.float32) -> dict[str, jnp.ndarray]:
    """Embeddings drawn i.i.d. from ``N(0, scale^2)``: ``{"user": [n_users, dim], "item": [n_items, dim]}``."""
    ku, ki = jax.random.split(key)
    return {"user": scale * jax.random.normal(ku, (n_users, dim), dtype),
            "item": scale * jax.random.normal(ki, (n_items, dim), dtype)}


def embed(params, users, items):
    """``(P[users], Q[items])`` gathered embeddings."""
    return params["user"][users], params["item"][items]


def score(params, users: jnp.ndarray, items: jnp.ndarray) -> jnp.ndarray:
    """``s(u, i) = <P_u, Q_i>``. ``users: [B]`` with ``items: [B]`` -> ``[B]`` or ``items: [B, n]`` -> ``[B, n]``."""
    pu = params["user"][users]
    qi = params["item"][items]
    if qi.ndim == pu.ndim + 1:
        return jnp.einsum("bd,bnd->bn", pu, qi)
    return jnp.sum(pu * qi, axis=-1)


@jax.jit
def score_all(params, users: jnp.ndarray) -> jnp.ndarray:
    """Scores of every item for each user: ``P[users] @ Q^T`` -> ``[B, n_items]``."""
    return params["user"][users] @ params["item"].T
