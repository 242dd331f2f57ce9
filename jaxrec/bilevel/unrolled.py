"""Unrolled (reverse-mode through the inner loop) and one-step hypergradients."""
from __future__ import annotations

import jax
from jax import lax

from ._tree import tree_sgd_step
from .diagnostics import with_finite_check

__all__ = ["unroll", "unrolled", "one_step"]


def _resolve_lr(lr, lam):
    return lr(lam) if callable(lr) else lr


def _scan_unroll(scan_unroll, steps):
    """``lax.scan``'s ``unroll``: by default fully unroll short loops (<= 8 steps). On XLA:CPU this was 4-5x
    faster for the reverse pass of K = 5 steps on MF-BPR (see benchmarks/hypergrad_cost.py) at the price
    of compile time growing with ``steps``."""
    if scan_unroll is None:
        return True if steps <= 8 else 1
    return scan_unroll


def unroll(inner_loss, *, steps: int, lr, checkpoint: bool = False, per_step_batch: bool = False,
           scan_unroll=None, return_start_loss: bool = False):
    """Build the differentiable unrolled inner map ``theta_bar(theta, lam, inner_batch)``.

    ``theta_bar = U^steps(theta)`` with ``U(theta) = theta - lr * grad_theta L_in(theta, lam, batch)``
    (plain gradient descent, ``lax.scan`` over the steps). The result is differentiable in both ``theta``
    (the start point) and ``lam``, to any order, so it can sit inside a larger objective such as the
    Meta-Wrapper's ``L_in(theta, phi) + mu * L_out(theta_bar(theta, phi), phi)``.

    Args:
      inner_loss: ``(theta, lam, batch) -> scalar``.
      steps: number of gradient steps (static python int, ``>= 0``).
      lr: step size: a scalar, a pytree of per-parameter rates shaped like ``theta`` (Meta-SGD), or a
        callable ``lam -> scalar | pytree`` to make the rate a differentiable hyperparameter.
      checkpoint: wrap each step in ``jax.checkpoint``: the backward pass stores only the ``steps + 1``
        iterates and recomputes each step's internals (memory ``O(steps * |theta|)`` instead of also
        keeping every step's activations), at the price of one extra forward gradient per step.
      per_step_batch: if True, every leaf of ``inner_batch`` has a leading axis of length ``steps`` and step
        ``k`` uses slice ``k`` (mini-batch unrolling); otherwise all steps use the same batch.
      scan_unroll: ``unroll`` argument of ``lax.scan`` (int or bool). Default None: fully unrolled when
        ``steps <= 8`` (much faster on CPU), a rolled loop otherwise.
      return_start_loss: return ``(theta_bar, L_in(theta, lam, batch_0))``, the inner loss at the start point
        (``batch_0`` the first step's batch) as well. It comes from the first step's own forward pass, so an
        objective such as ``L_in(theta) + mu * L_out(theta_bar)`` does not evaluate ``L_in(theta)`` twice.
    """
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"unroll: steps must be >= 0, got {steps}")
    value_grad_in = jax.value_and_grad(inner_loss, argnums=0)
    unroll_arg = _scan_unroll(scan_unroll, steps)

    def theta_bar(theta, lam, inner_batch):
        rate = _resolve_lr(lr, lam)

        def step(t, batch):  # one GD step; its loss value comes with the gradient's forward pass
            value, g = value_grad_in(t, lam, batch)
            return tree_sgd_step(t, g, rate), value

        if checkpoint:
            step = jax.checkpoint(step)
        if per_step_batch:
            lens = {x.shape[0] for x in jax.tree.leaves(inner_batch)}
            if lens != {steps}:
                raise ValueError(
                    f"unroll(per_step_batch=True): every inner_batch leaf needs a leading axis of length "
                    f"steps={steps}; got leading sizes {sorted(lens)}"
                )
            out, losses = lax.scan(step, theta, inner_batch, unroll=unroll_arg)
        else:
            out, losses = lax.scan(lambda t, _: step(t, inner_batch), theta, None, length=steps, unroll=unroll_arg)
        if not return_start_loss:
            return out
        if steps > 0:
            return out, losses[0]
        if per_step_batch:
            raise ValueError("unroll(steps=0, per_step_batch=True, return_start_loss=True): there is no "
                             "step batch to evaluate the start loss on")
        return out, inner_loss(theta, lam, inner_batch)

    return theta_bar


