"""SASRec: a causal self-attention encoder for next-item prediction (Kang & McAuley, ICDM 2018).

The variant here follows the one used by CL4SRec / ICLRec / MCLRec (post-LayerNorm BERT-style blocks):

- input  ``x_0 = Dropout(LayerNorm(E[s_t] + P[t]))`` with item embedding ``E`` (row 0 = padding id) and a
  learned absolute position embedding ``P``;
- ``n_blocks`` blocks ``x <- LN(x + Drop(MHA(x)))``, ``x <- LN(x + Drop(W_2 GELU(W_1 x)))`` where the
  multi-head attention is causal and ignores padding keys (``softmax(Q K^T / sqrt(d_h) + M) V``);
- the sequence representation ``h`` is the output at the last position.

Sequences are **left-padded** (right-aligned): ``seq[b, L-1]`` is the most recent item, padding (id 0)
fills the front, so "the last real position" is always ``L-1`` and positions are counted from the left
of the ``max_len`` window (the authors' RecBole code right-pads instead, with positions counted from the first
item; see docs/mclrec.md). An input narrower than ``max_len`` is read as the last
columns of that window (position ids ``max_len-W .. max_len-1``), so dropping leading columns that are
padding in every row (:func:`trim_batch`) changes nothing but the cost. ``scores = h E[1:]^T`` ranks the ``n_items`` real items (column ``j`` is item
``j+1``); the padding id is never a candidate.

Everything is a pure function of the parameter pytree: ``SASRec.init`` / ``SASRec.apply``, plus
:func:`encode` and :func:`score_all` wrappers. All weights use ``normal(0, 0.02)`` init and zero biases,
LayerNorm epsilon is 1e-12.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SASRecConfig", "SASRec", "Dropout", "keep_mask", "encode", "score_all", "item_embeddings",
           "trim_batch", "trim_width", "extents", "ragged_fits", "encode_ragged"]

_init = nn.initializers.normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
    """Shape and regularisation hyper-parameters of the encoder (defaults: the MCLRec paper's)."""

    n_items: int
    max_len: int = 50
    hidden: int = 64
    n_blocks: int = 2
    n_heads: int = 2
    ff: int = 256
    dropout: float = 0.5
    attn_dropout: float = 0.5
    ln_eps: float = 1e-12

def keep_mask(key, shape, rate: float) -> jnp.ndarray:
    """Boolean Bernoulli(1 - rate) mask made from packed random bits (cheap on CPU).

    ``jax.random.bernoulli`` spends one 32-bit threefry draw per element, which dominated the CPU step
    time; here one 32-bit word yields 32 independent fair bits (``rate = 0.5``, exact) or 4 independent
    bytes (other rates, quantised to ``round(256 rate) / 256``).
    """
    n = 1
    for s in shape:
        n *= int(s)
    if rate == 0.5:
        w = jax.random.bits(key, (-(-n // 32),), jnp.uint32)
        b = (w[:, None] >> jnp.arange(32, dtype=jnp.uint32)[None, :]) & jnp.uint32(1)
        return b.reshape(-1)[:n].reshape(shape).astype(bool)
    thr = int(round(256 * rate))
    w = jax.random.bits(key, (-(-n // 4),), jnp.uint32)
    b = (w[:, None] >> (8 * jnp.arange(4, dtype=jnp.uint32))[None, :]) & jnp.uint32(255)
    return b.reshape(-1)[:n].reshape(shape) >= thr


def quantised_rate(rate: float) -> float:
    """The dropout rate :func:`keep_mask` actually uses."""
    return 0.5 if rate == 0.5 else round(256 * rate) / 256


class Dropout(nn.Module):
    """Inverted dropout ``x * m / (1 - rate)``, ``m ~ Bernoulli(1 - rate)`` from :func:`keep_mask`."""

    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        r = quantised_rate(self.rate)
        if deterministic or r == 0.0:
            return x
        if r >= 1.0:
            return jnp.zeros_like(x)
        m = keep_mask(self.make_rng("dropout"), x.shape, self.rate)
        return jnp.where(m, x / (1.0 - r), jnp.zeros_like(x))


class _Block(nn.Module):
    """One post-LN Transformer block: ``x <- LN(x + Drop(MHA(x)))``; ``x <- LN(x + Drop(FFN(x)))``."""

    hidden: int
    n_heads: int
    ff: int
    dropout: float
    attn_dropout: float
    ln_eps: float
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, allowed, deterministic: bool, last_only: bool = False):
        """``[B, L, d] -> [B, L, d]``; with ``last_only`` only the last position's output ``[B, 1, d]``
        (queries, residual, FFN and dropout on that row only; keys and values still from every row)."""
        b, length, d = x.shape
        if d % self.n_heads:
            raise ValueError(f"hidden size {d} is not divisible by n_heads={self.n_heads}")
        dh = d // self.n_heads
        dense = lambda n, name: nn.Dense(  # noqa: E731
            n, kernel_init=_init, bias_init=nn.initializers.zeros, param_dtype=self.param_dtype, name=name
        )
        kv_in = x
        if last_only:
            x, allowed = x[:, -1:], allowed[:, -1:]
        nq = x.shape[1]
        q = dense(d, "query")(x).reshape(b, nq, self.n_heads, dh)
        k = dense(d, "key")(kv_in).reshape(b, length, self.n_heads, dh)
        v = dense(d, "value")(kv_in).reshape(b, length, self.n_heads, dh)
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(dh, x.dtype))
        # Masked keys get the most negative finite value: a row whose keys are all masked (a padding query)
        # becomes a uniform softmax instead of NaN; such rows are never read.
        s = jnp.where(allowed[:, None, :, :], s, jnp.finfo(s.dtype).min)
        p = jax.nn.softmax(s, axis=-1)
        p = Dropout(self.attn_dropout)(p, deterministic=deterministic)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, nq, d)
        a = Dropout(self.dropout)(dense(d, "attn_out")(ctx), deterministic=deterministic)
        x = nn.LayerNorm(epsilon=self.ln_eps, param_dtype=self.param_dtype, name="attn_ln")(x + a)
        f = dense(self.ff, "ff_in")(x)
        f = jax.nn.gelu(f, approximate=False)
        f = Dropout(self.dropout)(dense(d, "ff_out")(f), deterministic=deterministic)
        return nn.LayerNorm(epsilon=self.ln_eps, param_dtype=self.param_dtype, name="ff_ln")(x + f)


class SASRec(nn.Module):
    """SASRec encoder. ``__call__(seq[B, L]) -> h[B, d]`` (output at the last position ``L-1``).

    ``seq`` holds dense item ids ``1..n_items`` with 0 as padding (left-padded). Keys whose id is 0 are
    masked out of attention (this also covers items set to 0 by the mask augmentation), and attention is
    causal (position ``q`` sees keys ``k <= q``).
    """

    config: SASRecConfig
    param_dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.item_emb = nn.Embed(c.n_items + 1, c.hidden, embedding_init=_init, param_dtype=self.param_dtype)
        self.pos_emb = nn.Embed(c.max_len, c.hidden, embedding_init=_init, param_dtype=self.param_dtype)
        self.emb_ln = nn.LayerNorm(epsilon=c.ln_eps, param_dtype=self.param_dtype)
        self.emb_drop = Dropout(c.dropout)
        self.blocks = [
            _Block(c.hidden, c.n_heads, c.ff, c.dropout, c.attn_dropout, c.ln_eps, self.param_dtype,
                   name=f"block_{i}")
            for i in range(c.n_blocks)
        ]

    def sequence_output(self, seq, deterministic: bool = True, last_only: bool = False):
        """Hidden states of every position, ``[B, L, d]`` (``last_only``: of the last one, ``[B, 1, d]``)."""
        length = seq.shape[-1]
        if length > self.config.max_len:
            raise ValueError(
                f"sequence length {length} exceeds max_len={self.config.max_len}; truncate inputs to the "
                f"last {self.config.max_len} items (jaxrec.data.sequences.pad_sequences)"
            )
        # A width-``W`` input is read as the last ``W`` columns of a width-``max_len`` left-padded one,
        # so trimming leading all-padding columns (length bucketing) leaves every output unchanged.
        pos = jnp.arange(self.config.max_len - length, self.config.max_len)
        x = self.item_emb(seq) + self.pos_emb(pos)[None]
        x = self.emb_drop(self.emb_ln(x), deterministic=deterministic)
        causal = jnp.tril(jnp.ones((length, length), dtype=bool))
        allowed = causal[None] & (seq > 0)[:, None, :]  # [B, q, k]
        for i, blk in enumerate(self.blocks):
            x = blk(x, allowed, deterministic, last_only=last_only and i == len(self.blocks) - 1)
        return x

    def __call__(self, seq, deterministic: bool = True):
        # Only position L-1 is read, so the last block runs its queries, residual and FFN on that row alone
        # (about 40% of the encoder's FLOPs at the paper's shapes); the result equals
        # ``sequence_output(seq)[:, -1]`` (in training mode the dropout draws differ, not their law).
        return self.sequence_output(seq, deterministic, last_only=True)[:, -1, :]

    def item_table(self):
        """The item embedding table ``E`` ``[n_items + 1, d]`` (row 0 = padding)."""
        return self.item_emb.embedding


def trim_width(seq: np.ndarray, buckets=(8, 16, 32, 50)) -> int:
    """Smallest bucket width ``>=`` the longest real extent in ``seq`` (left-padded, numpy)."""
    seq = np.asarray(seq)
    nz = (seq != 0).any(axis=0)
    extent = seq.shape[1] - int(np.argmax(nz)) if nz.any() else 1
    for b in sorted(buckets):
        if b >= extent and b <= seq.shape[1]:
            return int(b)
    return int(seq.shape[1])


def trim_batch(seq, buckets=(8, 16, 32, 50)):
    """Drop leading columns that are padding in every row, keeping a bucketed width (few compilations).

    Outputs of :class:`SASRec` are unchanged (see the module docstring); this only saves compute on
    batches of short sequences. Works on numpy or jax arrays (the width is computed on the host).
    """
    w = trim_width(np.asarray(seq), buckets)
    return seq[:, seq.shape[1] - w:]


def item_embeddings(params) -> jnp.ndarray:
    """``E`` ``[n_items + 1, d]`` from a SASRec parameter pytree (row 0 = padding)."""
    return params["item_emb"]["embedding"]


def encode(model: SASRec, params, seq, key=None, train: bool = False):
    """``h = f_theta(seq)`` ``[B, d]``; with ``train=True`` dropout is active and needs ``key``."""
    if train:
        if key is None:
            raise ValueError("encode(train=True) needs a PRNG key for dropout")
        return model.apply({"params": params}, seq, deterministic=False, rngs={"dropout": key})
    return model.apply({"params": params}, seq, deterministic=True)


def extents(seq: jnp.ndarray) -> jnp.ndarray:
    """Per row, the number of columns from the first non-padding item to the end (0 for empty rows)."""
    nz = seq != 0
    first = jnp.argmax(nz, axis=-1)
    return jnp.where(nz.any(axis=-1), seq.shape[-1] - first, 0)


def ragged_fits(extent, short_width: int, long_rows: int):
    """Whether the ragged split is exact: at most ``long_rows`` rows have an extent above ``short_width``.

    ``extent`` is :func:`extents` of the rows (jax or numpy; the result has the same kind)."""
    return (extent > short_width).sum() <= long_rows


def encode_ragged(model: SASRec, params, seq, key=None, train: bool = False, short_width: int = 16,
                  long_rows: int | None = None, fits: bool | None = None):
    """``encode`` computed in two width groups: same result, about half the work on short sequences.

    Rows are sorted by extent; the ``long_rows`` longest run at full width ``L`` and the rest at width
    ``short_width`` (their leading padding columns dropped, exact by the position convention). In training
    mode the dropout masks are drawn per group (same distribution, different draws than :func:`encode`).

    ``fits`` says which path runs, so the output never depends on the split, only the cost does:

    - ``None``: decided on the device with ``lax.cond`` (the whole batch takes the full-width path when
      more than ``long_rows`` rows are longer than ``short_width``). Under ``jax.grad`` the cond's
      forward keeps the residuals of both branches, so a backward pass through it is slow;
    - ``True``: the caller checked :func:`ragged_fits` on the host; only the split runs (no cond). Should
      the check be wrong, every output row is NaN (a loud failure, never a silently truncated row);
    - ``False``: the full-width path only (on the sorted rows, so with the cond's draws).
    """
    r, length = seq.shape
    long_rows = r // 4 if long_rows is None else int(long_rows)
    if short_width >= length or long_rows >= r or long_rows < 1 or short_width < 1:
        return encode(model, params, seq, key, train)
    ext = extents(seq)
    order = jnp.argsort(-ext, stable=True)
    xs = seq[order]
    ok = ragged_fits(ext, short_width, long_rows)
    ka, kb = jax.random.split(key) if train else (None, None)

    def split(xs):
        h_long = encode(model, params, xs[:long_rows], ka, train)
        h_short = encode(model, params, xs[long_rows:, length - short_width:], kb, train)
        return jnp.concatenate([h_long, h_short], axis=0)

    def full(xs):
        return encode(model, params, xs, key, train)

    if fits is None:
        h = jax.lax.cond(ok, split, full, xs)
    elif fits:
        h = jnp.where(ok, split(xs), jnp.nan)
    else:  # on the sorted rows, like the cond's full branch (the same dropout draws)
        h = full(xs)
    return h[jnp.argsort(order)]


def score_all(model: SASRec, params, seq):
    """Full-ranking scores ``h E[1:]^T`` ``[B, n_items]`` (column ``j`` is item ``j+1``), dropout off."""
    h = encode(model, params, seq)
    return h @ item_embeddings(params)[1:].T
