"""Splits, k-core, cold-start tasks, negative sampling, batch iteration and sequence utilities."""
import time

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxrec.data as D


def random_interactions(seed=0, n_users=60, n_items=40, n=900):
    rng = np.random.default_rng(seed)
    pairs = np.unique(np.stack([rng.integers(0, n_users, n), rng.integers(0, n_items, n)], 1), axis=0)
    return D.Interactions(user=pairs[:, 0], item=pairs[:, 1], n_users=n_users, n_items=n_items,
                          timestamp=rng.integers(0, 10**6, len(pairs)), name="random")


def keys(x):
    return set(zip(x.user.tolist(), x.item.tolist()))


def test_ratio_split_disjoint_cover_and_fractions():
    x = random_interactions()
    s = D.ratio_split(x, test_frac=0.2, val_frac=0.1, seed=3)
    tr, va, te = keys(s.train), keys(s.val), keys(s.test)
    assert not (tr & va or tr & te or va & te) and tr | va | te == keys(x)
    assert len(s.train) + len(s.val) + len(s.test) == len(x)
    n = x.user_degree()
    for u in range(x.n_users):  # the documented per-user rule, recomputed here
        if n[u] == 0:
            continue
        n_test = min(int(np.floor(0.2 * n[u] + 0.5)), n[u] - 1)
        m = n[u] - n_test
        n_val = min(int(np.floor(0.1 * m + 0.5)), m - 1)
        assert (s.test.user == u).sum() == n_test and (s.val.user == u).sum() == n_val
        assert (s.train.user == u).sum() >= 1


def test_ratio_split_seeded():
    x = random_interactions()
    a, b, c = (D.ratio_split(x, seed=s) for s in (5, 5, 6))
    assert keys(a.test) == keys(b.test) and keys(a.val) == keys(b.val)
    assert keys(a.test) != keys(c.test)


def test_ratio_split_ml100k(data_dir):
    x = D.load_ml100k(data_dir)
    s = D.ratio_split(x, seed=0)
    frac = np.bincount(s.test.user, minlength=943) / x.user_degree()
    assert abs(frac.mean() - 0.2) < 0.01 and len(s.train) + len(s.val) + len(s.test) == 100_000
    assert (np.bincount(s.train.user, minlength=943) >= 1).all()


def test_leave_one_out_hand_case():
    s = D.leave_one_out([[5, 3, 9, 2], [1, 2, 3]])
    assert [list(t) for t in s.train] == [[5, 3], [1]]
    assert list(s.valid_target) == [9, 2] and list(s.test_target) == [2, 3]
    assert [list(t) for t in s.test_history] == [[5, 3, 9], [1, 2]]


def test_leave_one_out_beauty(data_dir):
    seqs = D.load_sequences("Amazon_Beauty", data_dir)
    s = D.leave_one_out(seqs)
    u = 123
    assert s.test_target[u] == seqs.seqs[u][-1] and s.valid_target[u] == seqs.seqs[u][-2]
    assert sum(map(len, s.train)) == seqs.n_actions - 2 * seqs.n_users
    t0 = time.perf_counter()
    inputs, targets, user = D.prefix_instances(s.train, 50)
    assert time.perf_counter() - t0 < 3.0
    assert len(targets) == sum(max(len(t) - 1, 0) for t in s.train)
    k = np.flatnonzero(user == u)[-1]  # last prefix of user u predicts train[u][-1] from the rest
    hist = s.train[u][:-1][-50:]
    assert targets[k] == s.train[u][-1] and list(inputs[k][-len(hist):]) == list(hist)


def naive_k_core(pairs, k):
    pairs = set(pairs)
    while True:
        uc, ic = {}, {}
        for u, i in pairs:
            uc[u] = uc.get(u, 0) + 1
            ic[i] = ic.get(i, 0) + 1
        new = {(u, i) for u, i in pairs if uc[u] >= k and ic[i] >= k}
        if new == pairs:
            return pairs
        pairs = new


@pytest.mark.parametrize("k,n", [(2, 60), (5, 400), (10, 900)])
def test_k_core_fixed_point(k, n):
    x = random_interactions(seed=k, n=n)
    core = D.k_core(x, k=k)
    assert 0 < len(core) < len(x)  # a non-trivial case
    assert core.user_degree().min() >= k and core.item_degree().min() >= k  # a fixed point
    raw = {(int(core.user_ids[u]), int(core.item_ids[i])) for u, i in zip(core.user, core.item)}
    assert raw == naive_k_core(zip(x.user.tolist(), x.item.tolist()), k)  # and the largest one
    assert core.n_users == len(np.unique(core.user)) and core.n_items == len(np.unique(core.item))