def unrolled(inner_loss, outer_loss, *, steps: int, lr, checkpoint: bool = False, wrt_theta: bool = False,
             per_step_batch: bool = False, check: bool = False, scan_unroll=None):
    """Unrolled hypergradient: reverse mode through ``steps`` gradient-descent steps.

    With ``theta_bar(lam) = unroll(inner_loss, steps, lr)(theta, lam, inner_batch)`` (see :func:`unroll`)
    returns ``hypergrad(theta, lam, inner_batch, outer_batch) -> (F, dF/dlam)`` where
    ``F(lam) = L_out(theta_bar(lam), lam, outer_batch)`` and ``dF/dlam = grad_lam L_out + (d theta_bar /
    d lam)^T grad_theta L_out`` (the exact derivative of the truncated map, not of the true argmin).

    With ``wrt_theta=True`` the function returns ``(F, (dF/dlam, dF/dtheta))`` (as ``jax.value_and_grad`` with
    two ``argnums``): the gradient with respect to the starting point as well (joint theta/lam training).
    Every constructor returns the same shape, ``(value, gradient)``. ``check=True`` raises
:class:`jaxrec.bilevel.NonFiniteError` on NaN/inf outputs. All other options as in :func:`unroll`.
    """
    tbar = unroll(inner_loss, steps=steps, lr=lr, checkpoint=checkpoint, per_step_batch=per_step_batch,
                  scan_unroll=scan_unroll)

    def objective(theta, lam, inner_batch, outer_batch):
        return outer_loss(tbar(theta, lam, inner_batch), lam, outer_batch)

    return _hypergrad_of(objective, wrt_theta, check, "unrolled hypergradient")


def one_step(inner_loss, outer_loss, *, lr, wrt_theta: bool = False, check: bool = False):
    """One-step (DARTS, "second-order gradient") hypergradient proxy.

    ``theta~(lam) = theta - lr * grad_theta L_in(theta, lam, inner_batch)`` and the returned
    ``hypergrad(theta, lam, inner_batch, outer_batch) -> (L_out(theta~, lam), d/dlam L_out(theta~(lam), lam))``,
    i.e. ``grad_lam L_out(theta~) - lr * (d^2 L_in / d lam d theta) grad_theta L_out(theta~)``. ``lr`` as in
    :func:`unroll`; ``wrt_theta=True`` also returns the gradient in ``theta``; ``check=True`` raises on NaN/inf.
    """
    grad_in = jax.grad(inner_loss, argnums=0)

    def objective(theta, lam, inner_batch, outer_batch):
        tt = tree_sgd_step(theta, grad_in(theta, lam, inner_batch), _resolve_lr(lr, lam))
        return outer_loss(tt, lam, outer_batch)

    return _hypergrad_of(objective, wrt_theta, check, "one-step hypergradient")


def _hypergrad_of(objective, wrt_theta: bool, check: bool, what: str):
    """``hypergrad(theta, lam, inner_batch, outer_batch)`` returning ``(F, dF/dlam)`` of
    ``F = objective(theta, lam, inner_batch, outer_batch)``; ``(F, (dF/dlam, dF/dtheta))`` when ``wrt_theta``."""
    if wrt_theta:
        vg = jax.value_and_grad(objective, argnums=(1, 0))

        def hypergrad(theta, lam, inner_batch, outer_batch):
            return vg(theta, lam, inner_batch, outer_batch)
    else:
        hypergrad = jax.value_and_grad(objective, argnums=1)
    return with_finite_check(hypergrad, what) if check else hypergrad
