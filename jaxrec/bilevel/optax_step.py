"""One-step hypergradient through any differentiable optax update (lambda-Opt's "simulated Adam step").

:func:`one_step` simulates a plain gradient-descent step. A method whose inner optimiser is Adam (or any
optax chain: clipping, weight decay, schedules) can instead differentiate through *that* optimiser's next
update, with ``theta`` and the optimiser state held fixed::

    theta_bar(lam) = theta + tx.update(grad_theta L_in(theta, lam, inner_batch), opt_state, theta)[0]
    F(lam)         = L_out(theta_bar(lam), lam, outer_batch)

:func:`optax_update` is the map ``theta_bar`` itself (it also returns the new optimiser state), so the
simulated step is the real step: applying it with a fixed ``lam`` gives exactly what
``tx.update`` + ``optax.apply_updates`` give. :func:`optax_step` returns
``hypergrad(theta, lam, inner_batch, outer_batch, opt_state) -> (F, dF/dlam)``; in
:func:`jaxrec.bilevel.alternating` pass ``hypergrad_opt_state=True`` so the step hands it the inner
optimiser state.

Adam's ``sqrt(nu)`` has an infinite derivative at ``nu = 0`` (a row that has had no gradient yet), which
turns ``0 * inf`` into NaN in the hypergradient; use ``optax.adam(..., eps_root=1e-16)`` (or any
``eps_root > 0``), as optax recommends for differentiating through Adam.
"""
from __future__ import annotations

from typing import Callable

import jax
import optax

from .diagnostics import with_finite_check

__all__ = ["optax_update", "optax_step"]


def optax_update(inner_loss: Callable, tx: optax.GradientTransformation) -> Callable:
    """``update(theta, opt_state, lam, batch) -> (theta_new, opt_state_new)``: one step of ``tx`` on
    ``grad_theta inner_loss(theta, lam, batch)``; differentiable in ``lam`` and ``theta``."""
    grad_in = jax.grad(inner_loss, argnums=0)

    def update(theta, opt_state, lam, batch):
        upd, new_state = tx.update(grad_in(theta, lam, batch), opt_state, theta)
        return optax.apply_updates(theta, upd), new_state

    return update


def optax_step(inner_loss: Callable, outer_loss: Callable, tx: optax.GradientTransformation, *,
               wrt_theta: bool = False, check: bool = False) -> Callable:
    """One-step hypergradient through the optax update ``tx`` (see the module docstring):
    ``hypergrad(theta, lam, inner_batch, outer_batch, opt_state) -> (F, dF/dlam)``, or
    ``(F, (dF/dlam, dF/dtheta))`` with ``wrt_theta``; ``check=True`` raises on NaN/inf outputs."""
    update = optax_update(inner_loss, tx)

    def objective(theta, lam, inner_batch, outer_batch, opt_state):
        return outer_loss(update(theta, opt_state, lam, inner_batch)[0], lam, outer_batch)

    vg = jax.value_and_grad(objective, argnums=(1, 0) if wrt_theta else 1)

    def hypergrad(theta, lam, inner_batch, outer_batch, opt_state):
        return vg(theta, lam, inner_batch, outer_batch, opt_state)

    return with_finite_check(hypergrad, "optax-step hypergradient") if check else hypergrad
