"""Vectorised sequence utilities: padding and next-item training instances (0 is the padding id)."""
from __future__ import annotations

import numpy as np

from .errors import data_error

__all__ = ["pad_sequences", "prefix_instances"]


def _flat(seqs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seqs = getattr(seqs, "seqs", seqs)
    lengths = np.fromiter((len(s) for s in seqs), np.int64, count=len(seqs))
    flat = np.concatenate([np.asarray(s, np.int64) for s in seqs]) if lengths.sum() else np.zeros(0, np.int64)
    starts = np.cumsum(lengths) - lengths
    return flat, lengths, starts


def pad_sequences(seqs, max_len: int, side: str = "left") -> np.ndarray:
    """int32[N, max_len]: each sequence's last ``min(len, max_len)`` items, padded with 0 on the ``side``
    ("left": items end at the last column, as SASRec reads them; "right": items start at column 0)."""
    if side not in ("left", "right"):
        raise data_error(f"side must be 'left' or 'right', got {side!r}")
    if max_len < 1:
        raise data_error(f"max_len must be >= 1, got {max_len}")
    flat, lengths, starts = _flat(seqs)
    keep = np.minimum(lengths, max_len)
    out = np.zeros((len(lengths), max_len), np.int32)
    rows = np.repeat(np.arange(len(lengths)), keep)
    within = np.arange(keep.sum()) - np.repeat(np.cumsum(keep) - keep, keep)
    src = np.repeat(starts + lengths - keep, keep) + within
    cols = within + (np.repeat(max_len - keep, keep) if side == "left" else 0)
    out[rows, cols] = flat[src]
    return out


def prefix_instances(train_seqs, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every next-item instance ``(s_1..s_{t-1}) -> s_t`` (t >= 2) of every training sequence.

    Returns ``(inputs int32[N, max_len], targets int32[N], user int32[N])`` with the input truncated to its
    last ``max_len`` items and left-padded with 0; instances are ordered by user, then by t.
    """
    if max_len < 1:
        raise data_error(f"max_len must be >= 1, got {max_len}")
    flat, lengths, starts = _flat(train_seqs)
    n_inst = np.maximum(lengths - 1, 0)
    user = np.repeat(np.arange(len(lengths)), n_inst)
    t = np.arange(n_inst.sum()) - np.repeat(np.cumsum(n_inst) - n_inst, n_inst) + 1  # target position, 0-based
    tgt_idx = starts[user] + t
    cols = np.arange(max_len) - max_len  # offsets -max_len..-1 relative to the target
    pos = t[:, None] + cols[None, :]
    inputs = np.where(pos >= 0, flat[np.clip(starts[user][:, None] + pos, 0, max(len(flat) - 1, 0))], 0)
    return inputs.astype(np.int32), flat[tgt_idx].astype(np.int32), user.astype(np.int32)
