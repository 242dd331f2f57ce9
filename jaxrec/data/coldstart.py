"""Cold-start user tasks in the protocol of PAML (Yu et al., AAAI 2021), and its major / minor user rule.

:func:`cold_start_split`: rank users by their number of ratings and keep the ``cold_frac`` with the fewest
(ties by dense id), drop users with an invalid feature or fewer than ``min_ratings`` ratings (counted, not
silent), split the rest ``ratios`` (7:1:2) into meta-train / validation / test users with the seed, and per
user a random ``support_frac`` (80:20) support / query split with at least one query and one support item.
Each part is a :class:`ColdStartTasks` (padded arrays with masks, ready for ``vmap``).

:func:`major_users`: for each user feature, the values covering the top ``top_frac`` (30%) of the feature's
distinct values ranked by user count; a user with more than ``more_than`` (2) features in those sets is major.

:func:`model_features` turns the user / item features of the supported sets into the categorical index
arrays the MeLU encoders embed; :func:`load_ml1m_melu_all` joins the three MeLU cold states (the full ML-1M
rating file is not in ``ml-1m-melu``); :func:`synthetic_ratings` is the offline default set.
"""
from __future__ import annotations

import numpy as np

from .errors import data_error
from .loaders import MELU_STATES, load_ml1m_melu_interactions
from .types import ColdStartTasks, Interactions

__all__ = ["cold_start_split", "support_query_tasks", "major_users", "load_ml1m_melu_all", "model_features",
           "synthetic_ratings", "ML1M_AGE_EDGES"]

# ML-1M's age codes (users.dat): 1 = "under 18", 18 = "18-24", 25, 35, 45, 50, 56 = "56+"
ML1M_AGE_EDGES = (18, 25, 35, 45, 50, 56)


def support_query_tasks(inter: Interactions, users: np.ndarray, support_frac: float = 0.8,
                        seed=0) -> ColdStartTasks:
    """One task per user of ``users`` (dense ids, each with >= 2 ratings): a seeded shuffle of the user's
    ratings puts ``n_q = max(1, n - max(1, round(support_frac * n)))`` of them in the query set and the rest
    in the support set, so both sets are non-empty. Padded to the largest support / query size, with masks."""
    rng = np.random.default_rng(seed)
    users = np.asarray(users, np.int64)
    order = np.argsort(inter.user, kind="stable")
    starts = np.searchsorted(inter.user[order], users)
    ends = np.searchsorted(inter.user[order], users, side="right")
    n = ends - starts
    if np.any(n < 2):
        raise data_error(f"support_query_tasks: user {int(users[np.argmax(n < 2)])} has fewer than 2 ratings",
                         fix="drop users with fewer than 2 ratings first")
    n_s = np.clip(np.round(support_frac * n).astype(np.int64), 1, n - 1)
    n_q = n - n_s
    s_max, q_max = int(n_s.max()), int(n_q.max())
    out = {k: np.zeros((len(users), w), d) for k, w, d in
           (("si", s_max, np.int32), ("sr", s_max, np.float32), ("sm", s_max, bool),
            ("qi", q_max, np.int32), ("qr", q_max, np.float32), ("qm", q_max, bool))}
    for t in range(len(users)):
        rows = order[starts[t]:ends[t]][rng.permutation(n[t])]
        s, q = rows[: n_s[t]], rows[n_s[t]:]
        out["si"][t, : len(s)], out["sr"][t, : len(s)], out["sm"][t, : len(s)] = inter.item[s], inter.rating[s], True
        out["qi"][t, : len(q)], out["qr"][t, : len(q)], out["qm"][t, : len(q)] = inter.item[q], inter.rating[q], True
    return ColdStartTasks(task_user=users.astype(np.int32), support_item=out["si"], support_rating=out["sr"],
                          support_mask=out["sm"], query_item=out["qi"], query_rating=out["qr"],
                          query_mask=out["qm"], n_users=inter.n_users, n_items=inter.n_items,
                          user_features=inter.user_features, item_features=inter.item_features,
                          user_ids=inter.user_ids, item_ids=inter.item_ids, vocab=inter.vocab, name=inter.name)


