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

import dataclasses
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

__all__ = [
    "CTRData",
    "CTRSplit",
    "synthetic_interest_groups",
    "ctr_from_sequences",
    "load_ctr",
    "CTR_DATASETS",
]


def _data_error():
    from jaxrec.data.errors import DataError  # late import: jaxrec.data may re-export this module

    return DataError


CTR_DATASETS = ("synthetic", "ml-100k", "Amazon_Beauty", "Amazon_Toys_and_Games",
                "Amazon_Sports_and_Outdoors", "Yelp")


@dataclasses.dataclass
class CTRData:
    """CTR rows. ``n`` rows, histories padded to length ``T`` with item id 0.

    Attributes:
      user: int32[n] dense user index (0-based).
      target: int32[n] target item id in ``1..n_items``.
      hist: int32[n, T] behaviour history (item ids, 0 = padding); most recent item last.
      label: float32[n] click label in {0, 1}.
      n_items: number of items (ids ``1..n_items``).
      n_users: number of users.
      target_cat / hist_cat: optional int32 category ids in ``1..n_cats`` (0 = padding), same shapes.
      n_cats: number of categories (0 when there are none).
      true_label: optional float32[n] noise-free label (synthetic data only).
    """

    user: np.ndarray
    target: np.ndarray
    hist: np.ndarray
    label: np.ndarray
    n_items: int
    n_users: int
    target_cat: np.ndarray | None = None
    hist_cat: np.ndarray | None = None
    n_cats: int = 0
    true_label: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.label)
        for name in ("user", "target", "hist"):
            if len(getattr(self, name)) != n:
                raise _data_error()(
                    f"CTRData: field {name!r} has {len(getattr(self, name))} rows but label has {n}; "
                    "build all fields from the same rows"
                )
        if (self.target_cat is None) != (self.hist_cat is None):
            raise _data_error()("CTRData: give both target_cat and hist_cat, or neither")
        if n and (self.target.min() < 1 or self.target.max() > self.n_items):
            raise _data_error()(
                f"CTRData: target ids must lie in 1..{self.n_items} (0 is padding); "
                f"got range {self.target.min()}..{self.target.max()}"
            )

    def __len__(self) -> int:
        return len(self.label)

    @property
    def has_cats(self) -> bool:
        return self.target_cat is not None

    @property
    def max_len(self) -> int:
        return int(self.hist.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        """The row arrays as a dict (keys ``target, hist, label`` and, if present, ``target_cat,
        hist_cat``) for :func:`jaxrec.data.batch_iterator` and the model functions."""
        out = {"target": self.target, "hist": self.hist, "label": self.label}
        if self.has_cats:
            out["target_cat"] = self.target_cat
            out["hist_cat"] = self.hist_cat
        return out

    def subset(self, idx: np.ndarray) -> "CTRData":
        """Rows ``idx`` as a new :class:`CTRData` (same id spaces)."""
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return CTRData(
            user=self.user[idx], target=self.target[idx], hist=self.hist[idx], label=self.label[idx],
            n_items=self.n_items, n_users=self.n_users, target_cat=pick(self.target_cat),
            hist_cat=pick(self.hist_cat), n_cats=self.n_cats, true_label=pick(self.true_label),
        )


class CTRSplit(NamedTuple):
    train: CTRData
    val: CTRData
    test: CTRData


def _pad_left(rows: list[np.ndarray], max_len: int) -> np.ndarray:
    """Stack variable-length int rows into int32[n, max_len], keeping the last ``max_len`` items,
    right-aligned (most recent last), 0-padded on the left."""
    out = np.zeros((len(rows), max_len), dtype=np.int32)
    for i, r in enumerate(rows):
        r = r[-max_len:]
        if len(r):
            out[i, max_len - len(r):] = r
    return out


def synthetic_interest_groups(
    seed: int = 0,
    *,
    n_users: int = 100,
    n_items: int = 10_000,
    n_groups: int = 10,
    n_pos: int = 50,
    n_neg: int = 50,
    keep_pos: float = 0.5,
    flip_neg: float = 0.2,
    test_frac: float = 0.2,
    val_frac: float = 0.1,
    with_category: bool = True,
    equal_length: bool = True,
    history_from: str = "train",
) -> CTRSplit:
    """The synthetic interest-group CTR set of Meta-Wrapper (sec. 6.4.1).

    User ``i`` belongs to group ``i mod n_groups`` and item ``j`` to group ``j mod n_groups`` (the paper
    prints ``j MOD 1000``, which would give 1000 item groups for 10 user groups; we use ``n_groups = 10``
    for both). Each user gets ``n_pos`` positives drawn uniformly without replacement from the items of
    their group and ``n_neg`` negatives from the items of the other groups (``n_users * (n_pos + n_neg)``
    instances). Observed labels are perturbed: a true positive keeps label 1 with probability
    ``keep_pos`` (else 0), a true negative flips to 1 with probability ``flip_neg``. The history of an
    instance (u, v) is the user's other items with observed label 1 (random order, 0-padded on the left
    to the longest history). Instances are split at random into train/val/test.

    Two deviations (both switchable) remove label leaks of the literal construction, under which a PNN
    reaches test AUC ~0.88 against the Bayes-optimal ~0.66 of the noisy labels:
    ``history_from="train"`` (default) builds every history from the labels of *training* rows only (the
    literal text, ``"all"``, puts the labels of validation/test rows into the histories, and the model
    can read a test row's label from which of the user's clicked items its history lacks);
    ``equal_length`` (default True) removes a second one: the history of a clicked row lacks the target
    itself, so it is one item shorter than the user's other histories and sum pooling reads the label off
    the length; with ``equal_length`` every row whose target is not in the user's clicked set drops one
    random clicked item instead, so all of a user's histories have the same length.
    ``history_from="all", equal_length=False`` is the paper's literal text.

    With ``with_category`` the item's group (``1..n_groups``) is given as its category feature; without
    it the model sees item ids only (items then occur about once each, so nothing generalises).

    Item ids are ``j + 1``. ``true_label`` holds the noise-free labels.
    """
    if history_from not in ("train", "all"):
        raise ValueError(f"history_from must be 'train' or 'all', got {history_from!r}")
    if n_pos > n_items // n_groups or n_neg > n_items - n_items // n_groups:
        raise _data_error()("synthetic_interest_groups: not enough items per group for n_pos / n_neg")
    rng = np.random.default_rng(seed)
    items = np.arange(n_items)
    group_of_item = items % n_groups
    users, targets, true = [], [], []
    for u in range(n_users):
        g = u % n_groups
        own = items[group_of_item == g]
        other = items[group_of_item != g]
        pos = rng.choice(own, size=n_pos, replace=False)
        neg = rng.choice(other, size=n_neg, replace=False)
        users.append(np.full(n_pos + n_neg, u))
        targets.append(np.concatenate([pos, neg]))
        true.append(np.concatenate([np.ones(n_pos), np.zeros(n_neg)]))
    user = np.concatenate(users).astype(np.int32)
    target0 = np.concatenate(targets)
    true_label = np.concatenate(true).astype(np.float32)
    u01 = rng.random(len(true_label))
    label = np.where(true_label == 1, u01 < keep_pos, u01 < flip_neg).astype(np.float32)

    perm = rng.permutation(len(label))
    n_test = int(round(test_frac * len(label)))
    n_val = int(round(val_frac * len(label)))
    in_train = np.zeros(len(label), bool)
    in_train[perm[n_test + n_val:]] = True
    # history: the user's other items with observed label 1 (order shuffled once per user)
    src = in_train if history_from == "train" else np.ones(len(label), bool)
    hist_rows = []
    per_user = {}
    for u in range(n_users):
        rows = np.flatnonzero((user == u) & (label == 1) & src)
        per_user[u] = rng.permutation(target0[rows])
    for i in range(len(label)):
        h = per_user[int(user[i])]
        if np.any(h == target0[i]):
            h = h[h != target0[i]]
        elif equal_length and len(h):
            h = np.delete(h, rng.integers(len(h)))
        hist_rows.append(h + 1)
    max_len = max(1, max(len(h) for h in hist_rows))
    hist = _pad_left(hist_rows, max_len)
    target = (target0 + 1).astype(np.int32)
    cat_table = np.concatenate([[0], group_of_item + 1]).astype(np.int32)  # id -> category, 0 = pad
    data = CTRData(
        user=user, target=target, hist=hist, label=label, n_items=n_items, n_users=n_users,
        target_cat=cat_table[target] if with_category else None,
        hist_cat=cat_table[hist] if with_category else None,
        n_cats=n_groups if with_category else 0, true_label=true_label,
    )
    return CTRSplit(
        train=data.subset(np.sort(perm[n_test + n_val:])),
        val=data.subset(np.sort(perm[n_test:n_test + n_val])),
        test=data.subset(np.sort(perm[:n_test])),
    )


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
    from jaxrec.data.samplers import sample_negatives

    if hasattr(seqs, "seqs"):
        n_items = seqs.n_items if n_items is None else n_items
        source = getattr(seqs, "name", "") or source
        seqs = seqs.seqs
    if n_items is None:
        raise ValueError("ctr_from_sequences: give n_items with a plain list of sequences")
    seqs = [np.asarray(s, dtype=np.int64) for s in seqs]

    DataError = _data_error()
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

    * ``"synthetic"``: :func:`synthetic_interest_groups` (``seed``, ``synthetic_kwargs``); no files.
    * ``"ml-100k"``: ratings ordered by timestamp (:func:`jaxrec.data.loaders.interactions_to_sequences`),
      item category = the movie's first genre (``first_genre + 1``, 19 categories), then
      :func:`ctr_from_sequences`.
    * ``"Amazon_*"`` / ``"Yelp"``: :func:`jaxrec.data.load_sequences` (items only), then
      :func:`ctr_from_sequences`.

    ``seed`` fixes the negative sampling (and the synthetic draw and split).
    """
    if name == "synthetic":
        return synthetic_interest_groups(seed, **synthetic_kwargs)
    from jaxrec.data import loaders

    if name == "ml-100k":
        inter = loaders.load_ml100k(data_dir)
        seqs = loaders.interactions_to_sequences(inter)
        fg = np.asarray(inter.item_features["first_genre"], dtype=np.int32)
        n_cats = len(inter.vocab["genre"])
        item_cat = np.concatenate([[0], fg + 1]).astype(np.int32)
        return ctr_from_sequences(seqs, max_len=max_len, seed=seed, item_cat=item_cat, n_cats=n_cats)
    if name in CTR_DATASETS:
        return ctr_from_sequences(loaders.load_sequences(name, data_dir), max_len=max_len, seed=seed)
    raise _data_error()(f"unknown CTR dataset {name!r}; choose one of {CTR_DATASETS}")
