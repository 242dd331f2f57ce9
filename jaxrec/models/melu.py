"""MeLU's rating model (Lee et al., KDD 2019): field embeddings and a decision MLP.

One embedding table (``dim`` wide) per user field and per item field; a multi-valued item field (genre,
director, actor: a padded index list, -1 = padding) is the mean of its values' embeddings. The user
embedding ``h_u`` is the concatenation of the user field embeddings, the item embedding likewise; the
decision MLP maps ``[h_u, e_i]`` through ReLU layers of widths ``hidden`` to one rating.

Parameters are two pytrees so that the inner loop can adapt the decision layers alone:
``{"user": [tables], "item": [tables]}`` (embeddings) and ``[(W, b), ...]`` (decision layers).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["init", "user_embedding", "item_embedding", "decide", "decide_pair", "split_first", "mlp_init"]


def mlp_init(key, sizes) -> list:
    """``[(W, b), ...]`` for the layer sizes ``sizes`` (Glorot-uniform weights as PyTorch's MeLU uses
    ``xavier_uniform``-like defaults, zero biases)."""
    out = []
    for k, (a, b) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        lim = jnp.sqrt(6.0 / (a + b))
        out.append((jax.random.uniform(k, (a, b), minval=-lim, maxval=lim), jnp.zeros((b,))))
    return out


def init(key, user_vocab, item_vocab, dim: int = 32, hidden=(320, 192)) -> tuple[dict, list]:
    """``(embeddings, decision layers)`` for user fields of ``user_vocab`` values each, item fields of
    ``item_vocab`` values each; embeddings N(0, 0.1^2)."""
    ku, ki, kd = jax.random.split(key, 3)
    emb = {"user": [0.1 * jax.random.normal(k, (n, dim)) for k, n in zip(jax.random.split(ku, len(user_vocab)), user_vocab)],
           "item": [0.1 * jax.random.normal(k, (n, dim)) for k, n in zip(jax.random.split(ki, len(item_vocab)), item_vocab)]}
    d_in = dim * (len(user_vocab) + len(item_vocab))
    return emb, mlp_init(kd, (d_in, *hidden, 1))


def user_embedding(emb: dict, ux: jax.Array) -> jax.Array:
    """``h_u``: ux int[F_u] (one index per user field) -> [F_u * dim]."""
    return jnp.concatenate([t[ux[f]] for f, t in enumerate(emb["user"])])


def item_embedding(emb: dict, ix: tuple) -> jax.Array:
    """``e_i`` of a set of items: ix a tuple of int[n, W_f] padded index lists -> [n, F_i * dim]."""
    parts = []
    for t, idx in zip(emb["item"], ix):
        m = (idx >= 0).astype(t.dtype)
        e = t[jnp.maximum(idx, 0)] * m[..., None]
        parts.append(e.sum(-2) / jnp.maximum(m.sum(-1, keepdims=True), 1.0))
    return jnp.concatenate(parts, -1)


def decide(layers: list, x: jax.Array) -> jax.Array:
    """The decision MLP: ReLU hidden layers, linear output; x [..., d_in] -> [...]."""
    for w, b in layers[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = layers[-1]
    return (x @ w + b)[..., 0]


def split_first(layers: list, d_h: int) -> list:
    """``layers`` with the first layer's weight split at row ``d_h``: ``[((W1[:d_h], W1[d_h:]), b1), ...]`` --
    the user and item parts of the input ``[h, e]``, the form :func:`decide_pair` takes. Works on any pytree
    shaped like the layers (gradients, Meta-SGD's per-parameter rates)."""
    (w, b), rest = layers[0], list(layers[1:])
    return [((w[:d_h], w[d_h:]), b), *rest]


def _affine(x, layer, delta):
    w, b = layer
    y = x @ w + b
    return y if delta is None else y + x @ delta[0] + delta[1]


def decide_pair(layers: list, h: jax.Array, e: jax.Array, deltas: list | None = None) -> jax.Array:
    """``decide(layers + deltas, [h, e_j])`` for every row ``e_j`` of ``e`` with one user embedding ``h``;
    ``layers`` (and ``deltas``) in :func:`split_first` form.

    - The first layer is split, ``h @ W1_user`` once per user plus ``e @ W1_item`` per item, instead of
      repeating ``h`` on every row of a concatenated input (same math, half the first layer's per-row work
      at MeLU's shapes).
    - ``deltas`` (shaped like ``layers``, e.g. a user's inner-loop update) give the layers ``(W + dW, b +
      db)``, evaluated as ``x @ W + x @ dW + b + db``: under ``jax.vmap`` over users with shared ``layers``
      and per-user ``deltas``, the shared part stays one plain matmul over all users' rows and its gradient
      needs no reduction over a per-user copy of ``W``.

    h [..., d_h], e [..., n, d_e] -> [..., n]."""
    deltas = [None] * len(layers) if deltas is None else deltas
    ((wu, wi), b), d0 = layers[0], deltas[0]
    x = (h @ wu)[..., None, :] + e @ wi + b
    if d0 is not None:
        x = x + (h @ d0[0][0])[..., None, :] + e @ d0[0][1] + d0[1]
    for layer, delta in zip(layers[1:], deltas[1:]):
        x = _affine(jax.nn.relu(x), layer, delta)
    return x[..., 0]
