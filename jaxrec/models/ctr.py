"""CTR predictors over behaviour histories: shared embedding / dense parts and the baselines
Base (sum pooling), Wide&Deep, PNN, DeepFM and DIN (attentive interest selector).

A batch is a dict with ``target: int[B]``, ``hist: int[B, T]`` (0 = padding) and optionally
``target_cat: int[B]``, ``hist_cat: int[B, T]`` (see :class:`jaxrec.data.ctr.CTRData`).

Every model embeds items (and categories where present; the item and category vectors are concatenated,
``e = [E_item[v], E_cat[c(v)]]``), pools the history into a user vector ``r^_u`` and feeds dense layers
with sigmoid activations (default ``(80, 40)``) to one logit. Parameters are a dict pytree:

* ``"emb"``  -- embedding tables (theta),
* ``"mlp"``  -- the predictor's dense layers (theta),
* ``"sel"``  -- the interest selector g_phi (DIN only; phi),
* ``"wide"`` / ``"fm"`` -- the linear parts of Wide&Deep / DeepFM (theta).

:func:`split_params` separates ``theta`` (predictor incl. embeddings) from ``phi`` (selector), which is
what the Meta-Wrapper bilevel problem needs. All functions are pure and dtype-agnostic: cast the params
with :func:`cast_params` to run in float64.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "CTRModelConfig",
    "MODELS",
    "MLP",
    "Embeddings",
    "InterestSelector",
    "init_params",
    "ctr_logits",
    "embed_batch",
    "interest_weights",
    "split_params",
    "merge_params",
    "cast_params",
]

MODELS = ("base", "wdl", "pnn", "deepfm", "din")


@dataclasses.dataclass(frozen=True)
class CTRModelConfig:
    """Sizes of a CTR model. ``n_items`` / ``n_cats`` count real ids (tables get one extra row for the
    padding id 0). ``dropout`` applies to the predictor's hidden layers in training mode only."""

    n_items: int
    n_cats: int = 0
    emb_dim: int = 16
    hidden: tuple[int, ...] = (80, 40)
    att_hidden: tuple[int, ...] = (80, 40)
    dropout: float = 0.0
    wide_buckets: int = 1 << 16
    emb_init_std: float = 0.1


class MLP(nn.Module):
    """Dense layers with sigmoid activations and a linear output: ``h_{l+1} = sigmoid(W_l h_l + b_l)``,
    ``out = W_L h_L + b_L``. Optional dropout after each hidden layer (``deterministic=False``)."""

    hidden: tuple[int, ...]
    out: int = 1
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        for width in self.hidden:
            x = nn.sigmoid(nn.Dense(width)(x))
            if self.dropout > 0:
                x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        return nn.Dense(self.out)(x)


class Embeddings(nn.Module):
    """Item (and category) embedding tables; ``e(v) = [E_item[v], E_cat[c]]`` (concatenated)."""

    n_items: int
    n_cats: int
    dim: int
    init_std: float = 0.1

    def setup(self):
        init = nn.initializers.normal(self.init_std)
        self.item = nn.Embed(self.n_items + 1, self.dim, embedding_init=init)
        if self.n_cats > 0:
            self.cat = nn.Embed(self.n_cats + 1, self.dim, embedding_init=init)

    def __call__(self, ids, cats=None):
        e = self.item(ids)
        if self.n_cats > 0:
            if cats is None:
                raise ValueError("model was built with categories (n_cats > 0) but the batch has none")
            e = jnp.concatenate([e, self.cat(cats)], axis=-1)
        return e


class InterestSelector(nn.Module):
    """DIN's attention unit g_phi: one relevance score per behaviour,
    ``s[t] = MLP([e_t, e_v, e_t - e_v, e_t * e_v])`` (sigmoid hidden layers, linear output, no softmax),
    set to 0 at padded positions."""

    hidden: tuple[int, ...] = (80, 40)

    @nn.compact
    def __call__(self, hist_e, target_e, mask):
        tv = jnp.broadcast_to(target_e[:, None, :], hist_e.shape)
        x = jnp.concatenate([hist_e, tv, hist_e - tv, hist_e * tv], axis=-1)
        s = MLP(self.hidden, out=1)(x)[..., 0]
        return jnp.where(mask, s, jnp.zeros_like(s))


def _embedder(cfg: CTRModelConfig) -> Embeddings:
    return Embeddings(cfg.n_items, cfg.n_cats, cfg.emb_dim, cfg.emb_init_std)


