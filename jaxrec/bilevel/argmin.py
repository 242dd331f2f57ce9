"""Differentiable inner solves: the argmin as a function of ``lam``, differentiated implicitly."""
from __future__ import annotations

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
from jax import lax
from jaxopt import implicit_diff

from ._tree import tree_norm, tree_sgd_step, tree_sub
from .derivatives import dense_hessian
from .diagnostics import with_finite_check
from .implicit import resolve_solver

__all__ = ["argmin", "argmin_hypergrad", "gradient_descent_solver", "newton_solver"]


def _n_params(tree) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))


def _as_solver_fn(solver):
    if hasattr(solver, "run"):  # a jaxopt solver instance built with fun=inner_loss
        return lambda init, lam, batch: solver.run(init, lam, batch).params
    if callable(solver):
        return solver
    raise TypeError(f"argmin: solver must be a callable (theta_init, lam, batch) -> theta or an object with "
                    f".run (a jaxopt solver); got {type(solver).__name__}")


def argmin(inner_loss, solver, *, linear_solver="cg", maxiter: int | None = None, tol: float = 1e-12):
    """Differentiable inner solution ``theta*(lam) = argmin_theta L_in(theta, lam, batch)``.

    Returns ``solve(theta_init, lam, inner_batch) -> theta*``. The forward pass runs ``solver`` (a callable
    ``(theta_init, lam, batch) -> theta`` such as :func:`newton_solver` / :func:`gradient_descent_solver`, or a
    jaxopt solver instance whose ``fun`` is ``inner_loss``, used through ``.run``). Derivatives in ``lam`` (and
    ``batch``) come from the implicit function theorem on the optimality condition
    ``grad_theta L_in(theta*, lam) = 0`` via ``jaxopt.implicit_diff.custom_root``:
    ``d theta*/d lam = -H^{-1} d^2 L_in / d theta d lam``; the solver's own iterations are never
    differentiated. The transposed linear system is solved by ``linear_solver`` (default CG with
    ``maxiter`` = 2 * number of parameters + 10 unless given, and relative tolerance ``tol``).

    Only meaningful when the solver reaches the optimum to tolerance (small / convex problems).
    """
    run = _as_solver_fn(solver)
    lin = resolve_solver(linear_solver)
    optimality = jax.grad(inner_loss, argnums=0)

    def linsolve(matvec, b):
        k = maxiter if maxiter is not None else 2 * _n_params(b) + 10
        return lin(matvec, b, maxiter=k, tol=tol)

    @implicit_diff.custom_root(optimality, solve=linsolve)
    def solve_fn(theta_init, lam, inner_batch):
        return run(theta_init, lam, inner_batch)

    return solve_fn


def argmin_hypergrad(inner_loss, outer_loss, solver, *, linear_solver="cg", maxiter: int | None = None,
                     tol: float = 1e-12, check: bool = False):
    """Hypergradient through a differentiable inner solve (:func:`argmin`).

    ``hypergrad(theta_init, lam, inner_batch, outer_batch) -> (F, dF/dlam)`` with
    ``F(lam) = L_out(theta*(lam), lam, outer_batch)`` and ``theta*`` solved from ``theta_init``.
    """
    solve = argmin(inner_loss, solver, linear_solver=linear_solver, maxiter=maxiter, tol=tol)

    def objective(lam, theta_init, inner_batch, outer_batch):
        return outer_loss(solve(theta_init, lam, inner_batch), lam, outer_batch)

    vg = jax.value_and_grad(objective)

    def hypergrad(theta_init, lam, inner_batch, outer_batch):
        return vg(lam, theta_init, inner_batch, outer_batch)

    return with_finite_check(hypergrad, "argmin hypergradient") if check else hypergrad


def gradient_descent_solver(inner_loss, *, lr, maxiter: int, tol: float = 0.0):
    """Plain gradient descent ``theta <- theta - lr * grad_theta L_in`` as an inner solver for :func:`argmin`.

    Runs at most ``maxiter`` steps and stops early once ``|grad| <= tol`` (``lax.while_loop``).
    """
    grad = jax.grad(inner_loss, argnums=0)

    def run(theta, lam, batch):
        def cond(c):
            k, _, gn = c
            return (k < maxiter) & (gn > tol)

        def body(c):
            k, t, _ = c
            t = tree_sgd_step(t, grad(t, lam, batch), lr)
            return k + 1, t, tree_norm(grad(t, lam, batch))

        g0 = tree_norm(grad(theta, lam, batch))
        return lax.while_loop(cond, body, (0, theta, g0))[1]

    return run


def newton_solver(inner_loss, *, maxiter: int = 20, tol: float = 0.0):
    """Undamped Newton's method with a materialised Hessian, for small strictly convex inner problems.

    ``theta <- theta - H^{-1} grad_theta L_in`` (``H`` from :func:`jaxrec.bilevel.dense_hessian`); at most
    ``maxiter`` iterations, stopping once ``|grad| <= tol``. Quadratic convergence makes ``1e-12`` cheap.
    """

    grad = jax.grad(inner_loss, argnums=0)

    def run(theta, lam, batch):
        def newton_step(t):
            H, unravel = dense_hessian(inner_loss, t, lam, batch)
            g = ravel_pytree(grad(t, lam, batch))[0]
            return tree_sub(t, unravel(jnp.linalg.solve(H, g)))

        def cond(c):
            k, _, gn = c
            return (k < maxiter) & (gn > tol)

        def body(c):
            k, t, _ = c
            t = newton_step(t)
            return k + 1, t, tree_norm(grad(t, lam, batch))

        return lax.while_loop(cond, body, (0, theta, tree_norm(grad(theta, lam, batch))))[1]

    return run
