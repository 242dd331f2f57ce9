"""Seeded splits: per-user ratio split, leave-one-out for sequences, k-core filtering, cold-start tasks.

Rounding rule of :func:`ratio_split` (per user u with n_u interactions; round = half up):
``n_test = min(round(test_frac * n_u), n_u - 1)`` then, with ``m = n_u - n_test``,
``n_val = min(round(val_frac * m), m - 1)``; the remaining ``n_u - n_test - n_val >= 1`` go to train.
So every user keeps at least one training interaction; a user with one interaction has no test or
validation item, a user with 2 has a test item only if ``round(2 * test_frac) >= 1``.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from .errors import data_error
from .types import ColdStartTasks, Interactions, Sequences

__all__ = ["Split", "SeqSplit", "ratio_split", "leave_one_out", "k_core", "compact", "cold_start_tasks",
           "global_split", "standardise_ratings", "time_split"]


class Split(NamedTuple):
    """Train / validation / test :class:`Interactions` over the same index space."""

    train: Interactions
    val: Interactions
    test: Interactions


class SeqSplit(NamedTuple):
    """Leave-one-out split: ``train[u] = seq[:-2]`` (also the validation history), ``valid_target[u] =
    seq[-2]``, ``test_target[u] = seq[-1]`` and ``test_history[u] = seq[:-1]``."""

    train: list
    valid_target: np.ndarray
    test_target: np.ndarray
    test_history: list


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5 + 1e-9).astype(np.int64)


def _rank_within_user(user: np.ndarray, n_users: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rank 0..n_u-1 of each interaction among its user's interactions."""
    key = rng.random(len(user))
    order = np.lexsort((key, user))
    counts = np.bincount(user, minlength=n_users)
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(user), np.int64)
    rank[order] = np.arange(len(user)) - starts[user[order]]
    return rank


def ratio_split(inter: Interactions, test_frac: float = 0.2, val_frac: float = 0.1, seed=0) -> Split:
    """Per-user random split: ``test_frac`` of each user's interactions to test, then ``val_frac`` of the
    remaining (training) interactions to validation, the rest to train (rounding rule in the module doc).

    Seeded (``seed``: int or ``numpy.random.Generator``); the three parts are disjoint, cover ``inter``
    and share its index space and features. Raises :class:`DataError` when the test part would be empty
    (or validation, if ``val_frac > 0``), e.g. when every user has a single interaction.
    """
    if not (0 <= test_frac < 1 and 0 <= val_frac < 1):
        raise data_error(f"test_frac={test_frac} and val_frac={val_frac} must lie in [0, 1)")
    if len(inter) == 0:
        raise data_error(f"cannot split {inter.name or 'the interactions'}: there are no interactions")
    rng = _rng(seed)
    counts = inter.user_degree()
    n_test = np.minimum(_round_half_up(test_frac * counts), np.maximum(counts - 1, 0))
    m = counts - n_test
    n_val = np.minimum(_round_half_up(val_frac * m), np.maximum(m - 1, 0))
    rank = _rank_within_user(inter.user, inter.n_users, rng)
    is_test = rank < n_test[inter.user]
    is_val = ~is_test & (rank < (n_test + n_val)[inter.user])
    is_train = ~(is_test | is_val)
    for part, mask, frac in (("test", is_test, test_frac), ("validation", is_val, val_frac)):
        if frac > 0 and not mask.any():
            raise data_error(
                f"ratio_split of {inter.name or 'the interactions'} gives an empty {part} split "
                f"({len(inter)} interactions of {inter.n_users} users, max {counts.max()} per user)",
                fix="use a dataset with more interactions per user, filter users with k_core, or raise the fraction")
    return Split(inter.subset(is_train), inter.subset(is_val), inter.subset(is_test))


def leave_one_out(seqs) -> SeqSplit:
    """Leave-one-out for sequences (a :class:`Sequences` or a list of arrays): per user the last item is the
    test target (history ``seq[:-1]``), the second-to-last the validation target (history ``seq[:-2]``,
    which is also the training sequence). Every sequence needs at least 3 items; a shorter one raises
    :class:`DataError` naming the user (filter with :func:`k_core` first)."""
    seq_list = seqs.seqs if isinstance(seqs, Sequences) else [np.asarray(s, np.int32) for s in seqs]
    if not seq_list:
        raise data_error("leave_one_out got no sequences")
    lengths = np.fromiter(map(len, seq_list), np.int64, count=len(seq_list))
    short = np.flatnonzero(lengths < 3)
    if short.size:
        u = int(short[0])
        raise data_error(f"leave_one_out needs sequences of at least 3 items; user {u} has {lengths[u]} "
                         f"({short.size} users are that short)",
                         fix="filter with jaxrec.data.k_core(seqs, k=3) (or more) before splitting")
    return SeqSplit(train=[s[:-2] for s in seq_list],
                    valid_target=np.array([s[-2] for s in seq_list], np.int32),
                    test_target=np.array([s[-1] for s in seq_list], np.int32),
                    test_history=[s[:-1] for s in seq_list])


