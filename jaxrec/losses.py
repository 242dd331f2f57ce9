"""Generic, numerically stable losses (dtype-agnostic, jit/vmap/grad friendly).

Method-specific losses live with their method in ``jaxrec/methods/``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["bpr_loss", "bce_with_logits", "softmax_cross_entropy", "l2", "reduce"]


def reduce(x: jnp.ndarray, reduction: str = "mean", weights: jnp.ndarray | None = None) -> jnp.ndarray:
    """Reduce per-example losses: ``"mean"`` (weighted mean ``Σ w x / Σ w`` if ``weights``), ``"sum"``
    (``Σ w x``) or ``"none"`` (``w x``)."""
    if weights is not None:
        weights = jnp.asarray(weights, dtype=x.dtype)
        wx = x * weights
    else:
        wx = x
    if reduction == "none":
        return wx
    if reduction == "sum":
        return jnp.sum(wx)
    if reduction == "mean":
        if weights is None:
            return jnp.mean(x)
        return jnp.sum(wx) / jnp.maximum(jnp.sum(jnp.broadcast_to(weights, x.shape)), 1e-12)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def bpr_loss(pos_scores, neg_scores, reduction: str = "mean", weights=None) -> jnp.ndarray:
    """Bayesian personalised ranking loss ``-log σ(s_pos - s_neg) = softplus(s_neg - s_pos)``.

    ``pos_scores: [B]``, ``neg_scores: [B]`` or ``[B, n_neg]`` (then ``pos`` is broadcast over the
    negatives). Stable for large score gaps (uses ``softplus``, never ``log(sigmoid)``).
    """
    pos = jnp.asarray(pos_scores)
    neg = jnp.asarray(neg_scores)
    if neg.ndim == pos.ndim + 1:
        pos = pos[..., None]
    return reduce(jax.nn.softplus(neg - pos), reduction, weights)


def bce_with_logits(logits, labels, reduction: str = "mean", weights=None) -> jnp.ndarray:
    """Binary cross-entropy on logits ``x`` with labels ``y ∈ [0, 1]``:
    ``-(y log σ(x) + (1 - y) log(1 - σ(x))) = max(x, 0) - x y + log(1 + exp(-|x|))`` (stable)."""
    x = jnp.asarray(logits)
    y = jnp.asarray(labels, dtype=x.dtype)
    per = jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))
    return reduce(per, reduction, weights)


def softmax_cross_entropy(logits, labels, reduction: str = "mean", weights=None) -> jnp.ndarray:
    """Softmax cross-entropy ``-Σ_c p_c log softmax(z)_c`` over the last axis.

    ``labels`` is either integer class indices with shape ``logits.shape[:-1]`` (then ``p`` is one-hot)
    or a probability array with the shape of ``logits``.
    """
    z = jnp.asarray(logits)
    logp = jax.nn.log_softmax(z, axis=-1)
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        per = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    else:
        per = -jnp.sum(labels.astype(z.dtype) * logp, axis=-1)
    return reduce(per, reduction, weights)


def l2(tree) -> jnp.ndarray:
    """Squared L2 norm of a pytree: ``Σ_leaves Σ x^2`` (no factor 1/2)."""
    leaves = [jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.asarray(0.0)
    return sum(leaves[1:], leaves[0])
