"""Interaction functions (IFCs) for rating prediction: SIF's search space and the fixed-IFC baselines.

Search space (Yao et al., WWW 2020)::

    p(x) = W2 . tanh(W1 x + b1) + b2          a scalar MLP 1 -> 8 -> 1 applied to every coordinate (q likewise)
    o_m(p(u), q(v)),  m in OPS = plus, multiply, max, min, concat
    score_m = w_m^T o_m(p(u), q(v)),  |w_m|_2 <= 1     (w_m in R^k, R^2k for concat)
    prediction = sum_m alpha_m score_m

:func:`op_scores` evaluates all five operations in one pass (``[B, 5]``); a one-hot ``alpha`` selects one.

Fixed IFCs (no p, q; :data:`FIXED`): ``mf`` (inner product through w, "AltGrad"), ``plus``, ``max``,
``min`` (``w^T op(u, v)``), ``deepwide`` (``[u; v]`` -> k ReLU -> 1), ``ncf`` (``w^T tanh(u*v + H[u; v] +
b)``), ``conv`` (circular convolution of u and v by FFT, through w), ``outer`` (flattened ``u v^T`` through
a linear layer). Rows of every output layer are kept in the unit ball by :func:`project`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["OPS", "FIXED", "HIDDEN", "mlp_init", "mlp_apply", "mlp_project", "op_outputs", "op_scores",
           "init_weights", "init_fixed", "predict_fixed", "project", "pq_flat", "pq_unflat", "PQ_SIZE"]

OPS = ("plus", "multiply", "max", "min", "concat")
FIXED = ("mf", "plus", "max", "min", "deepwide", "ncf", "conv", "outer")
HIDDEN = 8
PQ_SIZE = 2 * (3 * HIDDEN + 1)  # p and q: W1, b1, W2 (8 each) and b2


# ------------------------------------------------------------------------------ the element-wise MLPs
def mlp_init(key, hidden: int = HIDDEN) -> dict:
    """PyTorch's default ``nn.Linear`` initialisation of ``Linear(1, 8) -> tanh -> Linear(8, 1)``:
    uniform in ``+-1/sqrt(fan_in)``."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    s2 = 1.0 / jnp.sqrt(hidden)
    return {"W1": jax.random.uniform(k1, (hidden,), minval=-1.0, maxval=1.0),
            "b1": jax.random.uniform(k2, (hidden,), minval=-1.0, maxval=1.0),
            "W2": jax.random.uniform(k3, (hidden,), minval=-s2, maxval=s2),
            "b2": jax.random.uniform(k4, (), minval=-s2, maxval=s2)}


def mlp_apply(m: dict, x: jax.Array) -> jax.Array:
    """``p(x) = W2 . tanh(W1 x + b1) + b2`` on every coordinate of ``x`` (any shape)."""
    return jnp.tensordot(jnp.tanh(x[..., None] * m["W1"] + m["b1"]), m["W2"], axes=1) + m["b2"]


def _ball(w: jax.Array, axis=-1) -> jax.Array:
    """Project onto the unit l2 ball along ``axis`` (divide by ``max(|w|, 1)``, as the official ``constrain``)."""
    return w / jnp.maximum(jnp.linalg.norm(w, axis=axis, keepdims=True), 1.0)


def mlp_project(m: dict) -> dict:
    """Rows of the MLP's weight matrices in the unit ball: ``W1`` is 8 x 1 (each row a scalar: clip to
    [-1, 1]), ``W2`` is 1 x 8 (one row: the l2 ball); biases free."""
    return {**m, "W1": jnp.clip(m["W1"], -1.0, 1.0), "W2": _ball(m["W2"])}


def pq_flat(pq: dict) -> jax.Array:
    """``{"p", "q"}`` MLPs -> a flat vector of :data:`PQ_SIZE` floats (order W1, b1, W2, b2; p then q)."""
    return jnp.concatenate([jnp.concatenate([m["W1"], m["b1"], m["W2"], m["b2"][None]]) for m in (pq["p"], pq["q"])])


def pq_unflat(v) -> dict:
    """Inverse of :func:`pq_flat`."""
    v = jnp.asarray(v, dtype=jnp.result_type(float))
    h, n = HIDDEN, 3 * HIDDEN + 1
    one = lambda a: {"W1": a[:h], "b1": a[h:2 * h], "W2": a[2 * h:3 * h], "b2": a[3 * h]}  # noqa: E731
    return {"p": one(v[:n]), "q": one(v[n:2 * n])}