def compact(inter: Interactions) -> Interactions:
    """Drop users and items without interactions and re-index densely (raw ids and features follow)."""
    users = np.flatnonzero(inter.user_degree() > 0)
    items = np.flatnonzero(inter.item_degree() > 0)
    umap = np.full(inter.n_users, -1, np.int64)
    imap = np.full(inter.n_items, -1, np.int64)
    umap[users] = np.arange(len(users))
    imap[items] = np.arange(len(items))
    return dataclasses.replace(
        inter, user=umap[inter.user], item=imap[inter.item], n_users=len(users), n_items=len(items),
        user_ids=inter.user_ids[users], item_ids=inter.item_ids[items],
        user_features={k: v[users] for k, v in inter.user_features.items()},
        item_features={k: v[items] for k, v in inter.item_features.items()})


def k_core(data, k: int = 5, k_item: int | None = None):
    """Iterated k-core: repeatedly drop users with fewer than ``k`` interactions and items with fewer than
    ``k_item`` (default ``k``) until nothing changes (a fixed point), then re-index densely.

    Works on :class:`Interactions` (counts rows, so repeated pairs count repeatedly) and on
    :class:`Sequences` (items are removed from the sequences, order kept; sequence item ids are
    re-indexed to ``1..n_items``). Raises :class:`DataError` if nothing survives.
    """
    k_item = k if k_item is None else k_item
    if isinstance(data, Sequences):
        inter = data.to_interactions()
    else:
        inter = data
    keep = np.ones(len(inter), bool)
    while True:
        ud = np.bincount(inter.user[keep], minlength=inter.n_users)
        idg = np.bincount(inter.item[keep], minlength=inter.n_items)
        new = keep & (ud[inter.user] >= k) & (idg[inter.item] >= k_item)
        if new.sum() == keep.sum():
            break
        keep = new
    if not keep.any():
        raise data_error(f"k_core(k={k}, k_item={k_item}) removed every interaction of "
                         f"{inter.name or 'the data'}", fix="use a smaller k")
    out = compact(inter.subset(keep))
    if isinstance(data, Sequences):
        order = np.lexsort((out.timestamp, out.user))
        counts = out.user_degree()
        seqs = np.split((out.item[order] + 1).astype(np.int32), np.cumsum(counts)[:-1])
        return Sequences(seqs=seqs, n_items=out.n_items, item_ids=np.concatenate([[-1], out.item_ids]),
                         user_ids=out.user_ids, name=data.name)
    return out


def cold_start_tasks(inter: Interactions, n_query: int = 10, min_ratings: int = 13, max_ratings: int = 100,
                     seed=0) -> ColdStartTasks:
    """One meta-learning task per user with ``min_ratings <= n_u <= max_ratings`` rated items (MeLU's rule):
    the user's ratings are shuffled (seeded) and the last ``n_query`` form the query set, the others the
    support set; arrays are padded to the largest support size with masks. Users outside the bounds are
    counted in ``n_filtered`` (not silently: the count is kept). Needs ``rating``; raises
    :class:`DataError` if no user qualifies or ``min_ratings <= n_query``."""
    if inter.rating is None:
        raise data_error("cold_start_tasks needs explicit ratings", fix="use a rating dataset")
    if min_ratings <= n_query:
        raise data_error(f"min_ratings={min_ratings} must exceed n_query={n_query} so every task has support")
    rng = _rng(seed)
    counts = inter.user_degree()
    active = np.flatnonzero(counts > 0)
    ok = (counts >= min_ratings) & (counts <= max_ratings)
    users = np.flatnonzero(ok)
    if users.size == 0:
        raise data_error(f"no user of {inter.name or 'the data'} has between {min_ratings} and {max_ratings} "
                         "ratings", fix="relax min_ratings / max_ratings")
    sel = ok[inter.user]
    u, it, r = inter.user[sel], inter.item[sel], inter.rating[sel]
    rank = _rank_within_user(u, inter.n_users, rng)
    task_of_user = np.full(inter.n_users, -1, np.int64)
    task_of_user[users] = np.arange(len(users))
    t = task_of_user[u]
    n_sup = counts[users] - n_query
    is_q = rank >= n_sup[t]
    s_max = int(n_sup.max())
    sup_item = np.zeros((len(users), s_max), np.int32)
    sup_rating = np.zeros((len(users), s_max), np.float32)
    sup_mask = np.zeros((len(users), s_max), bool)
    q_item = np.zeros((len(users), n_query), np.int32)
    q_rating = np.zeros((len(users), n_query), np.float32)
    q_mask = np.zeros((len(users), n_query), bool)
    s = ~is_q
    sup_item[t[s], rank[s]] = it[s]
    sup_rating[t[s], rank[s]] = r[s]
    sup_mask[t[s], rank[s]] = True
    qc = rank[is_q] - n_sup[t[is_q]]
    q_item[t[is_q], qc] = it[is_q]
    q_rating[t[is_q], qc] = r[is_q]
    q_mask[t[is_q], qc] = True
    return ColdStartTasks(
        task_user=users.astype(np.int32), support_item=sup_item, support_rating=sup_rating, support_mask=sup_mask,
        query_item=q_item, query_rating=q_rating, query_mask=q_mask, n_users=inter.n_users,
        n_items=inter.n_items, user_features=inter.user_features, item_features=inter.item_features,
        user_ids=inter.user_ids, item_ids=inter.item_ids, vocab=inter.vocab, name=inter.name,
        n_filtered=int(active.size - users.size))


