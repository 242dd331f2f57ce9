"""The alternating bilevel step: update ``theta`` on the inner loss, then ``lam`` on the outer loss at the new
``theta`` through a hypergradient mode.

Every bilevel method in jaxrec trains this way (MAL's Theta / Lambda updates, Meta-Wrapper's M3, MCLRec's
two stages, lambda-Opt's regularisation weights), so it is written once here, in the style of optax: a
small NamedTuple of pure functions built from the pieces that differ::

    step = bl.alternating(inner_loss, bl.one_step(inner_loss, outer_loss, lr=1e-2),
                          inner_tx=optax.adam(1e-3), outer_tx=optax.adam(1e-2))
    state = step.init(theta, lam)
    state, aux = jax.jit(step.update)(state, inner_batch, outer_batch)   # aux: {"inner", "outer"}

``hypergrad`` is any constructor of this package (``one_step``, ``unrolled``, ``implicit``,
``argmin_hypergrad``, :func:`direct`) or ``None`` for a fixed ``lam`` (then only ``theta`` moves and
``aux["outer"]`` is ``outer_loss`` at the new ``theta`` when ``outer_loss`` is given).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["BilevelState", "AlternatingStep", "alternating", "direct"]


class BilevelState(NamedTuple):
    """``theta`` (inner parameters), ``lam`` (outer / meta parameters), their optax states, a step counter."""

    theta: Any
    lam: Any
    inner_opt: Any
    outer_opt: Any
    step: jax.Array


class AlternatingStep(NamedTuple):
    """``init(theta, lam) -> BilevelState``; ``inner(state, inner_batch) -> (state, loss, inner_aux)`` (the
    theta update alone); ``outer(state, inner_batch, outer_batch) -> (state, outer_value)`` (the lam update
    alone, at the state's theta); ``update(state, inner_batch, outer_batch) -> (state, aux)`` (both, in that
    order, ``aux = {"inner": L_in before the update, "outer": outer value, **inner_aux}``)."""

    init: Callable
    inner: Callable
    outer: Callable
    update: Callable


def direct(outer_loss: Callable) -> Callable:
    """The first-order "hypergradient" ``(theta, lam, inner_batch, outer_batch) -> (L_out, grad_lam L_out)``:
    ``theta`` is treated as independent of ``lam`` (Meta-Wrapper's M3, MCLRec's augmenter stage)."""
    vg = jax.value_and_grad(outer_loss, argnums=1)

    def hypergrad(theta, lam, inner_batch, outer_batch):
        return vg(theta, lam, outer_batch)

    return hypergrad


def alternating(inner_loss: Callable, hypergrad: Callable | None, inner_tx: optax.GradientTransformation,
                outer_tx: optax.GradientTransformation | None = None, *, outer_loss: Callable | None = None,
                has_aux: bool = False, hypergrad_opt_state: bool = False) -> AlternatingStep:
    """Build the alternating step from ``inner_loss(theta, lam, batch)`` (``-> (loss, aux_dict)`` with
    ``has_aux``), a hypergradient ``hypergrad(theta, lam, inner_batch, outer_batch) -> (value, d_lam)`` (or
    ``None``: ``lam`` stays fixed) and the two optax transformations.

    One ``update``: ``g = grad_theta L_in(theta, lam)``, ``theta <- theta + inner_tx(g)``; then
    ``(v, d_lam) = hypergrad(theta_new, lam, inner_batch, outer_batch)``, ``lam <- lam + outer_tx(d_lam)``.
    Weight decay, clipping and schedules are optax combinators of ``inner_tx`` / ``outer_tx``.
    ``hypergrad_opt_state=True``: ``hypergrad`` also takes the inner optimiser state as a fifth argument
    (:func:`jaxrec.bilevel.optax_step`, a hypergradient through the inner optimiser's own next update).
    """
    if hypergrad is not None and outer_tx is None:
        raise ValueError("alternating: a hypergradient needs outer_tx (the optax transformation of lam)")
    vg = jax.value_and_grad(inner_loss, argnums=0, has_aux=has_aux)

    def init(theta, lam) -> BilevelState:
        outer_opt = outer_tx.init(lam) if outer_tx is not None else None
        return BilevelState(theta, lam, inner_tx.init(theta), outer_opt, jnp.zeros((), jnp.int32))

    def inner(state: BilevelState, inner_batch):
        out, g = vg(state.theta, state.lam, inner_batch)
        loss, aux = out if has_aux else (out, {})
        upd, inner_opt = inner_tx.update(g, state.inner_opt, state.theta)
        return state._replace(theta=optax.apply_updates(state.theta, upd), inner_opt=inner_opt), loss, aux

    def outer(state: BilevelState, inner_batch, outer_batch):
        if hypergrad is None:
            value = (outer_loss(state.theta, state.lam, outer_batch) if outer_loss is not None
                     else jnp.zeros((), jnp.result_type(float)))
            return state, value
        extra = (state.inner_opt,) if hypergrad_opt_state else ()
        value, d_lam = hypergrad(state.theta, state.lam, inner_batch, outer_batch, *extra)
        upd, outer_opt = outer_tx.update(d_lam, state.outer_opt, state.lam)
        return state._replace(lam=optax.apply_updates(state.lam, upd), outer_opt=outer_opt), value

    def update(state: BilevelState, inner_batch, outer_batch):
        state, loss, aux = inner(state, inner_batch)
        state, value = outer(state, inner_batch, outer_batch)
        return state._replace(step=state.step + 1), {"inner": loss, "outer": value, **aux}

    return AlternatingStep(init, inner, outer, update)
