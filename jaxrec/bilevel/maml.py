"""MAML building blocks: differentiable task adaptation and the batched meta-objective."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ._tree import tree_sgd_step
from .unrolled import _scan_unroll

__all__ = ["adapt", "maml_objective"]


def adapt(loss, params, support, lr, steps: int, *, first_order: bool = False, checkpoint: bool = False,
          scan_unroll=None):
    """Adapt ``params`` to one task: ``steps`` gradient steps on the support set.

    ``phi_0 = params``, ``phi_{k+1} = phi_k - lr * grad_phi loss(phi_k, support)``; returns ``phi_steps``.

    ``lr`` is a scalar (MAML), a pytree shaped like ``params`` of per-parameter rates (Meta-SGD; leaves
    broadcast against the matching parameter), or a per-task 0-d value, e.g. computed from task features
    inside ``jax.vmap`` (PAML): ``jax.vmap(lambda s, f: adapt(loss, params, s, rate(w, f), 2))(supports, feats)``.
    The result is differentiable to second order in ``params`` and ``lr`` (``first_order=True`` stops the
    gradient through the inner gradients: first-order MAML). ``checkpoint=True`` rematerialises each step in
    the backward pass. ``scan_unroll`` as in :func:`jaxrec.bilevel.unroll` (default: fully unrolled for
    ``steps <= 8``). Pure and vmappable over tasks.
    """
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"adapt: steps must be >= 0, got {steps}")
    grad = jax.grad(loss, argnums=0)

    def step(p, _):
        g = grad(p, support)
        if first_order:
            g = lax.stop_gradient(g)
        return tree_sgd_step(p, g, lr), None

    if checkpoint:
        step = jax.checkpoint(step)
    out, _ = lax.scan(step, params, None, length=steps, unroll=_scan_unroll(scan_unroll, steps))
    return out


def maml_objective(loss, *, steps: int, first_order: bool = False, query_loss=None, per_task_lr: bool = False):
    """Batched MAML meta-objective over a leading task axis.

    Returns ``objective(params, lr, supports, queries) -> mean_t L_q(adapt(params, supports[t], lr_t), queries[t])``
    where ``L_q = query_loss`` (default ``loss``). ``supports``/``queries`` are pytrees with a leading task axis;
    ``lr`` is shared across tasks (scalar or per-parameter pytree) or, with ``per_task_lr=True``, has a leading
    task axis too (e.g. PAML rates computed from task features). Differentiate it with ``jax.grad`` for the
    second-order meta-gradient in ``params`` and ``lr``.
    """
    lq = loss if query_loss is None else query_loss

    def task(params, lr, support, query):
        return lq(adapt(loss, params, support, lr, steps, first_order=first_order), query)

    def objective(params, lr, supports, queries):
        per_task = jax.vmap(task, in_axes=(None, 0 if per_task_lr else None, 0, 0))(params, lr, supports, queries)
        return jnp.mean(per_task)

    return objective
