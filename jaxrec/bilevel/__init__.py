"""Hypergradients for bilevel / meta-learning recommenders.

Every method is ``min_lam L_out(theta*(lam), lam)`` with ``theta*(lam)`` (approximately) minimising
``L_in(theta, lam)``. Each constructor returns a pure, jit-able, vmappable
``hypergrad(theta, lam, inner_batch, outer_batch) -> (outer_value, d_lam)``:

- :func:`unrolled` / :func:`unroll`: reverse mode through ``steps`` gradient-descent steps.
- :func:`one_step`: the one-step (DARTS) proxy.
- :func:`optax_step` / :func:`optax_update`: one step through any differentiable optax update (Adam, ...).
- :func:`implicit`: implicit-function-theorem hypergradient with CG / Neumann / jaxopt solvers and damping.
- :func:`argmin` / :func:`argmin_hypergrad`: a differentiable inner solve (``jaxopt.implicit_diff``).
- :func:`adapt` / :func:`maml_objective`: MAML / Meta-SGD / per-task-rate adaptation.
- :func:`alternating`: the "update theta on L_in, then lam through a hypergradient" training step;
  :func:`direct` the first-order hypergradient it takes for methods that ignore d theta / d lam.
- helpers :func:`hvp`, :func:`mixed_vjp`, diagnostics :func:`hypergrad_error`, :func:`check_finite`.
"""
from . import solvers
from .alternating import AlternatingStep, BilevelState, alternating, direct
from ._tree import tree_add, tree_axpy, tree_norm, tree_scale, tree_sgd_step, tree_sub, tree_vdot
from .argmin import argmin, argmin_hypergrad, gradient_descent_solver, newton_solver
from .derivatives import dense_hessian, grad_theta, hvp, hvp_fn, mixed_vjp
from .diagnostics import (NonFiniteError, all_finite, check_finite, checkify_finite, hypergrad_error,
                          with_finite_check)
from .implicit import implicit
from .maml import adapt, maml_objective
from .optax_step import optax_step, optax_update
from .solvers import cg, dense_solve, jaxopt_cg, neumann
from .unrolled import one_step, unroll, unrolled

__all__ = [
    "alternating", "direct", "optax_step", "optax_update", "AlternatingStep", "BilevelState", "unroll", "unrolled", "one_step", "implicit", "argmin", "argmin_hypergrad", "adapt", "maml_objective",
    "gradient_descent_solver", "newton_solver", "hvp", "hvp_fn", "mixed_vjp", "grad_theta", "dense_hessian",
    "cg", "neumann", "jaxopt_cg", "dense_solve", "solvers", "hypergrad_error", "check_finite", "all_finite",
    "checkify_finite", "with_finite_check", "NonFiniteError", "tree_add", "tree_sub", "tree_scale", "tree_axpy",
    "tree_vdot", "tree_norm", "tree_sgd_step",
]
