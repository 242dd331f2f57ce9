"""Matrix-free linear solvers over pytrees for the implicit hypergradient ``(H + damping I) w = b``.

Every solver has the signature ``solve(matvec, b, *, maxiter, tol, x0=None) -> x`` with ``matvec`` a
linear map on pytrees shaped like ``b``. They are pure and jit-able, and vmap over a task axis.
"""
from __future__ import annotations

import jax
from jaxopt import linear_solve
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from ._tree import tree_add, tree_axpy, tree_scale, tree_sq_norm, tree_sub, tree_vdot, tree_zeros_like

__all__ = ["cg", "neumann", "jaxopt_cg", "dense_solve", "SOLVERS"]


def _safe_div(a, b):
    ok = b != 0
    return jnp.where(ok, a / jnp.where(ok, b, 1), jnp.zeros_like(a))


def cg(matvec, b, *, maxiter: int, tol: float = 0.0, x0=None):
    """Conjugate gradient for ``A x = b`` with ``A`` symmetric positive definite, given as ``matvec``.

    Standard CG recursion (Hestenes-Stiefel) on pytrees, started at ``x0`` (default 0):
    ``alpha_k = r_k.r_k / p_k.A p_k``, ``x_{k+1} = x_k + alpha_k p_k``, ``r_{k+1} = r_k - alpha_k A p_k``,
    ``p_{k+1} = r_{k+1} + (r_{k+1}.r_{k+1} / r_k.r_k) p_k``.

    With ``tol == 0`` (a python number) it performs exactly ``maxiter`` iterations (``lax.fori_loop``; ``maxiter`` matrix-vector
    products, reverse-differentiable); a zero residual is handled (the iterate just stays put). With
    ``tol > 0`` (or a traced ``tol``) it stops early once ``|r_k| <= tol * |b|`` (``lax.while_loop``, at most
    ``maxiter`` iterations; not reverse-differentiable, which the hypergradient never needs).
    """
    maxiter = int(maxiter)
    if maxiter < 0:
        raise ValueError(f"cg: maxiter must be >= 0, got {maxiter}")
    if x0 is None:
        x = tree_zeros_like(b)
        r = b
    else:
        x = x0
        r = tree_sub(b, matvec(x0))
    rs = tree_sq_norm(r)
    state = (x, r, r, rs)

    def body(_, st):
        x, r, p, rs = st
        Ap = matvec(p)
        alpha = _safe_div(rs, tree_vdot(p, Ap))
        x = tree_axpy(alpha, p, x)
        r = tree_axpy(-alpha, Ap, r)
        rs_new = tree_sq_norm(r)
        beta = _safe_div(rs_new, rs)
        p = tree_axpy(beta, p, r)
        return x, r, p, rs_new

    if isinstance(tol, (int, float)) and tol == 0:
        x, *_ = lax.fori_loop(0, maxiter, body, state)
        return x
    thresh = (tol ** 2) * tree_sq_norm(b)

    def cond(carry):
        k, st = carry
        return (k < maxiter) & (st[3] > thresh)

    _, (x, *_) = lax.while_loop(cond, lambda c: (c[0] + 1, body(c[0], c[1])), (0, state))
    return x


def neumann(matvec, b, *, maxiter: int, tol: float = 0.0, x0=None, alpha: float = 1.0):
    """Truncated Neumann series ``x_K = alpha * sum_{k=0}^{K} (I - alpha A)^k b`` for ``A x = b``.

    Converges to ``A^{-1} b`` when ``0 < alpha < 2 / lambda_max(A)`` (``A`` SPD); uses exactly ``K = maxiter``
    matrix-vector products. ``alpha`` plays the role of an inner learning rate (Lorraine et al. 2020).
    ``tol`` and ``x0`` are accepted for a uniform signature and ignored (the series is a fixed-length sum).
    """
    del tol, x0
    maxiter = int(maxiter)

    def body(_, st):
        p, acc = st
        p = tree_sub(p, tree_scale(alpha, matvec(p)))
        return p, tree_add(acc, p)

    _, acc = lax.fori_loop(0, maxiter, body, (b, b))
    return tree_scale(alpha, acc)


def jaxopt_cg(matvec, b, *, maxiter: int, tol: float = 0.0, x0=None):
    """CG from ``jaxopt.linear_solve.solve_cg`` (which wraps ``jax.scipy.sparse.linalg.cg``).

    Stops when ``|r| <= max(tol * |b|, 0)`` or after ``maxiter`` iterations; with ``tol = 0`` it runs all
    ``maxiter`` iterations unless the residual is exactly zero.
    """

    return linear_solve.solve_cg(matvec, b, init=x0, tol=tol, maxiter=int(maxiter))


def dense_solve(matvec, b, *, maxiter: int = 0, tol: float = 0.0, x0=None):
    """Exact solve by materialising ``A`` (``vmap`` of ``matvec`` over basis vectors) and ``jnp.linalg.solve``.

    For small problems and reference values only; ``maxiter``/``tol``/``x0`` are ignored.
    """
    del maxiter, tol, x0
    flat, unravel = ravel_pytree(b)
    mv = lambda x: ravel_pytree(matvec(unravel(x)))[0]
    A = jax.vmap(mv)(jnp.eye(flat.shape[0], dtype=flat.dtype)).T
    return unravel(jnp.linalg.solve(A, flat))


SOLVERS = {"cg": cg, "neumann": neumann, "jaxopt": jaxopt_cg, "dense": dense_solve}