def cold_start_split(inter: Interactions, *, cold_frac: float = 0.8, min_ratings: int = 2,
                     ratios=(0.7, 0.1, 0.2), support_frac: float = 0.8, valid_user: np.ndarray | None = None,
                     seed: int = 0) -> dict:
    """The PAML protocol (module docstring). Returns ``{"train", "val", "test"}`` :class:`ColdStartTasks`
    plus ``"counts"``: users with ratings, kept as cold, dropped for an invalid feature, dropped for fewer
    than ``min_ratings`` ratings, and per part. ``valid_user``: bool[n_users] (default: all valid)."""
    if inter.rating is None:
        raise data_error("cold_start_split needs explicit ratings", fix="use a rating dataset")
    if min_ratings < 2:
        raise data_error(f"min_ratings={min_ratings}: a task needs >= 2 ratings (support and query)")
    counts = np.bincount(inter.user, minlength=inter.n_users)
    active = np.flatnonzero(counts > 0)
    ranked = active[np.argsort(counts[active], kind="stable")]
    cold = np.sort(ranked[: int(np.floor(cold_frac * len(ranked)))])
    valid = np.ones(inter.n_users, bool) if valid_user is None else np.asarray(valid_user, bool)
    bad_feat = cold[~valid[cold]]
    rest = cold[valid[cold]]
    few = rest[counts[rest] < min_ratings]
    users = rest[counts[rest] >= min_ratings]
    if len(users) < 3:
        raise data_error(f"only {len(users)} cold-start users remain in {inter.name or 'the data'}",
                         fix="use a larger data set or a larger cold_frac")
    rng = np.random.default_rng(seed)
    perm = users[rng.permutation(len(users))]
    r = np.asarray(ratios, float) / np.sum(ratios)
    n_tr, n_va = int(round(r[0] * len(perm))), int(round(r[1] * len(perm)))
    parts = {"train": np.sort(perm[:n_tr]), "val": np.sort(perm[n_tr:n_tr + n_va]), "test": np.sort(perm[n_tr + n_va:])}
    out = {k: support_query_tasks(inter, u, support_frac, seed=(seed, i)) for i, (k, u) in enumerate(parts.items())}
    out["counts"] = {"with_ratings": int(len(active)), "cold": int(len(cold)), "invalid_feature": int(len(bad_feat)),
                     "too_few_ratings": int(len(few)), **{k: int(len(u)) for k, u in parts.items()}}
    return out


def major_users(features: dict, users: np.ndarray, top_frac: float = 0.3, more_than: int = 2) -> np.ndarray:
    """bool[len(users)]: major users (module docstring). ``features``: name -> int array over dense users;
    the value ranking counts the users of ``users`` (ties by value index); a feature with ``v`` distinct
    values keeps its ``ceil(top_frac * v)`` most common values."""
    users = np.asarray(users)
    hits = np.zeros(len(users), np.int64)
    for name, col in features.items():
        x = np.asarray(col)[users]
        values, n = np.unique(x, return_counts=True)
        top = values[np.argsort(-n, kind="stable")][: int(np.ceil(top_frac * len(values)))]
        hits += np.isin(x, top)
    return hits > more_than


def load_ml1m_melu_all(data_dir=None, *, verify: bool = True) -> Interactions:
    """Every rating of the three MeLU cold states (``user_cold_state``, ``item_cold_state``,
    ``user_and_item_cold_state``) as one :class:`Interactions`; a (user, movie) pair in several states is
    kept once (its first occurrence in that state order)."""
    parts = [load_ml1m_melu_interactions(data_dir, s, verify=verify) for s in MELU_STATES]
    u = np.concatenate([p.user for p in parts])
    i = np.concatenate([p.item for p in parts])
    r = np.concatenate([p.rating for p in parts])
    ts = np.concatenate([p.timestamp for p in parts])
    _, first = np.unique(u.astype(np.int64) * parts[0].n_items + i, return_index=True)
    keep = np.sort(first)
    p0 = parts[0]
    return Interactions(user=u[keep], item=i[keep], n_users=p0.n_users, n_items=p0.n_items, rating=r[keep],
                        timestamp=ts[keep], user_ids=p0.user_ids, item_ids=p0.item_ids,
                        user_features=p0.user_features, item_features=p0.item_features, vocab=p0.vocab,
                        name="ml-1m-melu/all-states")


def _multi_hot_to_lists(m: np.ndarray) -> np.ndarray:
    width = max(1, int(m.sum(1).max()))
    out = np.full((m.shape[0], width), -1, np.int32)
    for k, row in enumerate(m):
        idx = np.flatnonzero(row)
        out[k, : len(idx)] = idx
    return out


def _dense_index(x: np.ndarray) -> np.ndarray:
    return np.unique(x, return_inverse=True)[1].astype(np.int32).reshape(-1, 1)


