"""Implicit-function-theorem hypergradient at an (approximate) inner solution."""
from __future__ import annotations

import jax

from ._tree import tree_add, tree_axpy, tree_scale, tree_sub
from .derivatives import hvp_fn, mixed_vjp
from .diagnostics import with_finite_check
from .solvers import SOLVERS

__all__ = ["implicit", "resolve_solver"]


def resolve_solver(solver):
    """Map a solver name (``"cg"``, ``"neumann"``, ``"jaxopt"``, ``"dense"``) or callable to a solve function."""
    if callable(solver):
        return solver
    try:
        return SOLVERS[solver]
    except KeyError:
        raise ValueError(f"unknown linear solver {solver!r}; choose one of {sorted(SOLVERS)} or pass a "
                         "callable solve(matvec, b, *, maxiter, tol)") from None


def _is_zero(x) -> bool:
    return isinstance(x, (int, float)) and x == 0


def implicit(inner_loss, outer_loss, *, solver="cg", maxiter: int = 10, tol: float = 0.0,
             damping=0.0, prox_center=None, hvp_mode: str = "fwd_rev", neumann_alpha: float = 1.0,
             check: bool = False):
    """Implicit (IFT) hypergradient.

    Treats the given ``theta`` as the inner solution ``theta*(lam)`` of
    ``min_theta L_in(theta, lam) + damping/2 |theta - c(lam)|^2`` and returns
    ``hypergrad(theta, lam, inner_batch, outer_batch) -> (L_out(theta, lam), d_lam)`` with

        d_lam = grad_lam L_out - (d^2 L_in / d lam d theta) w + damping * (dc/dlam)^T w,
        (H + damping * I) w = grad_theta L_out,     H = d^2 L_in / d theta^2,

    the linear system solved matrix-free with Hessian-vector products. ``c(lam) = prox_center(lam)``; when
    ``prox_center`` is None the proximal centre is a constant ``theta_0`` (MAL-style proximal regulariser,
    last term vanishes). iMAML is ``prox_center=lambda lam: lam`` (centre = meta-parameters).

    Args:
      solver: ``"cg"`` (:func:`jaxrec.bilevel.solvers.cg`; with ``tol=0`` exactly ``maxiter`` iterations),
        ``"neumann"`` (truncated Neumann series with step ``neumann_alpha``), ``"jaxopt"``
        (``jaxopt.linear_solve.solve_cg``), ``"dense"`` (materialised Hessian, exact; small problems only)
        or a callable ``solve(matvec, b, *, maxiter, tol)``.
      maxiter, tol: passed to the solver.
      damping: ``gamma >= 0`` (python float or traced scalar).
      hvp_mode: ``"fwd_rev"`` (default, forward-over-reverse per product), ``"rev_rev"``, or ``"linearize"``
        (one stored linearisation of the gradient; more memory, and not faster on MF-BPR on CPU), see
        :func:`jaxrec.bilevel.hvp_fn`.
      check: wrap the result in :func:`jaxrec.bilevel.check_finite` (raises on NaN/inf).
    """
    solve = resolve_solver(solver)
    if solver == "neumann":
        base = solve
        solve = lambda mv, b, *, maxiter, tol: base(mv, b, maxiter=maxiter, tol=tol, alpha=neumann_alpha)
    vg_out = jax.value_and_grad(outer_loss, argnums=(0, 1))

    def hypergrad(theta, lam, inner_batch, outer_batch):
        val, (g_theta, g_lam) = vg_out(theta, lam, outer_batch)
        hv = hvp_fn(inner_loss, theta, lam, inner_batch, mode=hvp_mode)
        matvec = hv if _is_zero(damping) else (lambda v: tree_axpy(damping, v, hv(v)))
        w = solve(matvec, g_theta, maxiter=maxiter, tol=tol)
        d_lam = tree_sub(g_lam, mixed_vjp(inner_loss, theta, lam, w, inner_batch))
        if prox_center is not None:
            _, vjp_c = jax.vjp(prox_center, lam)
            d_lam = tree_add(d_lam, tree_scale(damping, vjp_c(w)[0]))
        return val, d_lam

    return with_finite_check(hypergrad, "implicit hypergradient") if check else hypergrad
