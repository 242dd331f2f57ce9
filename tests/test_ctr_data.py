"""CTR data builders: the synthetic interest-group set (paper sec. 6.4.1) and the DIN-style builder."""
import numpy as np
import pytest

from jaxrec.data.ctr import CTRData, ctr_from_sequences, load_ctr, synthetic_interest_groups
from jaxrec.data.errors import DataError


def _all(split):
    parts = [split.train, split.val, split.test]
    cat = lambda f: np.concatenate([getattr(p, f) for p in parts])  # noqa: E731
    return cat("user"), cat("target"), cat("label"), cat("true_label"), parts


def test_synthetic_structure_and_noise():
    split = synthetic_interest_groups(seed=3)
    user, target, label, true, parts = _all(split)
    assert len(user) == 10_000 and sum(len(p) for p in parts) == 10_000
    assert [len(p) for p in parts] == [7000, 1000, 2000]
    # 100 users x (50 own-group positives + 50 other-group negatives), group = id mod 10
    for u in (0, 17, 99):
        rows = user == u
        assert rows.sum() == 100
        items0 = target[rows] - 1
        same = items0 % 10 == u % 10
        np.testing.assert_array_equal(same, true[rows] == 1)
        assert same.sum() == 50 and len(np.unique(items0)) == 100
    # label noise: P(y=1 | true 1) = 0.5, P(y=1 | true 0) = 0.2 (5000 draws each, 5 sigma bands)
    assert abs(label[true == 1].mean() - 0.5) < 5 * np.sqrt(0.25 / 5000)
    assert abs(label[true == 0].mean() - 0.2) < 5 * np.sqrt(0.16 / 5000)
    # the category feature is the item's group
    p = split.train
    np.testing.assert_array_equal(p.target_cat, (p.target - 1) % 10 + 1)
    np.testing.assert_array_equal(p.hist_cat[p.hist > 0], (p.hist[p.hist > 0] - 1) % 10 + 1)
    assert np.all(p.hist_cat[p.hist == 0] == 0)


def test_synthetic_history_is_other_clicked_items():
    """Default: histories come from the user's clicked *training* items, all of one length per user (no
    label leak). Literal paper mode: the user's other clicked items over all rows."""
    split = synthetic_interest_groups(seed=1)
    tr = split.train
    for part in split:
        lens = {}
        for i in range(0, len(part), 37):
            u, v = part.user[i], part.target[i]
            clicked = set(tr.target[(tr.user == u) & (tr.label == 1)])
            h = part.hist[i]
            got = h[h > 0]
            assert np.all(h[: len(h) - len(got)] == 0)  # left padding
            assert len(set(got)) == len(got) == len(clicked) - 1 and set(got) <= clicked
            if v in clicked:
                assert set(got) == clicked - {v}
            lens.setdefault(u, set()).add(len(got))
        assert all(len(x) == 1 for x in lens.values())
    lit = synthetic_interest_groups(seed=1, history_from="all", equal_length=False)
    user, target, label, _, parts = _all(lit)
    for part in parts:
        for i in range(0, len(part), 97):
            u, v = part.user[i], part.target[i]
            h = part.hist[i]
            assert set(h[h > 0]) == set(target[(user == u) & (label == 1)]) - {v}


def test_synthetic_seeded():
    a, b, c = synthetic_interest_groups(seed=5), synthetic_interest_groups(seed=5), synthetic_interest_groups(seed=6)
    np.testing.assert_array_equal(a.test.hist, b.test.hist)
    np.testing.assert_array_equal(a.train.label, b.train.label)
    assert not np.array_equal(a.train.target, c.train.target)
    nocat = synthetic_interest_groups(seed=5, with_category=False)
    assert nocat.train.target_cat is None and nocat.train.n_cats == 0


