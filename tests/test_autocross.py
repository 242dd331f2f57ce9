"""AutoCross (jaxrec.methods.autocross): the cross of two fields on a hand case, the field-wise LR gradient
(with b_sum) equals the full LR's gradient for w_c with w_S frozen (float64, with central finite
differences), successive halving's bookkeeping (survivors per round, blocks consumed), the search finding a
planted 2nd- and 3rd-order cross on synthetic data, the adult.test loader and bad input."""
import dataclasses
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxrec import method as protocol
from jaxrec.data.errors import DataError
from jaxrec.data.loaders import load_adult, load_adult_test
from jaxrec.methods import autocross as A

SETTINGS = dict(max_examples=10, deadline=None, derandomize=True)  # float64 (x64) for the gradient tests, last


def feat(name, ids, card=None):
    ids = np.asarray(ids, np.int32)
    return A.Feature(name, ids, int(card or ids.max() + 1), (name,), (name,))


# ------------------------------------------------------------------------------------------ crosses
def test_cross_hand_case():
    a, b = feat("a", [0, 1, 0, 2, 1], 3), feat("b", [1, 1, 0, 1, 1], 2)
    c = A.cross(a, b)
    # codes a * 2 + b = [1, 3, 0, 5, 3] -> observed pairs (0,0)=0, (0,1)=1, (1,1)=3, (2,1)=5 numbered 0..3
    np.testing.assert_array_equal(c.ids, [1, 2, 0, 3, 2])
    assert (c.card, c.fields, c.name) == (4, ("a", "b"), "a x b")
    d = A.cross(c, feat("e", [0, 0, 1, 1, 1], 2))  # a cross of a cross: order 3
    assert d.fields == ("a", "b", "e") and d.card == 5
    np.testing.assert_array_equal(d.ids, [1, 2, 0, 4, 3])  # codes c * 2 + e = [2, 4, 1, 7, 5]
    same = A.cross(a, c)  # crossing with a part of itself changes nothing
    np.testing.assert_array_equal(same.ids, c.ids)
    assert same.fields == c.fields


def test_discretize_and_pack():
    x = np.array([0.0, 0.5, 1.0, 2.0, -1.0])
    np.testing.assert_array_equal(A.discretize(x, np.array([0, 1, 2]), 4), [0, 2, 3, 3, 0])  # range [0, 1]
    X, n = A.pack([feat("a", [0, 2], 3), feat("b", [1, 0], 2)])
    np.testing.assert_array_equal(X, [[0, 4], [2, 3]])
    assert n == 5
    params = {"w": jnp.arange(5.0), "b": jnp.asarray(0.5)}
    np.testing.assert_allclose(A.lr_logits(params, jnp.asarray(X)), [0.5 + 0 + 4, 0.5 + 2 + 3])
    np.testing.assert_allclose(A.lr_logits(params, jnp.asarray([[1, -1]])), [1.5])  # -1 = padding


# ------------------------------------------------------------------------------------------ halving
@pytest.mark.parametrize("n,alive", [(136, [136, 68, 34, 17, 9, 5, 3, 2]), (5, [5, 3, 2]), (2, [2]), (1, []),
                                     (16, [16, 8, 4, 2])])
