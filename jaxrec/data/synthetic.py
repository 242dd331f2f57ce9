"""Offline synthetic datasets (the embedded default of every experiment). Deterministic given ``seed``.

* :func:`implicit_clusters` -- implicit feedback from planted user/item clusters with a popularity skew.
* :func:`sequences` -- item sequences from a cluster Markov chain with a learnable "successor" structure.
* :func:`ratings_with_features` -- explicit ratings 1..5 driven by categorical user and item features.
* :func:`ctr_rows` / :func:`synthetic_interest_groups` -- Meta-Wrapper's interest-group CTR set, with the CTR row
  types :class:`CTRData` / :class:`CTRSplit` it builds (here, below the loaders, so that
  ``jaxrec.data.ctr`` can load through :func:`jaxrec.data.load_dataset` without an import circle).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from .errors import DataError, data_error
from .types import Interactions, Sequences

__all__ = ["implicit_clusters", "sequences", "ratings_with_features", "ctr_rows", "synthetic_interest_groups",
           "CTRData", "CTRSplit"]


def _gumbel_topk_rows(logw: np.ndarray, k: np.ndarray, rng: np.random.Generator, chunk: int = 256):
    """For each row r draw ``k[r]`` distinct columns without replacement with probabilities proportional to
    ``exp(logw[r])`` (Gumbel top-k = sequential Plackett-Luce draws). Returns (rows, cols, draw_index)."""
    rows, cols, order = [], [], []
    n_rows, n_cols = logw.shape
    for s in range(0, n_rows, chunk):
        block = logw[s: s + chunk] + rng.gumbel(size=(min(chunk, n_rows - s), n_cols))
        ranked = np.argsort(-block, axis=1, kind="stable")
        kk = k[s: s + chunk]
        mask = np.arange(n_cols)[None, :] < kk[:, None]
        r, c = np.nonzero(mask)
        rows.append(r + s)
        cols.append(ranked[r, c])
        order.append(c)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(order)


def _balanced_clusters(n: int, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % n_clusters).astype(np.int32)


def implicit_clusters(n_users: int = 1000, n_items: int = 1500, n_clusters: int = 10, mean_per_user: float = 50.0,
                      min_per_user: int = 10, in_cluster: float = 0.8, popularity: float = 0.8,
                      seed: int = 0) -> Interactions:
    """Implicit feedback with planted clusters and a popularity skew (default ~1000 x 1500, ~50k pairs).

    Users and items get balanced random clusters; item i has popularity ``w_i = rank_i^(-popularity)``
    (Zipf-like, random ranks). User u (cluster c) draws ``n_u ~ max(min_per_user, Gamma(2, mean/2))``
    distinct items without replacement with probability proportional to ``w_i * a_c^[cluster(i) = c]``,
    where ``a_c`` makes the expected share of in-cluster draws equal ``in_cluster`` for the first draw.
    ``timestamp`` is the draw order. ``user_features['cluster']`` / ``item_features['cluster']`` hold the
    planted clusters, ``item_features['popularity']`` the weights. A cluster model (MF) therefore beats
    most-popular, which only sees ``w``.
    """
    if not (0 < in_cluster < 1) or n_clusters < 1 or min_per_user < 1:
        raise data_error(f"need 0 < in_cluster < 1, n_clusters >= 1, min_per_user >= 1 (got {in_cluster}, "
                         f"{n_clusters}, {min_per_user})")
    rng = np.random.default_rng(seed)
    u_cl = _balanced_clusters(n_users, n_clusters, rng)
    i_cl = _balanced_clusters(n_items, n_clusters, rng)
    w = (rng.permutation(n_items) + 1.0) ** (-popularity)
    w /= w.sum()
    mass = np.bincount(i_cl, weights=w, minlength=n_clusters)
    a = in_cluster / (1 - in_cluster) * (1 - mass) / np.maximum(mass, 1e-12)
    a = np.where(mass >= 1 - 1e-12, 1.0, a)
    logw = np.log(w)[None, :] + np.where(i_cl[None, :] == u_cl[:, None], np.log(a)[u_cl][:, None], 0.0)
    n_u = np.maximum(min_per_user, np.round(rng.gamma(2.0, mean_per_user / 2.0, size=n_users))).astype(np.int64)
    n_u = np.minimum(n_u, n_items - 1)
    rows, cols, order = _gumbel_topk_rows(logw, n_u, rng)
    return Interactions(user=rows, item=cols, n_users=n_users, n_items=n_items, timestamp=order,
                        user_features={"cluster": u_cl}, item_features={"cluster": i_cl, "popularity": w.astype(np.float32)},
                        name="synthetic")


def sequences(n_users: int = 1000, n_items: int = 500, n_clusters: int = 10, mean_len: float = 20.0,
              min_len: int = 5, max_len: int = 50, p_follow: float = 0.6, p_switch: float = 0.05,
              popularity: float = 0.8, seed: int = 0) -> Sequences:
    """Sequences from a cluster Markov chain (items ``1..n_items``; 0 stays padding).

    Items get balanced clusters; inside each cluster a random cycle defines ``succ(i)``. A user starts in a
    random cluster at a popularity-weighted item and at each step goes to ``succ(current)`` with probability
    ``p_follow``, jumps to a popularity-weighted item of a uniformly random cluster with probability
    ``p_switch``, and otherwise draws a popularity-weighted item of the current cluster. Lengths are
    ``clip(min_len + Poisson(mean_len - min_len), min_len, max_len)``. The successor rule makes the next
    item predictable (a sequential model can reach HR@10 near ``p_follow``); popularity alone cannot.
    """
    if not (0 <= p_follow and 0 <= p_switch and p_follow + p_switch <= 1) or min_len < 1 or max_len < min_len:
        raise data_error("need p_follow, p_switch >= 0 with p_follow + p_switch <= 1 and 1 <= min_len <= max_len")
    rng = np.random.default_rng(seed)
    i_cl = _balanced_clusters(n_items, n_clusters, rng)
    w = (rng.permutation(n_items) + 1.0) ** (-popularity)
    succ = np.empty(n_items, np.int64)
    members, cdf = [], []
    for c in range(n_clusters):
        m = rng.permutation(np.flatnonzero(i_cl == c))
        succ[m] = np.roll(m, -1)
        members.append(m)
        cdf.append(np.cumsum(w[m]) / w[m].sum())
    sizes = np.array([len(m) for m in members])
    if (sizes == 0).any():
        raise data_error(f"n_items={n_items} must be >= n_clusters={n_clusters}")
    width = sizes.max()
    mem = np.zeros((n_clusters, width), np.int64)
    cdfs = np.ones((n_clusters, width))
    for c in range(n_clusters):
        mem[c, : sizes[c]] = members[c]
        cdfs[c, : sizes[c]] = cdf[c]

    def draw(clusters):
        u = rng.random(len(clusters))
        idx = (cdfs[clusters] < u[:, None]).sum(axis=1)
        return mem[clusters, np.minimum(idx, sizes[clusters] - 1)]

    lengths = np.clip(min_len + rng.poisson(max(mean_len - min_len, 0), size=n_users), min_len, max_len)
    T = int(lengths.max())
    cl = rng.integers(0, n_clusters, size=n_users)
    cur = draw(cl)
    out = np.zeros((n_users, T), np.int64)
    out[:, 0] = cur
    for t in range(1, T):
        r = rng.random(n_users)
        jump = (r >= p_follow) & (r < p_follow + p_switch)
        cl = np.where(jump, rng.integers(0, n_clusters, size=n_users), cl)
        nxt = np.where(r < p_follow, succ[cur], draw(cl))
        cur = nxt
        cl = i_cl[cur]
        out[:, t] = cur
    seqs = [out[u, : lengths[u]] + 1 for u in range(n_users)]
    return Sequences(seqs=seqs, n_items=n_items, name="synthetic-seq")


def ratings_with_features(n_users: int = 600, n_items: int = 400, user_card=(2, 7, 21), item_card=(6, 25),
                          dim: int = 4, min_ratings: int = 13, max_ratings: int = 60, noise: float = 0.3,
                          seed: int = 0) -> Interactions:
    """Explicit ratings 1..5 driven by categorical features (for cold-start meta-learning).

    User features ``gender, age, occupation`` and item features ``rate, genre`` (cardinalities
    ``user_card`` / ``item_card``) are drawn uniformly; each feature value has a random vector in R^dim
    and bias; a user's (item's) vector is the sum over its features plus a small individual part. The
    score ``s_ui = <x_u, y_i> + b_u + b_i + noise * eps`` is cut at fixed quantiles of all scores into
    1..5 with shares (6%, 11%, 27%, 35%, 21%) (MovieLens-like). Each user rates a uniform number in
    ``[min_ratings, max_ratings]`` of distinct uniformly chosen items (``timestamp`` = rating order).
    """
    if len(user_card) != 3 or len(item_card) != 2:
        raise data_error("user_card needs 3 cardinalities (gender, age, occupation), item_card 2 (rate, genre)")
    if not (1 <= min_ratings <= max_ratings < n_items):
        raise data_error(f"need 1 <= min_ratings <= max_ratings < n_items, got {min_ratings}, {max_ratings}, {n_items}")
    rng = np.random.default_rng(seed)
    u_names, i_names = ("gender", "age", "occupation"), ("rate", "genre")
    ufeat = {f: rng.integers(0, c, size=n_users).astype(np.int32) for f, c in zip(u_names, user_card)}
    ifeat = {f: rng.integers(0, c, size=n_items).astype(np.int32) for f, c in zip(i_names, item_card)}
    scale = 1.0 / np.sqrt(dim)
    x = 0.3 * rng.normal(size=(n_users, dim)) * scale
    y = 0.3 * rng.normal(size=(n_items, dim)) * scale
    bu = 0.2 * rng.normal(size=n_users)
    bi = 0.2 * rng.normal(size=n_items)
    for f, c in zip(u_names, user_card):
        x += rng.normal(size=(c, dim))[ufeat[f]] * scale
        bu += 0.5 * rng.normal(size=c)[ufeat[f]]
    for f, c in zip(i_names, item_card):
        y += rng.normal(size=(c, dim))[ifeat[f]] * scale
        bi += 0.5 * rng.normal(size=c)[ifeat[f]]
    n_u = rng.integers(min_ratings, max_ratings + 1, size=n_users)
    rows, cols, order = _gumbel_topk_rows(np.zeros((n_users, n_items)), n_u, rng)
    s = np.einsum("nd,nd->n", x[rows], y[cols]) + bu[rows] + bi[cols] + noise * rng.normal(size=len(rows))
    cuts = np.quantile(s, np.cumsum([0.06, 0.11, 0.27, 0.35]))
    rating = (np.searchsorted(cuts, s) + 1).astype(np.float32)
    vocab = {f: [f"{f}_{k}" for k in range(c)] for f, c in zip(u_names + i_names, tuple(user_card) + tuple(item_card))}
    return Interactions(user=rows, item=cols, n_users=n_users, n_items=n_items, rating=rating, timestamp=order,
                        user_features=ufeat, item_features=ifeat, vocab=vocab, name="synthetic-ratings")


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
                raise DataError(
                    f"CTRData: field {name!r} has {len(getattr(self, name))} rows but label has {n}; "
                    "build all fields from the same rows"
                )
        if (self.target_cat is None) != (self.hist_cat is None):
            raise DataError("CTRData: give both target_cat and hist_cat, or neither")
        if n and (self.target.min() < 1 or self.target.max() > self.n_items):
            raise DataError(
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
        raise DataError("synthetic_interest_groups: not enough items per group for n_pos / n_neg")
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


def ctr_rows(*args, **kwargs) -> CTRSplit:
    """Meta-Wrapper's synthetic interest-group CTR set: :func:`synthetic_interest_groups` (also
    ``jaxrec.data.ctr.synthetic_interest_groups``)."""
    return synthetic_interest_groups(*args, **kwargs)