def test_k_core_sequences_keeps_order():
    seqs = D.Sequences(seqs=[[1, 2, 3, 4], [2, 3, 4, 1], [5, 1, 2]], n_items=5)
    core = D.k_core(seqs, k=2)  # item 5 occurs once -> removed; then every user still has >= 2 items
    raw = [list(core.item_ids[s]) for s in core.seqs]
    assert raw == [[1, 2, 3, 4], [2, 3, 4, 1], [1, 2]]


def test_cold_start_tasks():
    r = D.synthetic.ratings_with_features(n_users=80, n_items=100, seed=1)
    t = D.cold_start_tasks(r, n_query=10, min_ratings=13, max_ratings=40, seed=2)
    n = r.user_degree()
    assert len(t) == int(((n >= 13) & (n <= 40)).sum()) and t.n_filtered == int(((n < 13) | (n > 40)).sum())
    for k in range(len(t)):
        u = t.task_user[k]
        got = sorted(np.concatenate([t.support_item[k][t.support_mask[k]], t.query_item[k]]).tolist())
        assert got == sorted(r.item[r.user == u].tolist())
        assert t.support_mask[k].sum() == n[u] - 10
    t2 = D.cold_start_tasks(r, n_query=10, min_ratings=13, max_ratings=40, seed=2)
    assert np.array_equal(t.query_item, t2.query_item)


@settings(max_examples=40, deadline=None)
@given(n_users=st.integers(1, 12), n_items=st.integers(2, 30), density=st.floats(0.0, 0.97),
       n=st.integers(1, 8), rounds=st.sampled_from([0, 1, 20]), seed=st.integers(0, 2**31))
def test_sample_negatives_never_positive(n_users, n_items, density, n, rounds, seed):
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < density
    dense[np.arange(n_users), rng.integers(0, n_items, n_users)] = False  # at least one negative per user
    csr = sp.csr_matrix(dense.astype(np.float32))
    users = rng.integers(0, n_users, size=rng.integers(1, 50))
    neg = D.sample_negatives(rng, users, csr, n=n, max_rounds=rounds)
    assert neg.shape == (len(users), n) and neg.dtype == np.int32
    assert not dense[users[:, None], neg].any()


@pytest.mark.parametrize("rounds", [0, 20])
def test_sample_negatives_uniform(rounds):
    dense = np.zeros((1, 10), bool)
    dense[0, [0, 3, 4, 9]] = True
    neg = D.sample_negatives(np.random.default_rng(0), np.zeros(60_000, int), sp.csr_matrix(dense), max_rounds=rounds)
    freq = np.bincount(neg.ravel(), minlength=10) / neg.size
    free = ~dense[0]
    assert np.all(freq[dense[0]] == 0) and np.abs(freq[free] - 1 / 6).max() < 0.01


def test_batch_iterator():
    arrays = {"u": np.arange(10), "i": np.arange(10) * 2}
    batches = list(D.batch_iterator(arrays, 4, rng=0))
    assert [len(b["u"]) for b in batches] == [4, 4, 2]
    u = np.concatenate([np.asarray(b["u"]) for b in batches])
    assert sorted(u) == list(range(10)) and not np.array_equal(u, np.arange(10))
    assert all(np.array_equal(np.asarray(b["i"]), 2 * np.asarray(b["u"])) for b in batches)
    assert [len(b["u"]) for b in D.batch_iterator(arrays, 4, rng=0, drop_last=True)] == [4, 4]
    fixed = list(D.batch_iterator(arrays, 4, rng=0, n_batches=5))
    assert len(fixed) == 5 and all(len(b["u"]) == 4 for b in fixed)
    ordered = np.concatenate([np.asarray(b["u"]) for b in D.batch_iterator(arrays, 3, shuffle=False)])
    assert np.array_equal(ordered, np.arange(10))
    with pytest.raises(D.DataError, match="different lengths"):
        next(D.batch_iterator({"a": np.zeros(3), "b": np.zeros(4)}, 2))


def test_pad_sequences():
    seqs = [[1, 2, 3], [4], [5, 6, 7, 8, 9], []]
    assert D.pad_sequences(seqs, 4).tolist() == [[0, 1, 2, 3], [0, 0, 0, 4], [6, 7, 8, 9], [0, 0, 0, 0]]
    assert D.pad_sequences(seqs, 4, side="right").tolist() == [[1, 2, 3, 0], [4, 0, 0, 0], [6, 7, 8, 9], [0, 0, 0, 0]]


def test_prefix_instances_hand_case():
    inputs, targets, user = D.prefix_instances([[7, 8, 9, 10], [3], [4, 5]], max_len=2)
    assert inputs.tolist() == [[0, 7], [7, 8], [8, 9], [0, 4]]
    assert targets.tolist() == [8, 9, 10, 5] and user.tolist() == [0, 0, 0, 2]
    assert inputs.dtype == targets.dtype == user.dtype == np.int32