def test_successive_halving_bookkeeping(n, alive):
    rng = np.random.default_rng(n)
    quality = rng.permutation(n).astype(float)
    trained = []

    def train(idx, blocks):
        trained.append((list(idx), list(blocks)))

    winner, log = A.successive_halving(n, train, lambda idx: quality[idx])
    assert [r["alive"] for r in log] == alive == [len(t[0]) for t in trained]
    assert [r["kept"] for r in log] == [-(-a // 2) for a in alive]
    used = [b for _, blocks in trained for b in blocks]
    assert [len(blocks) for _, blocks in trained] == [2 ** k for k in range(len(alive))]
    assert used == list(range(2 ** len(alive) - 1))  # N = sum_k 2^k blocks, each consumed once, in order
    assert winner == int(np.argmax(quality))  # a noiseless score keeps the best
    for (prev, _), (nxt, _) in zip(trained, trained[1:]):  # the better half of the previous round survives
        assert set(nxt) == set(sorted(prev, key=lambda i: -quality[i])[: len(nxt)])


def test_successive_halving_refuses_no_candidates():
    with pytest.raises(ValueError, match="at least one candidate"):
        A.successive_halving(0, None, None)


# ------------------------------------------------------------------------------------------ the search
@pytest.fixture(scope="module")
def searched():
    config = A.AutoCrossConfig(n_rows=6000, max_crosses=3, bins=(10,))
    return config, A.load(config, "synthetic", None, 0)


def test_search_finds_planted_crosses(searched):
    config, data = searched
    found = [set(f.fields) for f in data["features"] if len(f.fields) > 1]
    assert {"c0", "c1"} in found  # the planted 2nd-order cross
    assert {"c2", "c3", "c4"} in found  # the planted 3rd-order one, through the cross c2 x c3
    trace = data["search"]["trace"]
    assert trace[0]["cross"] is None and all(t["gain"] >= config.min_gain for t in trace[1:] if t["accepted"])
    assert all(b["val_auc"] > a["val_auc"] for a, b in zip(trace, trace[1:]) if b["accepted"])
    for t in trace[1:]:
        assert [r["alive"] for r in t["rounds"]][0] == t["candidates"]


def test_final_models_train(searched):
    config, data = searched
    res = protocol.train(A.method(config, data), seed=0, epochs=1, metric="auc", log=None)
    assert 0.5 < res.test["auc"] <= 1 and {"latency_ms", "crosses", "trace"} <= set(res.summary)
    base = A.method(dataclasses.replace(config, crosses=False, model="deepfm"), data)
    res2 = protocol.train(base, seed=0, epochs=1, metric="auc", log=None)
    assert np.isfinite(res2.test["auc"])


# ------------------------------------------------------------------------------------------ adult.test, bad input
GOOD = "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K"
GOOD2 = "50, ?, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Male, 0, 0, 13, United-States, >50K"


def _adult(tmp_path, test_lines):
    d = tmp_path / "adult"
    d.mkdir(exist_ok=True)
    (d / "adult.data").write_text(GOOD + "\n" + GOOD2 + "\n")
    (d / "adult.test").write_text("\n".join(test_lines) + "\n")
    return load_adult(tmp_path, verify=False)


def test_adult_test_file(tmp_path):
    tr = _adult(tmp_path, ["|1x3 Cross validator", GOOD2 + ".", GOOD + "."])
    te = load_adult_test(tmp_path, tr.cat_vocab, verify=False)
    np.testing.assert_array_equal(te.y, [1, 0])
    np.testing.assert_array_equal(te.x_cat, tr.x_cat[::-1])  # same categories, training vocabulary ("?" too)
    np.testing.assert_allclose(te.x_num, tr.x_num[::-1])


def test_adult_test_bad_input(tmp_path):
    tr = _adult(tmp_path, ["|1x3 Cross validator", GOOD + ".", GOOD.replace("State-gov", "Space-gov") + "."])
    with pytest.raises(DataError, match=r"adult\.test:3: unknown workclass 'Space-gov' \(not a category of adult\.data"):
        load_adult_test(tmp_path, tr.cat_vocab, verify=False)
    _adult(tmp_path, [GOOD + ".", GOOD.replace(", 40,", ", 40") + "."])
    with pytest.raises(DataError, match=r"adult\.test:2: wrong column count: expected 15"):
        load_adult_test(tmp_path, tr.cat_vocab, verify=False)
    _adult(tmp_path, [GOOD + ".", GOOD.replace("<=50K", "maybe") + "."])
    with pytest.raises(DataError, match=r"adult\.test:2: income label 'maybe\.' out of range"):
        load_adult_test(tmp_path, tr.cat_vocab, verify=False)
    with pytest.raises(ValueError, match="unknown dataset"):
        A.load(A.AutoCrossConfig(), "ml-100k", tmp_path, 0)


def test_adult_real_files(data_dir):
    tr = load_adult(data_dir)
    te = load_adult_test(data_dir, tr.cat_vocab)
    assert len(te) == 16281 and te.y.sum() == 3846


@pytest.mark.parametrize("argv,msg", [(["--keep-frac", "2"], "--keep-frac: 2 is not allowed"),
                                      (["--search-lr", "0"], "--search-lr: 0 is not allowed"),
                                      (["--model", "svm"], "invalid choice"),
                                      (["--dataset", "ml-100k"], "not a dataset this experiment uses")])
def test_cli_refuses_nonsense(argv, msg):
    p = subprocess.run([sys.executable, "-m", "experiments.autocross", *argv, "--no-save"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and re.search(re.escape(msg), p.stderr) and len(p.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ field-wise LR (float64)
def _problem(seed, n=40):
    rng = np.random.default_rng(seed)
    S = [feat("s0", rng.integers(0, 4, n), 4), feat("s1", rng.integers(0, 3, n), 3)]
    c = A.cross(S[0], feat("t", rng.integers(0, 3, n), 3))
    y = rng.integers(0, 2, n).astype(np.int32)
    lin = {"w": jnp.asarray(rng.normal(size=7)), "b": jnp.asarray(rng.normal())}
    w_c = jnp.asarray(rng.normal(size=c.card))
    mask = (rng.uniform(size=n) < 0.8).astype(np.float64)
    return S, c, y, lin, w_c, mask


def full_loss(w_all, b, X, y, mask):
    z = A.lr_logits({"w": w_all, "b": b}, X)
    l = jnp.logaddexp(0.0, z) - y * z
    return jnp.sum(l * mask) / jnp.sum(mask)


@pytest.mark.usefixtures("x64")
@settings(**SETTINGS)
@given(st.integers(0, 10_000))
def test_fieldwise_gradient_equals_full_lr_with_ws_frozen(seed):
    S, c, y, lin, w_c, mask = _problem(seed)
    X_S, X_all = jnp.asarray(A.pack(S)[0]), jnp.asarray(A.pack(S + [c])[0])
    bsum = A.lr_logits(lin, X_S)  # b_sum = w_S^T x_S (+ b), frozen
    g_fw = jax.grad(A.fieldwise_loss)(w_c, jnp.asarray(c.ids)[None], bsum, jnp.asarray(y), jnp.asarray(mask))
    w_all = jnp.concatenate([lin["w"], w_c])
    g_full = jax.grad(full_loss)(w_all, lin["b"], X_all, jnp.asarray(y, jnp.float64), jnp.asarray(mask))
    np.testing.assert_allclose(g_fw, g_full[7:], rtol=1e-10, atol=1e-12)
    assert A.fieldwise_loss(w_c, jnp.asarray(c.ids)[None], bsum, jnp.asarray(y), jnp.asarray(mask)) == \
        pytest.approx(float(full_loss(w_all, lin["b"], X_all, y, jnp.asarray(mask))), rel=1e-12)
    # central finite differences of the field-wise loss
    loss = jax.jit(A.fieldwise_loss)
    f = lambda w: float(loss(w, jnp.asarray(c.ids)[None], bsum, jnp.asarray(y), jnp.asarray(mask)))
    eps = 1e-6
    fd = [(f(w_c.at[k].add(eps)) - f(w_c.at[k].add(-eps))) / (2 * eps) for k in range(c.card)]
    np.testing.assert_allclose(g_fw, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.usefixtures("x64")
@settings(**SETTINGS)
@given(st.integers(0, 10_000), st.floats(0.1, 5.0))
def test_fieldwise_step_is_one_gradient_step_per_candidate(seed, lr):
    """The jitted block step (explicit scatter-add gradient) of two candidates in one flat vector equals
    w_c - lr * grad of each candidate's own field-wise loss; a candidate that is not alive stays."""
    S, c, y, lin, w_c, mask = _problem(seed)
    d = S[1]
    offsets = [0, c.card, c.card + d.card]
    ids = jnp.asarray(np.stack([c.ids, d.ids + c.card]))
    bsum = A.lr_logits(lin, jnp.asarray(A.pack(S)[0]))
    rng = np.random.default_rng(seed + 1)
    w = jnp.asarray(rng.normal(size=offsets[-1]))
    rows = jnp.asarray(rng.permutation(len(y))[:25].astype(np.int32))
    m = jnp.asarray(mask[np.asarray(rows)])
    for alive in ([1.0, 1.0], [1.0, 0.0]):
        alive_w = jnp.concatenate([jnp.full(c.card, alive[0]), jnp.full(d.card, alive[1])])
        new = A.fieldwise_step(jnp.array(w), ids, bsum, jnp.asarray(y), rows, m, alive_w, lr)
        for j, lo, hi in ((0, 0, c.card), (1, c.card, offsets[-1])):
            g = jax.grad(A.fieldwise_loss)(w, ids[j:j + 1, rows], bsum[rows], jnp.asarray(y)[rows], m)
            np.testing.assert_allclose(new[lo:hi], (w - alive[j] * lr * g)[lo:hi], rtol=1e-10, atol=1e-12)
