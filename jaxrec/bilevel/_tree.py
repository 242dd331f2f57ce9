"""Pytree arithmetic used by the hypergradient modes: the names the modes use, over ``optax.tree_utils``.

All functions are pure, jit-able and dtype agnostic. Leaves of the two trees in a binary operation must
have matching structure. Only :func:`tree_sgd_step` is written here: optax has no step that takes a
scalar, a traced per-task rate or a per-parameter pytree of rates (Meta-SGD) alike.
"""
from __future__ import annotations

import jax
import optax.tree_utils as otu

__all__ = [
    "tree_add", "tree_sub", "tree_scale", "tree_axpy", "tree_mul", "tree_vdot", "tree_sq_norm",
    "tree_norm", "tree_zeros_like", "tree_where", "tree_sgd_step",
]


def tree_add(a, b):
    """Leaf-wise ``a + b``."""
    return otu.tree_add(a, b)


def tree_sub(a, b):
    """Leaf-wise ``a - b``."""
    return otu.tree_sub(a, b)


def tree_scale(s, a):
    """Leaf-wise ``s * a`` for a scalar ``s``."""
    return otu.tree_scale(s, a)


def tree_axpy(alpha, x, y):
    """Leaf-wise ``alpha * x + y`` for a scalar ``alpha``."""
    return otu.tree_add_scale(y, alpha, x)


def tree_mul(a, b):
    """Leaf-wise product ``a * b`` (broadcasting inside each leaf)."""
    return otu.tree_mul(a, b)


def tree_vdot(a, b):
    """Euclidean inner product ``<a, b> = sum_leaves sum(a_i * b_i)`` (real pytrees)."""
    return otu.tree_vdot(a, b)


def tree_sq_norm(a):
    """Squared Euclidean norm ``|a|^2`` of a pytree."""
    return otu.tree_norm(a, squared=True)


def tree_norm(a):
    """Euclidean norm ``|a|`` of a pytree (all leaves flattened together)."""
    return otu.tree_norm(a)


def tree_zeros_like(a):
    """Zeros with the structure, shapes and dtypes of ``a``."""
    return otu.tree_zeros_like(a)


def tree_where(cond, a, b):
    """Leaf-wise ``where(cond, a, b)`` for a scalar boolean ``cond``."""
    return otu.tree_where(cond, a, b)


def tree_sgd_step(params, grads, lr):
    """One gradient step ``params - lr * grads``.

    ``lr`` is a scalar (python number or 0-d array, e.g. a per-task rate inside ``vmap``) or a pytree with
    the structure of ``params`` whose leaves broadcast against the matching parameter leaf (Meta-SGD
    per-parameter rates).
    """
    if _is_scalar_like(lr):
        return jax.tree.map(lambda p, g: p - lr * g, params, grads)
    try:
        return jax.tree.map(lambda p, g, a: p - a * g, params, grads, lr)
    except ValueError as err:  # structure mismatch
        raise ValueError(
            "lr must be a scalar or a pytree with the structure of the parameters "
            f"(Meta-SGD per-parameter rates); got lr structure {jax.tree.structure(lr)} for parameters "
            f"{jax.tree.structure(params)}"
        ) from err


def _is_scalar_like(x) -> bool:
    if isinstance(x, (int, float)):
        return True
    return hasattr(x, "shape") and hasattr(x, "dtype") and getattr(x, "ndim", None) == 0
