"""Click-through-rate (CTR) datasets: (user, behaviour history, target item, label) rows.

Two builders:

* :func:`synthetic_interest_groups` -- the synthetic interest-group set of the Meta-Wrapper paper
  (sec. 6.4.1): 100 users, 10,000 items, 10 interest groups, 50 positives + 50 negatives per user with
  perturbed labels, history = the user's *other* items labelled 1.
* :func:`ctr_from_sequences` -- the DIN-style builder over time-ordered sequences (Amazon, MovieLens):
  per user the last item is the test positive, the second-to-last the validation positive, every earlier
  position (>= 1) a training positive; the history is the items before the target (last ``max_len``);
  each positive gets one negative with the target replaced by a random item the user never touched.

Item ids are dense ``1..n_items``; ``0`` is the padding id of histories (and of categories). Everything
is numpy; :meth:`CTRData.arrays` gives the dict that :func:`jaxrec.data.batch_iterator` consumes.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .errors import DataError
from .loaders import interactions_to_sequences, load_dataset
from .samplers import sample_negatives
from .synthetic import CTRData, CTRSplit, _pad_left, synthetic_interest_groups

__all__ = [
    "CTRData",
    "CTRSplit",
    "synthetic_interest_groups",
    "ctr_from_sequences",
    "load_ctr",
    "CTR_DATASETS",
]


CTR_DATASETS = ("synthetic", "ml-100k", "Amazon_Beauty", "Amazon_Toys_and_Games",
                "Amazon_Sports_and_Outdoors", "Yelp")


def ctr_from_sequences(
    seqs,
    n_items: int | None = None,
    *,
    max_len: int = 50,
    seed: int = 0,
    item_cat: np.ndarray | None = None,
    n_cats: int = 0,
    source: str = "sequences",
) -> CTRSplit:
    """DIN-style CTR rows from time-ordered sequences (the Amazon preprocessing of DIN).

    For user u with sequence ``s`` (items ``1..n_items``, length ``L >= 3``): the test positive is
    ``s[L-1]`` with history ``s[:L-1]``, the validation positive ``s[L-2]`` with history ``s[:L-2]``, and
    the training positives are ``s[t]`` for ``1 <= t <= L-3`` with history ``s[:t]``; histories keep the
    last ``max_len`` items. Every positive gets one negative row with the same history and the target
    replaced by a uniform item the user never interacted with (:func:`jaxrec.data.sample_negatives`).

    Repeated items (a user who consumed an item again, e.g. Yelp): earlier occurrences of the target are
    removed from its history before the last ``max_len`` are kept. Negatives are never-interacted items, so
    they never occur in a history; a positive whose target did would have its label readable from the
    history (DIN's attention unit sees ``e_i - e_v = 0``). Sets without repeats are unchanged.

    ``seqs``: a :class:`jaxrec.data.Sequences` (then ``n_items`` and ``source`` default to its own) or a
    list of int arrays with ``n_items`` given. ``item_cat``: optional int32[n_items + 1] category of each
    item id (index 0 = padding = 0), values in ``1..n_cats``. Users with fewer than 3 items raise
    :class:`jaxrec.data.DataError` naming ``source`` and the line.
    """
    if hasattr(seqs, "seqs"):
        n_items = seqs.n_items if n_items is None else n_items
        source = getattr(seqs, "name", "") or source
        seqs = seqs.seqs
    if n_items is None:
        raise ValueError("ctr_from_sequences: give n_items with a plain list of sequences")
    seqs = [np.asarray(s, dtype=np.int64) for s in seqs]

    rng = np.random.default_rng(seed)
    n_users = len(seqs)
    lens = np.array([len(s) for s in seqs])
    short = np.flatnonzero(lens < 3)
    if len(short):
        raise DataError(
            f"{source}: user index {short[0]} (line {short[0] + 1}) has {lens[short[0]]} items; the DIN "
            "split needs >= 3 per user (train/valid/test). Filter with k_core(...) first."
        )
    for u, s in enumerate(seqs):
        if len(s) and (s.min() < 1 or s.max() > n_items):
            raise DataError(f"{source}: line {u + 1} has item ids outside 1..{n_items} (0 is padding)")
    if item_cat is not None:
        item_cat = np.asarray(item_cat, dtype=np.int32)
        if item_cat.shape != (n_items + 1,):
            raise DataError(f"{source}: item_cat must have shape ({n_items + 1},), got {item_cat.shape}")

    # binary user x item matrix with the padding column 0 marked as seen (never sampled)
    rows = np.concatenate([np.full(len(s) + 1, u) for u, s in enumerate(seqs)])
    cols = np.concatenate([np.concatenate([[0], s]) for s in seqs])
    csr = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items + 1))
    csr.sum_duplicates()
    csr.data[:] = 1.0

    def build(which: str) -> CTRData:
        users, tgts, hists = [], [], []
        for u, s in enumerate(seqs):
            L = len(s)
            positions = {"train": range(1, L - 2), "val": [L - 2], "test": [L - 1]}[which]
            for t in positions:
                users.append(u)
                tgts.append(s[t])
                h = s[:t]
                hists.append(h[h != s[t]][-max_len:])  # without repeated targets (see the docstring)
        user = np.asarray(users, dtype=np.int32)
        pos = np.asarray(tgts, dtype=np.int32)
        hist = _pad_left(hists, max_len)
        neg = np.asarray(sample_negatives(rng, user, csr, n=1), dtype=np.int32).reshape(-1)
        n = len(user)
        data = CTRData(
            user=np.concatenate([user, user]),
            target=np.concatenate([pos, neg]),
            hist=np.concatenate([hist, hist]),
            label=np.concatenate([np.ones(n, np.float32), np.zeros(n, np.float32)]),
            n_items=n_items, n_users=n_users,
        )
        if item_cat is not None:
            data.target_cat = item_cat[data.target]
            data.hist_cat = item_cat[data.hist]
            data.n_cats = n_cats
        return data

    return CTRSplit(train=build("train"), val=build("val"), test=build("test"))


def load_ctr(name: str, data_dir=None, *, seed: int = 0, max_len: int = 50, **synthetic_kwargs) -> CTRSplit:
    """A CTR split by dataset name.

    Every set comes through the one registry :func:`jaxrec.data.load_dataset`:

    * ``"synthetic"``: ``load_dataset("synthetic-ctr")`` = :func:`synthetic_interest_groups` (``seed``,
      ``synthetic_kwargs``); no files.
    * ``"ml-100k"``: ratings ordered by timestamp (:func:`jaxrec.data.loaders.interactions_to_sequences`),
      item category = the movie's first genre (``first_genre + 1``, 19 categories), then
      :func:`ctr_from_sequences`.
    * ``"Amazon_*"`` / ``"Yelp"``: :func:`jaxrec.data.load_sequences` (items only), then
      :func:`ctr_from_sequences`.

    ``seed`` fixes the negative sampling (and the synthetic draw and split).
    """
    if name == "synthetic":
        return load_dataset("synthetic-ctr", seed=seed, **synthetic_kwargs)
    if name == "ml-100k":
        inter = load_dataset("ml-100k", data_dir)
        seqs = interactions_to_sequences(inter)
        fg = np.asarray(inter.item_features["first_genre"], dtype=np.int32)
        n_cats = len(inter.vocab["genre"])
        item_cat = np.concatenate([[0], fg + 1]).astype(np.int32)
        return ctr_from_sequences(seqs, max_len=max_len, seed=seed, item_cat=item_cat, n_cats=n_cats)
    if name in CTR_DATASETS:
        return ctr_from_sequences(load_dataset(name, data_dir), max_len=max_len, seed=seed)
    raise DataError(f"unknown CTR dataset {name!r}; choose one of {CTR_DATASETS}")
