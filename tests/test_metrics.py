"""Tests for jaxrec.metrics: hand-computed cases, agreement with a naive per-user numpy reference,
edge cases (ties, one target, K > catalogue, fully excluded rows), AUC, RelaImpr, rating nDCG."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from jaxrec import metrics as M

KS = (1, 3, 5, 20)


# ---------------------------------------------------------------------------------- naive references
def naive_user(scores, excl, targ, ks):
    """Per-user reference written independently: stable sort, python sets, explicit sums."""
    n = len(scores)
    order = [i for i in sorted(range(n), key=lambda i: (-scores[i], i)) if i not in excl]
    targ = set(targ)
    out = {}
    for k in ks:
        top = order[:k]
        hits = [1 if i in targ else 0 for i in top]
        nh = sum(hits)
        out[f"recall@{k}"] = nh / len(targ)
        out[f"precision@{k}"] = nh / k
        out[f"hit@{k}"] = float(nh > 0)
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(targ))))
        out[f"ndcg@{k}"] = dcg / idcg
        first = next((r for r, h in enumerate(hits) if h), None)
        out[f"mrr@{k}"] = 0.0 if first is None else 1.0 / (first + 1)
    return out


def naive_mean(S, excl_sets, targ_sets, ks):
    rows = [naive_user(S[u], excl_sets[u], targ_sets[u], ks) for u in range(len(S)) if targ_sets[u]]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def sets_to_csr(sets, n_items):
    rows = np.concatenate([np.full(len(s), u) for u, s in enumerate(sets)]).astype(int)
    cols = np.concatenate([np.array(sorted(s), dtype=int) for s in sets]).astype(int)
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(sets), n_items))


# ---------------------------------------------------------------------------------------- hand cases
def test_hand_case_single_user():
    # scores rank items: 2 (0.9), 0 (0.8), 4 (0.7), 1 (0.5), 3 (0.1); item 0 excluded (training item)
    scores = jnp.array([[0.8, 0.5, 0.9, 0.1, 0.7]])
    exclude = jnp.array([[0, -1]])
    targets = jnp.array([[4, 3, -1]])  # T = {4, 3}
    m = M.topk_metrics(scores, exclude, targets, ks=(1, 2, 4))
    # ranking after exclusion: 2, 4, 1, 3
    assert float(m["recall@1"][0]) == 0.0
    assert float(m["recall@2"][0]) == pytest.approx(0.5)
    assert float(m["precision@2"][0]) == pytest.approx(0.5)
    assert float(m["recall@4"][0]) == pytest.approx(1.0)
    assert float(m["mrr@4"][0]) == pytest.approx(0.5)
    # DCG@4 = 1/log2(3) + 1/log2(5); IDCG@4 = 1 + 1/log2(3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    assert float(m["ndcg@4"][0]) == pytest.approx(dcg / (1 + 1 / math.log2(3)), rel=1e-6)
    assert float(m["ndcg@2"][0]) == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)), rel=1e-6)
    assert float(m["hit@1"][0]) == 0.0 and float(m["hit@2"][0]) == 1.0
    assert int(m["n_targets"][0]) == 2


def test_ties_lower_index_first():
    scores = jnp.zeros((1, 6))
    # all tied: ranking is 0,1,2,...; target 1 is at rank 2
    m = M.topk_metrics(scores, None, jnp.array([[1]]), ks=(1, 2))
    assert float(m["hit@1"][0]) == 0.0 and float(m["hit@2"][0]) == 1.0
    assert float(m["mrr@2"][0]) == pytest.approx(0.5)
    r = M.rank_of_target(scores, jnp.array([1]))
    assert int(r[0]) == 1


def test_k_larger_than_catalogue_and_precision_divides_by_k():
    scores = jnp.array([[0.1, 0.3, 0.2]])
    m = M.topk_metrics(scores, None, jnp.array([[0, 2]]), ks=(10,))
    assert float(m["recall@10"][0]) == pytest.approx(1.0)
    assert float(m["precision@10"][0]) == pytest.approx(2 / 10)
    assert float(m["ndcg@10"][0]) == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3)), rel=1e-6)


def test_fully_excluded_row_is_finite_and_no_excluded_hits():
    scores = jnp.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    exclude = jnp.array([[0, 1, 2], [0, -1, -1]])
    targets = jnp.array([[1], [0]])  # target also excluded: must never be a hit
    m = M.topk_metrics(scores, exclude, targets, ks=(2, 5))
    for k, v in m.items():
        assert np.all(np.isfinite(np.asarray(v, dtype=float))), k
    assert float(m["recall@5"][0]) == 0.0 and float(m["ndcg@5"][0]) == 0.0
    assert float(m["recall@5"][1]) == 0.0


def test_row_without_targets_marked_invalid():
    m = M.topk_metrics(jnp.ones((2, 4)), None, jnp.array([[-1], [2]]), ks=(2,))
    assert not bool(m["valid"][0]) and bool(m["valid"][1])
    assert float(m["ndcg@2"][0]) == 0.0


# ------------------------------------------------------------------------------ agreement with naive
@pytest.mark.parametrize("seed", [0, 1])
def test_evaluate_topk_matches_naive(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items = 37, 15  # n_items < max K (20) exercises clipping
    # integer-valued scores -> many ties
    S = rng.integers(0, 4, size=(n_users, n_items)).astype(np.float32)
    excl_sets, targ_sets = [], []
    for u in range(n_users):
        perm = rng.permutation(n_items)
        if u == 0:      # every item excluded
            ne, nt = n_items, 0
        elif u == 1:    # one target
            ne, nt = 3, 1
        elif u == 2:    # no target: dropped from the mean
            ne, nt = 2, 0
        else:
            ne, nt = rng.integers(0, 8), rng.integers(1, 6)
        excl_sets.append(set(perm[:ne].tolist()))
        targ_sets.append(set(perm[ne:ne + nt].tolist()))
    targ_sets[0] = {int(rng.integers(n_items))}  # fully excluded user still has a (excluded) target
    excl_csr = sets_to_csr(excl_sets, n_items)
    test_csr = sets_to_csr(targ_sets, n_items)
    Sj = jnp.asarray(S)
    got = M.evaluate_topk(lambda u: Sj[u], None, excl_csr, test_csr, ks=KS, block_size=8)
    want = naive_mean(S, excl_sets, [{t for t in ts} for ts in targ_sets], KS)
    assert got["n_users"] == sum(1 for t in targ_sets if t)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k


def test_block_size_invariance_and_user_subset():
    rng = np.random.default_rng(3)
    S = rng.normal(size=(50, 30)).astype(np.float32)
    test = sp.random(50, 30, density=0.1, random_state=4, format="csr")
    test.data[:] = 1
    excl = sp.random(50, 30, density=0.2, random_state=5, format="csr")
    excl = excl - excl.multiply(test)
    excl.eliminate_zeros()
    Sj = jnp.asarray(S)
    a = M.evaluate_topk(lambda u: Sj[u], None, excl, test, ks=(5,), block_size=7)
    b = M.evaluate_topk(lambda u: Sj[u], None, excl, test, ks=(5,), block_size=1024)
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-6)
    users = np.arange(0, 50, 2)
    c = M.evaluate_topk(lambda u: Sj[u], users, excl, test, ks=(5,), block_size=7)
    excl_sets = [set(excl[u].indices.tolist()) for u in users]
    targ_sets = [set(test[u].indices.tolist()) for u in users]
    want = naive_mean(S[users], excl_sets, targ_sets, (5,))
    for k, v in want.items():
        assert c[k] == pytest.approx(v, abs=1e-6)


def test_sequential_single_target_array_matches_rank_of_target():
    rng = np.random.default_rng(7)
    S = rng.normal(size=(20, 12)).astype(np.float32)
    S[:, 5] = S[:, 3]  # ties
    target = rng.integers(0, 12, size=20)
    Sj = jnp.asarray(S)
    got = M.evaluate_topk(lambda u: Sj[u], None, None, target, ks=(1, 5, 10))
    ranks = np.asarray(M.rank_of_target(Sj, jnp.asarray(target)))
    ref_ranks = np.array([[i for i in sorted(range(12), key=lambda i: (-S[u, i], i))].index(target[u])
                          for u in range(20)])
    np.testing.assert_array_equal(ranks, ref_ranks)
    want = M.ranks_to_metrics(ranks, ks=(1, 5, 10))
    for k in ("hit@5", "ndcg@5", "hit@10", "ndcg@10", "mrr@10"):
        assert got[k] == pytest.approx(want[k], abs=1e-6)
    assert got["recall@5"] == pytest.approx(got["hit@5"])


def test_float64_under_x64():
    with jax.enable_x64(True):
        S = jnp.asarray(np.random.default_rng(0).normal(size=(4, 9)))
        m = M.topk_metrics(S, None, jnp.array([[0], [1], [2], [3]]), ks=(3,))
        assert m["ndcg@3"].dtype == jnp.float64


# ----------------------------------------------------------------------------------- AUC and friends
def mann_whitney_auc(labels, scores):
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return (gt + 0.5 * eq) / (len(pos) * len(neg))


def test_auc_hand_case():
    # pos scores {0.9, 0.4}, neg {0.5, 0.4, 0.1}: pairs won 0.9>all (3), 0.4>0.1 (1), 0.4=0.4 (0.5)
    labels = jnp.array([1, 0, 1, 0, 0])
    scores = jnp.array([0.9, 0.5, 0.4, 0.4, 0.1])
    assert float(M.auc(labels, scores)) == pytest.approx(4.5 / 6)
    assert float(M.auc(jnp.array([1, 0]), jnp.array([1.0, 0.0]))) == pytest.approx(1.0)
    assert float(M.auc(jnp.array([1, 0]), jnp.array([0.0, 1.0]))) == pytest.approx(0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_mann_whitney_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=300)
    scores = rng.integers(0, 10, size=300).astype(np.float32)  # heavy ties
    assert float(M.auc(jnp.asarray(labels), jnp.asarray(scores))) == pytest.approx(
        mann_whitney_auc(labels, scores), abs=1e-6)


def test_rela_impr_mse_rmse():
    assert M.rela_impr(0.75, 0.7) == pytest.approx((0.25 / 0.2 - 1) * 100)
    assert float(M.mse(jnp.array([1.0, 3.0]), jnp.array([2.0, 1.0]))) == pytest.approx(2.5)
    assert float(M.rmse(jnp.array([1.0, 3.0]), jnp.array([2.0, 1.0]))) == pytest.approx(math.sqrt(2.5))
    assert float(M.mse(jnp.array([1.0, 3.0]), jnp.array([2.0, 1.0]), mask=jnp.array([1, 0]))) == 1.0


def test_rating_ndcg_hand_case():
    pred = jnp.array([0.9, 0.2, 0.5, 0.7])
    true = jnp.array([3.0, 5.0, 1.0, 4.0])
    # order by pred: items 0 (r=3), 3 (r=4), 2 (r=1); gains 7, 15, 1
    dcg = 7 / 1 + 15 / math.log2(3) + 1 / 2
    idcg = 31 / 1 + 15 / math.log2(3) + 7 / 2  # ideal ratings 5, 4, 3
    assert float(M.rating_ndcg(pred, true, 3)) == pytest.approx(dcg / idcg, rel=1e-6)
    # padded batch: second list has its last two entries masked
    P = jnp.stack([pred, jnp.array([0.1, 0.9, 5.0, 6.0])])
    T = jnp.stack([true, jnp.array([1.0, 2.0, 5.0, 5.0])])
    mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    out = M.rating_ndcg(P, T, 3, mask=mask)
    assert float(out[0]) == pytest.approx(dcg / idcg, rel=1e-6)
    assert float(out[1]) == pytest.approx(1.0)  # pred order 1 (r=2), 0 (r=1) is ideal
    assert float(M.rating_ndcg(jnp.array([0.2, 0.1]), jnp.array([0.0, 0.0]), 2)) == 0.0


def _per_positive_naive(scores, target, interacted, ks):
    """Loop-by-loop reference of per_positive_metrics (numpy, one positive at a time)."""
    sums, n = {}, 0
    for u in range(scores.shape[0]):
        pos = np.flatnonzero(target[u])
        neg = np.flatnonzero(interacted[u] == 0)
        if len(pos) == 0 or len(neg) == 0:
            continue
        n += 1
        per = {k: [] for k in ["auc"] + [f"{m}@{k}" for k in ks for m in ("hr", "ndcg")]}
        for p in pos:
            rank = 1 + int(np.sum(scores[u, neg] > scores[u, p]))
            per["auc"].append(np.sum(scores[u, neg] < scores[u, p]) / len(neg))
            for k in ks:
                per[f"hr@{k}"].append(float(rank <= k))
                per[f"ndcg@{k}"].append(float(rank <= k) / np.log2(1 + rank))
        for key, v in per.items():
            sums[key] = sums.get(key, 0.0) + np.mean(v)
    return {k: v / n for k, v in sums.items()}, n


@pytest.mark.parametrize("seed", [0, 1])
def test_per_positive_metrics_matches_naive_over_many_block_shapes(seed):
    """Users are visited by their number of targets in blocks of varying size and padded width (forced
    small here); the result equals a positive-by-positive reference, ties included."""
    rng = np.random.default_rng(seed)
    nu, ni = 61, 40
    interacted = (rng.random((nu, ni)) < rng.uniform(0.02, 0.6, (nu, 1))).astype(np.float32)
    target = interacted * (rng.random((nu, ni)) < 0.5)
    interacted[3] = 1.0  # a user without negatives: skipped
    scores = np.round(rng.normal(size=(nu, ni)), 1).astype(np.float32)  # rounded: ties occur
    ref, n = _per_positive_naive(scores, target, interacted, ks=(1, 5))
    S = jnp.asarray(scores)
    for block_size, max_targets in [(256, 2048), (8, 16), (16, 8)]:
        out = M.per_positive_metrics(lambda u: S[u], sp.csr_matrix(target), sp.csr_matrix(interacted), ks=(1, 5),
                                     block_size=block_size, max_block_targets=max_targets)
        assert out["n_users"] == n
        for k, v in ref.items():
            assert out[k] == pytest.approx(v, abs=1e-6), (block_size, max_targets, k)