def model_features(inter: Interactions) -> dict:
    """Categorical inputs of the MeLU encoders: ``user``: {field: int32[n_users]} (the four user features),
    ``item``: {field: int32[n_items, W]} padded index lists (-1 = padding; W = 1 for single-valued fields),
    ``valid_user``: bool[n_users]. ml-1m-melu: user gender / age / occupation / zipcode, item rate / genre /
    director / actor (MeLU's fields). ml-100k: user age (in ML-1M's seven age codes) / gender / occupation /
    zip, item genre / release year. A user feature naming an empty or "N/A" value is invalid."""
    uf, itf, vocab = inter.user_features, inter.item_features, inter.vocab
    if "zipcode" in uf:  # ml-1m-melu
        user = {f: uf[f].astype(np.int32) for f in ("gender", "age", "occupation", "zipcode")}
        item = {"rate": itf["rate"].reshape(-1, 1).astype(np.int32), "genre": _multi_hot_to_lists(itf["genre"]),
                "director": itf["director"].astype(np.int32), "actor": itf["actor"].astype(np.int32)}
        names = {f: vocab.get(f) for f in user}
    elif "age" in uf and "zip" in uf:  # ml-100k
        user = {"age": np.searchsorted(ML1M_AGE_EDGES, uf["age"], side="right").astype(np.int32),
                "gender": uf["gender"].astype(np.int32), "occupation": uf["occupation"].astype(np.int32),
                "zip": uf["zip"].astype(np.int32)}
        item = {"genre": _multi_hot_to_lists(itf["genre"]), "year": _dense_index(itf["year"])}
        names = {f: vocab.get(f) for f in ("gender", "occupation", "zip")}
    elif "user_fields" in uf:  # synthetic_ratings
        user = {f"u{k}": c.astype(np.int32) for k, c in enumerate(uf["user_fields"].T)}
        item = {"i0": itf["i0"].reshape(-1, 1).astype(np.int32), "i1": itf["i1"].astype(np.int32)}
        names = {}
    else:
        raise data_error(f"no MeLU feature mapping for {inter.name or 'this data set'}",
                         fix="use ml-1m-melu, ml-100k or the synthetic set")
    valid = np.ones(inter.n_users, bool)
    for f, vals in names.items():
        if vals is not None:
            bad = np.array([str(v).strip() in ("", "N/A") for v in vals] + [True])
            valid &= ~bad[np.clip(user[f], 0, len(vals))]
    return {"user": user, "item": item, "valid_user": valid}


def synthetic_ratings(n_users: int = 400, n_items: int = 300, seed: int = 0) -> Interactions:
    """Offline cold-start ratings: four categorical user fields and two item fields (one single-valued, one
    multi-valued); ratings 1..5 from a user-field x item-field interaction plus a per-user taste that only
    the user's own ratings reveal (what adaptation can learn); 3..40 ratings per user (geometric-like)."""
    rng = np.random.default_rng(seed)
    sizes = (2, 7, 10, 30)
    ufields = np.stack([rng.integers(0, s, n_users) for s in sizes], 1).astype(np.int32)
    i0 = rng.integers(0, 8, n_items).astype(np.int32)
    i1 = np.full((n_items, 3), -1, np.int32)
    for k in range(n_items):
        m = rng.integers(1, 4)
        i1[k, :m] = rng.choice(12, m, replace=False)
    a = rng.normal(0, 0.7, (sizes[1], 8))
    b = rng.normal(0, 0.5, (sizes[0], 12))
    taste = rng.normal(0, 0.8, (n_users, 12))
    counts = np.minimum(3 + rng.geometric(0.08, n_users), 40)
    users, items, ratings = [], [], []
    for u in range(n_users):
        its = rng.choice(n_items, counts[u], replace=False)
        g = np.array([np.mean([b[ufields[u, 0], j] + taste[u, j] for j in i1[i][i1[i] >= 0]]) for i in its])
        score = 3.2 + a[ufields[u, 1], i0[its]] + g + rng.normal(0, 0.3, len(its))
        users += [u] * len(its)
        items += list(its)
        ratings += list(np.clip(np.round(score), 1, 5))
    return Interactions(user=np.array(users, np.int32), item=np.array(items, np.int32), n_users=n_users,
                        n_items=n_items, rating=np.array(ratings, np.float32),
                        user_features={"user_fields": ufields}, item_features={"i0": i0, "i1": i1},
                        name="synthetic-cold-start")