def test_din_builder_positions_histories_negatives():
    seqs = [np.array([3, 1, 4, 5, 9, 2]), np.array([7, 8, 6]), np.array([2, 7, 1, 8])]
    split = ctr_from_sequences(seqs, 9, max_len=3, seed=0)
    tr = split.train
    pos = tr.label == 1
    # training positives: positions 1..L-3 -> user0: t=1,2,3 ; user1: none ; user2: t=1
    assert pos.sum() == 4 and (~pos).sum() == 4
    got = sorted((int(u), int(v), tuple(h)) for u, v, h in zip(tr.user[pos], tr.target[pos], tr.hist[pos]))
    assert got == [(0, 1, (0, 0, 3)), (0, 4, (0, 3, 1)), (0, 5, (3, 1, 4)), (2, 7, (0, 0, 2))]
    # validation / test: second-to-last / last item, histories truncated to the last max_len items
    v, t = split.val, split.test
    vp, tp = v.label == 1, t.label == 1
    assert list(v.target[vp]) == [9, 8, 1] and list(t.target[tp]) == [2, 6, 8]
    assert tuple(t.hist[tp][0]) == (4, 5, 9) and tuple(v.hist[vp][1]) == (0, 0, 7)
    # each positive gets one negative with the same history and an item the user never touched
    for part in split:
        neg = part.label == 0
        np.testing.assert_array_equal(part.hist[neg], part.hist[part.label == 1])
        for u, item in zip(part.user[neg], part.target[neg]):
            assert 1 <= item <= 9 and item not in set(seqs[u])


def test_din_builder_removes_repeated_target_from_history():
    """A repeated item must not sit in its own history: negatives never do, so the label would be readable
    from the history. Earlier occurrences are removed before truncation to ``max_len``; the other histories
    and the sequences without repeats are untouched."""
    seqs = [np.array([5, 1, 5, 2, 3, 5, 4, 6]), np.array([7, 8, 6])]
    split = ctr_from_sequences(seqs, 9, max_len=3, seed=0)
    tr, v, t = split.train, split.val, split.test
    pos = tr.label == 1
    got = sorted((int(u), int(x), tuple(h)) for u, x, h in zip(tr.user[pos], tr.target[pos], tr.hist[pos]))
    # user 0: t=1..5; the target 5 at t=2 and t=5 loses its earlier occurrences, then the last 3 are kept
    assert got == [(0, 1, (0, 0, 5)), (0, 2, (5, 1, 5)), (0, 3, (1, 5, 2)), (0, 5, (0, 0, 1)),
                   (0, 5, (1, 2, 3))]
    assert tuple(v.hist[v.label == 1][0]) == (2, 3, 5) and tuple(t.hist[t.label == 1][0]) == (3, 5, 4)
    for part in split:
        for x, h in zip(part.target[part.label == 1], part.hist[part.label == 1]):
            assert x not in set(h.tolist())


def test_din_builder_categories_and_errors():
    seqs = [np.array([1, 2, 3, 4]), np.array([4, 3, 2])]
    cat = np.array([0, 1, 1, 2, 2, 1], np.int32)
    split = ctr_from_sequences(seqs, 5, item_cat=cat, n_cats=2, seed=0)
    np.testing.assert_array_equal(split.test.target_cat, cat[split.test.target])
    np.testing.assert_array_equal(split.test.hist_cat, cat[split.test.hist])
    with pytest.raises(DataError, match="line 2"):
        ctr_from_sequences([np.array([1, 2, 3]), np.array([1, 2])], 3)
    with pytest.raises(DataError, match="1..3"):
        ctr_from_sequences([np.array([1, 2, 4])], 3)
    with pytest.raises(DataError, match="shape"):
        ctr_from_sequences(seqs, 5, item_cat=cat[:3], n_cats=2)
    with pytest.raises(DataError):
        CTRData(user=np.zeros(2, np.int32), target=np.array([1, 0]), hist=np.zeros((2, 3), np.int32),
                label=np.zeros(2, np.float32), n_items=3, n_users=1)


@pytest.mark.realdata
def test_ml100k_ctr_rows(data_dir):
    split = load_ctr("ml-100k", data_dir, seed=0)
    # 100,000 ratings, 943 users: train positives = 100000 - 3 * 943 (positions 1..L-3 of each user)
    assert len(split.train) == 2 * (100_000 - 3 * 943)
    assert len(split.test) == len(split.val) == 2 * 943
    assert split.train.n_cats == 19 and split.train.hist.shape[1] == 50
    assert split.train.hist_cat[split.train.hist == 0].max() == 0
    assert split.train.hist_cat[split.train.hist > 0].min() >= 1