def global_split(inter: Interactions, train_frac: float = 0.5, val_frac: float = 0.25, seed=0) -> Split:
    """Global random split of all rows (SIF's protocol): a seeded permutation, the first
    ``int(n * train_frac)`` rows to train, the next ``int(n * val_frac)`` to validation, the rest to test
    (no per-user guarantee; a user or item may be missing from train)."""
    if not (0 < train_frac < 1 and 0 <= val_frac < 1 and train_frac + val_frac < 1):
        raise data_error(f"global_split: need 0 < train_frac, 0 <= val_frac and train_frac + val_frac < 1, "
                         f"got {train_frac} and {val_frac}")
    n = len(inter)
    perm = _rng(seed).permutation(n)
    n_train, n_val = int(n * train_frac), int(n * val_frac)
    parts = perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]
    return Split(*(inter.subset(np.sort(p)) for p in parts))


def standardise_ratings(split: Split) -> tuple[Split, float, float]:
    """``(split with ratings (r - mean) / std, mean, std)``, mean and (population) std of the training
    ratings only, applied to all three parts."""
    if split.train.rating is None:
        raise data_error("standardise_ratings: the interactions have no ratings")
    mean, std = float(np.mean(split.train.rating)), float(np.std(split.train.rating))
    if not std > 0:
        raise data_error(f"standardise_ratings: the training ratings are constant ({mean}); nothing to standardise")
    return Split(*(dataclasses.replace(p, rating=(p.rating - mean) / std) for p in split)), mean, std


def time_split(inter: Interactions, test_frac: float = 0.2, val_frac: float = 0.25) -> Split:
    """Per-user time-ordered split (lambda-Opt's official "lro" split): per user u with n_u interactions the
    latest ``floor(test_frac * n_u)`` go to test, then the latest ``floor(val_frac * m)`` of the remaining
    ``m`` to validation, the rest to train. Order: ``timestamp``, ties broken by row order (a later row is
    later). Deterministic; needs timestamps. Raises :class:`DataError` when test (or validation, if
    ``val_frac > 0``) would be empty."""
    if not (0 <= test_frac < 1 and 0 <= val_frac < 1):
        raise data_error(f"time_split: test_frac={test_frac} and val_frac={val_frac} must lie in [0, 1)")
    if inter.timestamp is None:
        raise data_error(f"time_split of {inter.name or 'the interactions'} needs timestamps; it has none")
    counts = inter.user_degree()
    n_test = np.floor(test_frac * counts + 1e-9).astype(np.int64)
    n_val = np.floor(val_frac * (counts - n_test) + 1e-9).astype(np.int64)
    order = np.lexsort((-np.arange(len(inter)), -inter.timestamp, inter.user))  # per user, latest first
    starts = np.cumsum(counts) - counts
    recency = np.empty(len(inter), np.int64)  # 0 = the user's latest interaction
    recency[order] = np.arange(len(inter)) - starts[inter.user[order]]
    is_test = recency < n_test[inter.user]
    is_val = ~is_test & (recency < (n_test + n_val)[inter.user])
    for part, mask, frac in (("test", is_test, test_frac), ("validation", is_val, val_frac)):
        if frac > 0 and not mask.any():
            raise data_error(f"time_split of {inter.name or 'the interactions'} gives an empty {part} split "
                             f"(max {counts.max()} interactions per user)", fix="filter users with k_core first")
    return Split(inter.subset(~(is_test | is_val)), inter.subset(is_val), inter.subset(is_test))