def _n_fields(cfg: CTRModelConfig) -> int:
    return 4 if cfg.n_cats > 0 else 2


def init_params(cfg: CTRModelConfig, kind: str, key: jax.Array) -> dict[str, Any]:
    """Initial parameters of model ``kind`` (one of :data:`MODELS`) as a dict pytree (float32)."""
    if kind not in MODELS:
        raise ValueError(f"unknown CTR model {kind!r}; choose one of {MODELS}")
    k_emb, k_mlp, k_sel, k_lin = jax.random.split(key, 4)
    d = cfg.emb_dim * (2 if cfg.n_cats > 0 else 1)
    ids = jnp.ones((1, 2), jnp.int32)
    params = {"emb": _embedder(cfg).init(k_emb, ids, ids if cfg.n_cats else None)["params"]}
    n_in = {"base": 2 * d, "din": 2 * d, "wdl": 2 * d, "deepfm": 2 * d}.get(kind)
    if kind == "pnn":
        f = _n_fields(cfg)
        n_in = f * cfg.emb_dim + f * (f - 1) // 2
    if kind == "deepfm":
        n_in = _n_fields(cfg) * cfg.emb_dim
    params["mlp"] = MLP(cfg.hidden, 1, cfg.dropout).init(k_mlp, jnp.zeros((1, n_in)))["params"]
    if kind == "din":
        z = jnp.zeros((1, 2, d))
        params["sel"] = InterestSelector(cfg.att_hidden).init(k_sel, z, z[:, 0], jnp.ones((1, 2), bool))[
            "params"
        ]
    if kind == "wdl":
        params["wide"] = {
            "bias": jnp.zeros(()),
            "item": jnp.zeros((cfg.n_items + 1,)),
            "cross": jnp.zeros((cfg.wide_buckets,)),
        }
        if cfg.n_cats:
            params["wide"]["cat"] = jnp.zeros((cfg.n_cats + 1,))
            params["wide"]["cat_cross"] = jnp.zeros((cfg.n_cats + 1, cfg.n_cats + 1))
    if kind == "deepfm":
        params["fm"] = {"bias": jnp.zeros(()), "item": jnp.zeros((cfg.n_items + 1,))}
        if cfg.n_cats:
            params["fm"]["cat"] = jnp.zeros((cfg.n_cats + 1,))
    del k_lin
    return params


def cast_params(params, dtype):
    """Cast every floating leaf of ``params`` to ``dtype`` (e.g. ``jnp.float64`` for gradient checks)."""
    return jax.tree_util.tree_map(
        lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params
    )


def split_params(params: dict) -> tuple[dict, dict]:
    """``params -> (theta, phi)``: phi = the interest selector's weights (``params["sel"]``, empty dict
    if the model has none), theta = everything else (embeddings, dense layers, linear parts)."""
    theta = {k: v for k, v in params.items() if k != "sel"}
    phi = params.get("sel", {})
    return theta, phi


def merge_params(theta: dict, phi: dict) -> dict:
    """Inverse of :func:`split_params`."""
    out = dict(theta)
    if phi:
        out["sel"] = phi
    return out


def embed_batch(cfg: CTRModelConfig, emb_params, batch) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Embeddings of a batch: ``(hist_e [B,T,D], target_e [B,D], mask bool[B,T])``; mask = hist != 0
    (padded positions embed the padding row but are masked out of every pooling)."""
    emb = _embedder(cfg)
    variables = {"params": emb_params}
    hist_e = emb.apply(variables, batch["hist"], batch.get("hist_cat"))
    target_e = emb.apply(variables, batch["target"], batch.get("target_cat"))
    return hist_e, target_e, batch["hist"] != 0


def interest_weights(cfg: CTRModelConfig, sel_params, hist_e, target_e, mask) -> jax.Array:
    """Selector output ``s_u[t] = g_phi(e_t, e_v)`` with ``s_u[t] = 0`` where ``mask`` is False."""
    return InterestSelector(cfg.att_hidden).apply({"params": sel_params}, hist_e, target_e, mask)


def _mlp(cfg, params, x, train, key):
    mlp = MLP(cfg.hidden, 1, cfg.dropout)
    if train and cfg.dropout > 0:
        if key is None:
            raise ValueError("dropout > 0 in training mode needs a PRNG key")
        return mlp.apply({"params": params}, x, deterministic=False, rngs={"dropout": key})[:, 0]
    return mlp.apply({"params": params}, x)[:, 0]


def _fields(cfg, batch, hist_e, target_e, mask):
    """Per-field vectors [B, F, emb_dim]: pooled history item (and category) sums and the target's."""
    m = mask[..., None].astype(hist_e.dtype)
    pooled = jnp.sum(hist_e * m, axis=1)
    k = cfg.emb_dim
    if cfg.n_cats > 0:
        fs = [pooled[:, :k], pooled[:, k:], target_e[:, :k], target_e[:, k:]]
    else:
        fs = [pooled, target_e]
    return jnp.stack(fs, axis=1)


