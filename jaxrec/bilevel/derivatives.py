"""Second-order derivative helpers over pytrees (matrix-free).

Notation: ``f(theta, lam, *args)`` a scalar function. ``H = d^2 f / d theta^2`` (the Hessian in ``theta``)
and ``M = d^2 f / d lam d theta`` (mixed block, an operator from theta-space to lam-space). None of these
helpers ever materialises a matrix unless asked to (``dense_hessian``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ._tree import tree_vdot

__all__ = ["grad_theta", "hvp", "hvp_fn", "mixed_vjp", "dense_hessian", "HVP_MODES"]

HVP_MODES = ("fwd_rev", "rev_rev", "linearize")


def grad_theta(f):
    """Return ``(theta, *args) -> grad_theta f(theta, *args)``."""
    return jax.grad(f, argnums=0)


def hvp(f, theta, v, *args, mode: str = "fwd_rev"):
    """Hessian-vector product ``H v = (d^2 f / d theta^2)(theta, *args) v``.

    ``mode="fwd_rev"`` (default) is forward-over-reverse, ``jax.jvp(grad f, (theta,), (v,))``: one forward
    pass over the gradient computation, the cheapest option. ``mode="rev_rev"`` is reverse-over-reverse,
    ``grad_theta <grad_theta f(theta), v>``, the fallback for functions without forward-mode rules.
    ``mode="linearize"`` is accepted for symmetry with :func:`hvp_fn` (for a single product it is the same
    as ``fwd_rev``). ``v`` has the structure of ``theta``; so does the result.
    """
    return hvp_fn(f, theta, *args, mode=mode)(v)


def hvp_fn(f, theta, *args, mode: str = "fwd_rev"):
    """Return ``v -> H v`` at fixed ``(theta, *args)``, for repeated products inside a linear solver.

    ``mode="linearize"`` runs the gradient once and stores its linearisation (``jax.linearize``), so each
    product costs one JVP of the stored linear map: fastest for many products, more memory. ``fwd_rev`` and
    ``rev_rev`` recompute from scratch each call (see :func:`hvp`).
    """
    g = lambda t: jax.grad(f, argnums=0)(t, *args)
    if mode == "fwd_rev":
        return lambda v: jax.jvp(g, (theta,), (v,))[1]
    if mode == "rev_rev":
        return lambda v: jax.grad(lambda t: tree_vdot(g(t), v))(theta)
    if mode == "linearize":
        _, lin = jax.linearize(g, theta)
        return lin
    raise ValueError(f"unknown hvp mode {mode!r}; choose one of {HVP_MODES}")


def mixed_vjp(f, theta, lam, w, *args):
    """Mixed second-derivative vector product ``M w = (d^2 f / d lam d theta) w``.

    Computed as the VJP of ``lam -> grad_theta f(theta, lam, *args)`` with cotangent ``w``, i.e.
    ``grad_lam <grad_theta f(theta, lam), w>``. ``w`` has the structure of ``theta``; the result has the
    structure of ``lam``.
    """
    _, vjp = jax.vjp(lambda l: jax.grad(f, argnums=0)(theta, l, *args), lam)
    return vjp(w)[0]


def dense_hessian(f, theta, *args):
    """Materialise ``H`` in ``theta`` as an ``(n, n)`` matrix over the raveled parameters.

    Only for small problems (diagnostics, exact reference solutions). Built by ``vmap`` of
    forward-over-reverse HVPs over the basis vectors. Returns ``(H, unravel)``.
    """
    flat, unravel = ravel_pytree(theta)
    g = lambda x: ravel_pytree(jax.grad(f, argnums=0)(unravel(x), *args))[0]
    basis = jnp.eye(flat.shape[0], dtype=flat.dtype)
    H = jax.vmap(lambda e: jax.jvp(g, (flat,), (e,))[1])(basis)
    return 0.5 * (H + H.T), unravel