# ----------------------------------------------------------------------------- the five operations
def op_outputs(pu: jax.Array, qv: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``([..., 4, k], [..., 2k])``: plus, multiply, max, min stacked, and concat."""
    four = jnp.stack([pu + qv, pu * qv, jnp.maximum(pu, qv), jnp.minimum(pu, qv)], axis=-2)
    return four, jnp.concatenate([pu, qv], axis=-1)


def op_scores(w: dict, pu: jax.Array, qv: jax.Array) -> jax.Array:
    """``[..., 5]``: ``w_m^T o_m(pu, qv)`` for every operation of :data:`OPS`, in one pass.
    ``w = {"w4": [4, k], "wc": [2k]}``."""
    four, cat = op_outputs(pu, qv)
    return jnp.concatenate([jnp.einsum("...mk,mk->...m", four, w["w4"]), (cat @ w["wc"])[..., None]], axis=-1)


def init_weights(key, n_users: int, n_items: int, dim: int, init_scale: float = 1.0) -> dict:
    """SIF's trained weights: embeddings ``U``, ``V`` (normal * ``init_scale``, PyTorch's ``nn.Embedding``
    is N(0, 1)) and the output vectors ``w4`` / ``wc`` (uniform +-1/sqrt(fan_in), projected)."""
    ku, kv, k4, kc = jax.random.split(key, 4)
    s1, s2 = 1 / jnp.sqrt(dim), 1 / jnp.sqrt(2 * dim)
    return project({"U": init_scale * jax.random.normal(ku, (n_users, dim)),
                    "V": init_scale * jax.random.normal(kv, (n_items, dim)),
                    "w4": jax.random.uniform(k4, (4, dim), minval=-s1, maxval=s1),
                    "wc": jax.random.uniform(kc, (2 * dim,), minval=-s2, maxval=s2)})


# ------------------------------------------------------------------------------------ fixed IFCs
def init_fixed(key, name: str, n_users: int, n_items: int, dim: int, init_scale: float = 1.0) -> dict:
    """Parameters of the fixed IFC ``name`` (one of :data:`FIXED`): ``U``, ``V`` and its output layers."""
    if name not in FIXED:
        raise ValueError(f"unknown fixed interaction function {name!r}; use one of {', '.join(FIXED)}")
    ku, kv, k1, k2, k3 = jax.random.split(key, 5)
    uni = lambda k, shape, fan: jax.random.uniform(k, shape, minval=-fan ** -0.5, maxval=fan ** -0.5)  # noqa: E731
    p = {"U": init_scale * jax.random.normal(ku, (n_users, dim)),
         "V": init_scale * jax.random.normal(kv, (n_items, dim))}
    if name in ("mf", "plus", "max", "min", "conv"):
        p["w"] = uni(k1, (dim,), dim)
    elif name == "outer":
        p["w"] = uni(k1, (dim * dim,), dim * dim)
    elif name == "deepwide":
        p.update(H=uni(k1, (dim, 2 * dim), 2 * dim), b=uni(k2, (dim,), 2 * dim), w=uni(k3, (dim,), dim))
    elif name == "ncf":
        p.update(H=uni(k1, (dim, 2 * dim), 2 * dim), b=uni(k2, (dim,), 2 * dim), w=uni(k3, (dim,), dim))
    return project(p)


def predict_fixed(name: str, params: dict, u: jax.Array, v: jax.Array) -> jax.Array:
    """Predictions ``[B]`` of the fixed IFC ``name`` from embeddings ``u``, ``v`` of shape ``[B, k]``."""
    w = params["w"]
    if name == "mf":
        return (u * v) @ w
    if name == "plus":
        return (u + v) @ w
    if name == "max":
        return jnp.maximum(u, v) @ w
    if name == "min":
        return jnp.minimum(u, v) @ w
    if name == "conv":  # circular convolution (u * v)_n = sum_j u_j v_{(n - j) mod k}
        k = u.shape[-1]
        return jnp.fft.irfft(jnp.fft.rfft(u, axis=-1) * jnp.fft.rfft(v, axis=-1), n=k, axis=-1) @ w
    if name == "outer":
        return (u[..., :, None] * v[..., None, :]).reshape(*u.shape[:-1], -1) @ w
    cat = jnp.concatenate([u, v], axis=-1)
    if name == "deepwide":
        return jax.nn.relu(cat @ params["H"].T + params["b"]) @ w
    if name == "ncf":
        return jnp.tanh(u * v + cat @ params["H"].T + params["b"]) @ w
    raise ValueError(f"unknown fixed interaction function {name!r}; use one of {', '.join(FIXED)}")


def project(params: dict) -> dict:
    """Keep every output layer's rows in the unit l2 ball (``w``, ``w4`` rows, ``wc``, ``H`` rows);
    embeddings and biases are free."""
    out = dict(params)
    for name in ("w", "wc"):
        if name in out:
            out[name] = _ball(out[name])
    for name in ("w4", "H"):
        if name in out:
            out[name] = _ball(out[name], axis=-1)
    return out
