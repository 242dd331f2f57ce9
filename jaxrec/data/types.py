"""Dataclasses of the data layer (numpy in; the batch iterators turn them into device arrays).

* :class:`Interactions` -- user-item pairs (implicit or explicit) over dense 0-based ids, raw ids kept.
* :class:`Sequences` -- one time-ordered item sequence per user, dense item ids ``1..n_items`` (0 = pad).
* :class:`Tabular` -- rows of numeric + categorical features with an integer label.
* :class:`ColdStartTasks` -- per-user support/query rating tasks with user and item feature arrays (MeLU).
* :class:`LastFM` -- train/test :class:`Interactions` plus the social trust edges.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .errors import data_error

__all__ = ["Interactions", "Sequences", "Tabular", "ColdStartTasks", "LastFM"]


def _check_ids(name: str, arr: np.ndarray, n: int) -> None:
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise data_error(f"{name} ids must lie in [0, {n}), got range [{arr.min()}, {arr.max()}]",
                         fix="re-index densely (the loaders and k_core do this)")


@dataclass
class Interactions:
    """User-item interactions over dense ids.

    ``user``/``item``: int32[n] in ``[0, n_users)`` / ``[0, n_items)``; ``rating``: float32[n] or None
    (implicit feedback); ``timestamp``: int64[n] or None; ``user_ids``/``item_ids``: the raw id of each
    dense index (the mapping is kept); ``user_features``/``item_features``: dicts of arrays whose first
    axis is the dense id; ``vocab``: names of categorical feature values (``vocab[f][k]`` = value k).
    """

    user: np.ndarray
    item: np.ndarray
    n_users: int
    n_items: int
    rating: np.ndarray | None = None
    timestamp: np.ndarray | None = None
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    user_features: dict[str, np.ndarray] = field(default_factory=dict)
    item_features: dict[str, np.ndarray] = field(default_factory=dict)
    vocab: dict[str, list] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self):
        self.user = np.asarray(self.user, dtype=np.int32)
        self.item = np.asarray(self.item, dtype=np.int32)
        self.n_users, self.n_items = int(self.n_users), int(self.n_items)
        n = self.user.shape[0]
        if self.user.ndim != 1 or self.item.shape != (n,):
            raise data_error(f"user and item must be 1-D arrays of equal length, got {self.user.shape} "
                             f"and {self.item.shape}")
        if self.rating is not None:
            self.rating = np.asarray(self.rating, dtype=np.float32)
            if self.rating.shape != (n,):
                raise data_error(f"rating has shape {self.rating.shape}, expected ({n},)")
        if self.timestamp is not None:
            self.timestamp = np.asarray(self.timestamp, dtype=np.int64)
            if self.timestamp.shape != (n,):
                raise data_error(f"timestamp has shape {self.timestamp.shape}, expected ({n},)")
        _check_ids("user", self.user, self.n_users)
        _check_ids("item", self.item, self.n_items)
        if self.user_ids is None:
            self.user_ids = np.arange(self.n_users)
        if self.item_ids is None:
            self.item_ids = np.arange(self.n_items)
        self.user_ids, self.item_ids = np.asarray(self.user_ids), np.asarray(self.item_ids)
        if len(self.user_ids) != self.n_users or len(self.item_ids) != self.n_items:
            raise data_error(f"user_ids/item_ids have lengths {len(self.user_ids)}/{len(self.item_ids)}, "
                             f"expected n_users={self.n_users}/n_items={self.n_items}")

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def subset(self, index) -> "Interactions":
        """The interactions selected by ``index`` (bool mask or integer array), same id space and features."""
        index = np.asarray(index)
        return dataclasses.replace(
            self, user=self.user[index], item=self.item[index],
            rating=None if self.rating is None else self.rating[index],
            timestamp=None if self.timestamp is None else self.timestamp[index])

    def user_degree(self) -> np.ndarray:
        """int64[n_users]: number of interactions (rows) of each user."""
        return np.bincount(self.user, minlength=self.n_users)

    def item_degree(self) -> np.ndarray:
        """int64[n_items]: number of interactions (rows) of each item."""
        return np.bincount(self.item, minlength=self.n_items)

    def density(self) -> float:
        """Fraction of the user x item matrix that holds an interaction row: n / (n_users * n_items)."""
        return len(self) / max(1, self.n_users * self.n_items)


@dataclass
class Sequences:
    """One time-ordered item sequence per user.

    ``seqs[u]``: int32 array of dense item ids in ``1..n_items`` (0 is reserved for padding);
    ``item_ids[k]``: raw id of dense item k (index 0 unused, holds -1); ``user_ids[u]``: raw id of user u.
    """

    seqs: list
    n_items: int
    item_ids: np.ndarray | None = None
    user_ids: np.ndarray | None = None
    name: str = ""

    def __post_init__(self):
        self.seqs = [np.asarray(s, dtype=np.int32) for s in self.seqs]
        self.n_items = int(self.n_items)
        lengths = self.lengths()
        if self.seqs:
            flat = np.concatenate(self.seqs) if lengths.sum() else np.zeros(0, np.int32)
            if flat.size and (flat.min() < 1 or flat.max() > self.n_items):
                raise data_error(f"sequence item ids must lie in 1..{self.n_items} (0 is padding), got range "
                                 f"[{flat.min()}, {flat.max()}]", fix="re-index items densely from 1")
        if self.item_ids is None:
            self.item_ids = np.concatenate([[-1], np.arange(1, self.n_items + 1)])
        if self.user_ids is None:
            self.user_ids = np.arange(len(self.seqs))
        self.item_ids, self.user_ids = np.asarray(self.item_ids), np.asarray(self.user_ids)
        if len(self.item_ids) != self.n_items + 1:
            raise data_error(f"item_ids has length {len(self.item_ids)}, expected n_items + 1 = "
                             f"{self.n_items + 1} (index 0 is the padding id)")

    @property
    def n_users(self) -> int:
        return len(self.seqs)

    @property
    def n_actions(self) -> int:
        """Total number of items over all sequences."""
        return int(self.lengths().sum())

    def lengths(self) -> np.ndarray:
        """int64[n_users]: length of each sequence."""
        return np.fromiter((len(s) for s in self.seqs), dtype=np.int64, count=len(self.seqs))

    def to_interactions(self) -> Interactions:
        """All (user, item) pairs as :class:`Interactions` with 0-based items (dense id - 1) and the position
        in the sequence as ``timestamp`` (so order is kept; repeated items stay repeated rows)."""
        lengths = self.lengths()
        user = np.repeat(np.arange(self.n_users, dtype=np.int32), lengths)
        item = (np.concatenate(self.seqs) - 1) if lengths.sum() else np.zeros(0, np.int32)
        pos = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return Interactions(user=user, item=item, n_users=self.n_users, n_items=self.n_items,
                            timestamp=pos, user_ids=self.user_ids, item_ids=self.item_ids[1:], name=self.name)


@dataclass
class Tabular:
    """Tabular rows: ``x_num`` float32[n, n_num] (NaN = missing), ``x_cat`` int32[n, n_cat] (index into
    ``cat_vocab[j]``), ``y`` int32[n] label, with column names ``num_names``/``cat_names``."""

    x_num: np.ndarray
    x_cat: np.ndarray
    y: np.ndarray
    num_names: list
    cat_names: list
    cat_vocab: list
    label_vocab: list
    name: str = ""

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class ColdStartTasks:
    """Per-user meta-learning tasks of explicit ratings (MeLU-style), padded for ``vmap``.

    Task t belongs to dense user ``task_user[t]``; its support set is ``support_item[t, :n]`` with ratings
    ``support_rating[t, :n]`` where ``support_mask[t]`` is True, and likewise for the query set. Items are
    dense 0-based ids into ``item_features``; users into ``user_features`` (dicts of int32 arrays: one
    categorical index per entity, or a padded index list with -1 padding for multi-valued fields, or a
    0/1 multi-hot matrix for genres). ``vocab[f]`` names the values of feature f.
    """

    task_user: np.ndarray
    support_item: np.ndarray
    support_rating: np.ndarray
    support_mask: np.ndarray
    query_item: np.ndarray
    query_rating: np.ndarray
    query_mask: np.ndarray
    n_users: int
    n_items: int
    user_features: dict = field(default_factory=dict)
    item_features: dict = field(default_factory=dict)
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    vocab: dict = field(default_factory=dict)
    name: str = ""
    n_filtered: int = 0

    def __len__(self) -> int:
        return int(self.task_user.shape[0])


@dataclass
class LastFM:
    """Last.fm (LightGCN split): ``train``/``test`` :class:`Interactions` over one id space (rating = play
    count), and ``trust`` int32[E, 2] directed user-user edges in dense user ids."""

    train: Interactions
    test: Interactions
    trust: np.ndarray
