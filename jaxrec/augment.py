"""Vectorised on-device sequence augmentations (CL4SRec: crop, mask, reorder).

All functions act on a whole batch of **left-padded** sequences ``seq[B, L]`` (real items right-aligned,
padding id 0 in front; the layout of :mod:`jaxrec.models.sasrec`) and a per-row length ``n[B]`` (the
number of real items; by default ``(seq != 0).sum(-1)``). They are pure, jittable and loop-free: every
row draws its own randomness from one ``jax.random`` key. For a sequence ``s_1..s_n``:

- ``crop``: keep ``c = floor(eta n)`` consecutive items ``s_{a+1}..s_{a+c}``, ``a ~ U{0..n-c}``;
  the result has length ``c`` and is re-left-padded.
- ``mask``: set ``floor(gamma n)`` positions, a uniform random subset of the ``n`` real ones, to the
  padding id 0; the length (and the position of every other item) is unchanged.
- ``reorder``: shuffle a window of ``r = floor(beta n)`` consecutive items, ``a ~ U{0..n-r}``, with a
  uniform random permutation.

Ratios are applied with exact integer arithmetic (``floor(ratio * n)`` for ratios given to 1e-4).
Sequences of length <= 1 are returned unchanged by every operator. :func:`two_views` picks, per row, two
**different** operators uniformly at random (an ordered pair of distinct operators) and returns the two views.

The window start is uniform over all ``n - c + 1`` valid windows (the authors' ``randint(0, n-c-1)``
never picks the window that ends at the last item; we do not reproduce that quirk).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["seq_lengths", "crop", "mask", "reorder", "two_views", "OPERATORS"]

OPERATORS = ("crop", "mask", "reorder")
_SCALE = 10_000


def seq_lengths(seq: jnp.ndarray) -> jnp.ndarray:
    """Number of real (non-zero) items per row, ``int32[B]``."""
    return jnp.sum(seq != 0, axis=-1).astype(jnp.int32)


def _floor_ratio(n: jnp.ndarray, ratio: float) -> jnp.ndarray:
    """``floor(ratio * n)`` in integer arithmetic (ratio rounded to 1e-4)."""
    r = int(round(float(ratio) * _SCALE))
    return (n.astype(jnp.int64 if jax.config.jax_enable_x64 else jnp.int32) * r // _SCALE).astype(jnp.int32)


def _uniform_start(key, n, width):
    """Per-row integer ``a ~ U{0..n-width}`` (0 when ``width > n``)."""
    u = jax.random.uniform(key, n.shape)
    hi = jnp.maximum(n - width, 0)
    return jnp.minimum(jnp.floor(u * (hi + 1)).astype(jnp.int32), hi)


def _check(seq):
    if seq.ndim != 2:
        raise ValueError(f"augmentations expect a batch of sequences [B, L], got shape {seq.shape}")


def crop(key, seq, n=None, ratio: float = 0.5):
    """Keep ``floor(ratio n)`` consecutive items at a uniform random offset; re-left-pad the result."""
    _check(seq)
    n = seq_lengths(seq) if n is None else n
    L = seq.shape[-1]
    c = _floor_ratio(n, ratio)
    a = _uniform_start(key, n, c)
    p = jnp.arange(L)[None, :]
    j = p - (L - c)[:, None]                                  # index within the crop
    src = (L - n + a)[:, None] + j                            # position of that item in ``seq``
    out = jnp.where(j >= 0, jnp.take_along_axis(seq, jnp.clip(src, 0, L - 1), axis=-1), 0)
    return jnp.where((n <= 1)[:, None], seq, out).astype(seq.dtype)


def mask(key, seq, n=None, ratio: float = 0.5):
    """Set ``floor(ratio n)`` uniformly chosen real positions to the padding id 0."""
    _check(seq)
    n = seq_lengths(seq) if n is None else n
    L = seq.shape[-1]
    k = _floor_ratio(n, ratio)
    real = jnp.arange(L)[None, :] >= (L - n)[:, None]
    u = jnp.where(real, jax.random.uniform(key, seq.shape), 2.0)   # padding sorts last
    rank = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)
    hit = rank < k[:, None]
    return jnp.where(hit, 0, seq).astype(seq.dtype)


def reorder(key, seq, n=None, ratio: float = 0.8):
    """Shuffle a random window of ``floor(ratio n)`` consecutive items with a uniform permutation.

    Sort keys are the position itself outside the window and ``start + U[0, r)`` inside, so a stable
    argsort leaves everything outside in place and permutes the window uniformly.
    """
    _check(seq)
    n = seq_lengths(seq) if n is None else n
    L = seq.shape[-1]
    r = _floor_ratio(n, ratio)
    ka, kp = jax.random.split(key)
    a = _uniform_start(ka, n, r)
    start = (L - n + a)[:, None]
    p = jnp.arange(L)[None, :]
    inside = (p >= start) & (p < start + r[:, None])
    u = jax.random.uniform(kp, seq.shape)
    keys = jnp.where(inside, start + u * r[:, None], p.astype(u.dtype))
    perm = jnp.argsort(keys, axis=-1)
    return jnp.take_along_axis(seq, perm, axis=-1).astype(seq.dtype)


def apply_operator(key, seq, op, n=None, crop_ratio=0.5, mask_ratio=0.5, reorder_ratio=0.8):
    """Apply operator ``op[b]`` (0 crop, 1 mask, 2 reorder) to row ``b``; all three run, one is selected."""
    n = seq_lengths(seq) if n is None else n
    k1, k2, k3 = jax.random.split(key, 3)
    outs = jnp.stack(
        [crop(k1, seq, n, crop_ratio), mask(k2, seq, n, mask_ratio), reorder(k3, seq, n, reorder_ratio)]
    )  # [3, B, L]
    return jnp.take_along_axis(outs, op[None, :, None], axis=0)[0]


def two_views(key, seq, crop_ratio=0.5, mask_ratio=0.5, reorder_ratio=0.8, return_ops=False):
    """Two stochastic views of every row, made with two different operators chosen per row.

    ``op1 ~ U{0,1,2}``, ``op2 = (op1 + U{1,2}) mod 3`` (so every ordered pair of distinct operators has
    probability 1/6). Returns ``(view1, view2)`` (and ``(op1, op2)`` with ``return_ops=True``).
    """
    _check(seq)
    n = seq_lengths(seq)
    ko1, ko2, k1, k2 = jax.random.split(key, 4)
    b = seq.shape[0]
    op1 = jax.random.randint(ko1, (b,), 0, 3)
    op2 = (op1 + jax.random.randint(ko2, (b,), 1, 3)) % 3
    v1 = apply_operator(k1, seq, op1, n, crop_ratio, mask_ratio, reorder_ratio)
    v2 = apply_operator(k2, seq, op2, n, crop_ratio, mask_ratio, reorder_ratio)
    if return_ops:
        return v1, v2, (op1, op2)
    return v1, v2