def _cross_bucket(h, t, n_buckets):
    """Hash of the cross-product feature (history item h, target item t) into ``n_buckets``."""
    h = h.astype(jnp.uint32)
    t = t.astype(jnp.uint32)
    x = h * jnp.uint32(2654435761) ^ (t * jnp.uint32(40503) + jnp.uint32(0x9E3779B9))
    x = x ^ (x >> jnp.uint32(15))
    return (x % jnp.uint32(n_buckets)).astype(jnp.int32)


def ctr_logits(params, batch, cfg: CTRModelConfig, kind: str, *, train: bool = False, key=None):
    """Click logits ``[B]`` of model ``kind``; ``sigmoid`` of it is the predicted CTR.

    * ``base``:  ``r^_u = sum_t e_t`` (masked sum pooling), logit = MLP([r^_u, e_v]).
    * ``din``:   ``r^_u = sum_t s_u[t] e_t`` with ``s_u = g_phi`` (:class:`InterestSelector`), logit as base.
    * ``wdl``:   base's deep part + wide part ``b + w[v] + w_c[c_v] + sum_t w_x[hash(v_t, v)]
      + sum_t W_c[c_t, c_v]`` (cross-product features of history and target).
    * ``pnn``:   (inner-product PNN) MLP over the fields ``f_i`` (pooled history item/cat, target item/cat)
      and all pairwise inner products ``<f_i, f_j>``.
    * ``deepfm``: ``b + w[v] + w_c[c_v] + sum_{i<j} <f_i, f_j>`` (FM over the fields) + MLP(fields).
    """
    if kind not in MODELS:
        raise ValueError(f"unknown CTR model {kind!r}; choose one of {MODELS}")
    hist_e, target_e, mask = embed_batch(cfg, params["emb"], batch)
    if kind in ("base", "din", "wdl"):
        if kind == "din":
            w = interest_weights(cfg, params["sel"], hist_e, target_e, mask)
        else:
            w = mask.astype(hist_e.dtype)
        pooled = jnp.einsum("bt,btd->bd", w, hist_e)
        logit = _mlp(cfg, params["mlp"], jnp.concatenate([pooled, target_e], -1), train, key)
        if kind == "wdl":
            wp = params["wide"]
            mf = mask.astype(logit.dtype)
            wide = wp["bias"] + wp["item"][batch["target"]]
            b = _cross_bucket(batch["hist"], batch["target"][:, None], cfg.wide_buckets)
            wide = wide + jnp.sum(wp["cross"][b] * mf, axis=1)
            if cfg.n_cats:
                wide = wide + wp["cat"][batch["target_cat"]]
                cc = wp["cat_cross"][batch["hist_cat"], batch["target_cat"][:, None]]
                wide = wide + jnp.sum(cc * mf, axis=1)
            logit = logit + wide
        return logit
    f = _fields(cfg, batch, hist_e, target_e, mask)  # [B, F, k]
    nf = f.shape[1]
    iu, ju = jnp.triu_indices(nf, k=1)
    gram = jnp.einsum("bik,bjk->bij", f, f)
    if kind == "pnn":
        x = jnp.concatenate([f.reshape(f.shape[0], -1), gram[:, iu, ju]], axis=-1)
        return _mlp(cfg, params["mlp"], x, train, key)
    # deepfm
    fp = params["fm"]
    first = fp["bias"] + fp["item"][batch["target"]]
    if cfg.n_cats:
        first = first + fp["cat"][batch["target_cat"]]
    second = jnp.sum(gram[:, iu, ju], axis=-1)
    deep = _mlp(cfg, params["mlp"], f.reshape(f.shape[0], -1), train, key)
    return first + second + deep
