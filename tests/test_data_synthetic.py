"""Synthetic generators: deterministic, the documented sizes, and learnable structure."""
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import svds

import jaxrec.data as D
from jaxrec.data import synthetic


def test_implicit_clusters_deterministic_and_sized():
    a, b = synthetic.implicit_clusters(seed=1), synthetic.implicit_clusters(seed=1)
    c = synthetic.implicit_clusters(seed=2)
    assert np.array_equal(a.user, b.user) and np.array_equal(a.item, b.item)
    assert not (len(a) == len(c) and np.array_equal(a.item, c.item))
    assert (a.n_users, a.n_items) == (1000, 1500) and 40_000 <= len(a) <= 60_000
    assert len(set(zip(a.user.tolist(), a.item.tolist()))) == len(a)  # no repeated pairs
    assert a.user_degree().min() >= 10
    same = a.user_features["cluster"][a.user] == a.item_features["cluster"][a.item]
    assert 0.6 < same.mean() < 0.9  # planted clusters (0.1 by chance)
    deg = np.sort(a.item_degree())[::-1]
    assert deg[:150].sum() > 3 * deg[-150:].sum() * 1.0  # popularity skew


def recall_at_20(scores, train, test):
    scores = np.where(train.toarray() > 0, -np.inf, scores)
    top = np.argsort(-scores, axis=1)[:, :20]
    hits = np.take_along_axis(test.toarray(), top, axis=1).sum(1)
    n = np.asarray(test.sum(1)).ravel()
    return float((hits[n > 0] / n[n > 0]).mean())


def test_implicit_clusters_learnable_beyond_popularity():
    x = synthetic.implicit_clusters(seed=0)
    s = D.ratio_split(x, seed=0)
    train, test = D.to_csr(s.train), D.to_csr(s.test)
    pop = np.tile(np.asarray(train.sum(0)).ravel(), (x.n_users, 1))
    u, sig, vt = svds(train.astype(np.float64), k=10)
    r_pop, r_svd = recall_at_20(pop, train, test), recall_at_20((u * sig) @ vt, train, test)
    assert r_svd > 1.5 * r_pop, (r_svd, r_pop)


def test_sequences_generator():
    a, b = synthetic.sequences(seed=3), synthetic.sequences(seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a.seqs, b.seqs))
    flat = np.concatenate(a.seqs)
    assert flat.min() >= 1 and flat.max() <= a.n_items and a.lengths().min() >= 5
    # the most frequent successor of each item explains far more transitions than popularity does
    prev = np.concatenate([s[:-1] for s in a.seqs])
    nxt = np.concatenate([s[1:] for s in a.seqs])
    m = sp.csr_matrix((np.ones(len(prev)), (prev, nxt)), shape=(a.n_items + 1, a.n_items + 1)).toarray()
    markov = m.max(axis=1).sum() / len(prev)
    popular = np.bincount(nxt).max() / len(nxt)
    assert markov > 0.5 and popular < 0.05


def test_ratings_with_features():
    r = synthetic.ratings_with_features(seed=0)
    assert set(np.unique(r.rating)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    share = np.bincount(r.rating.astype(int), minlength=6)[1:] / len(r)
    np.testing.assert_allclose(share, [0.06, 0.11, 0.27, 0.35, 0.21], atol=0.01)
    deg = r.user_degree()
    assert deg.min() >= 13 and deg.max() <= 60
    # features carry signal: the per-(rate, genre) mean rating varies much more than noise would allow
    g = r.item_features["genre"][r.item]
    means = np.array([r.rating[g == k].mean() for k in range(25)])
    assert means.std() > 0.15
    assert np.array_equal(r.rating, synthetic.ratings_with_features(seed=0).rating)


def test_load_dataset_synthetic_names():
    assert isinstance(D.load_dataset("synthetic-seq", n_users=20), D.Sequences)
    assert D.load_dataset("synthetic-ratings", n_users=30, n_items=80).rating is not None


def test_ctr_rows_reexport():
    ctr = pytest.importorskip("jaxrec.data.ctr")
    if not hasattr(ctr, "synthetic_interest_groups"):
        pytest.skip("jaxrec.data.ctr.synthetic_interest_groups not written yet")
    import inspect

    params = inspect.signature(ctr.synthetic_interest_groups).parameters
    kw = {"seed": 0} if "seed" in params else {}
    a, b = synthetic.ctr_rows(**kw), ctr.synthetic_interest_groups(**kw)
    assert type(a) is type(b)
