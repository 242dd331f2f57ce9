"""PAML family (jaxrec.methods.paml): meta-gradients of PAML and REG-PAML against central finite differences
in float64, vmap over users = the per-user loop, the step = Adam on the objective's gradient, the memory's
kernel weights and LRU eviction on hand cases, nDCG and the major / minor rule on hand cases, the cold-start
split's counts, a short run lowering the validation MSE, and the experiment's refusals."""
import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from jaxrec.data import Interactions, cold_start_split, major_users
from jaxrec.method import train
from jaxrec.methods import paml
from paml_cases import TINY, setup, tiny_data


@pytest.fixture(scope="module")
def data():
    return tiny_data()


# ------------------------------------------------------------------------------- float64 meta-gradients
_FD_CASES = {}


def _fd_case(data, name):
    """``(f, grad f, float64 params)`` of one family member, built and jitted once for every drawn direction."""
    if name not in _FD_CASES:
        cfg, m, state, batch = setup(name, data, gamma=0.3, inner_steps=2)
        if name == "at_paml":  # a filled memory (other users' keys: no tied neighbours), so that the read is differentiated
            later, step = m.batches(0, 0), jax.jit(m.step)
            for j in (1, 2):
                state, _ = step(state, jax.tree_util.tree_map(lambda x, j=j: x[j], later), jax.random.PRNGKey(1))
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), state.params)
        _, objective, _ = paml.make_objective(cfg, data["ux"], data["ix"])
        filled = state.used >= 0
        f = jax.jit(lambda p: objective(p, filled, batch, True, cfg.k_train)[0])
        _FD_CASES[name] = (f, jax.jit(jax.grad(f)), params)
    return _FD_CASES[name]


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("name", ["paml", "reg_paml", "at_paml"])
@settings(max_examples=3, deadline=None, phases=(Phase.generate,))
@given(seed=st.integers(0, 2 ** 16))
def test_meta_gradient_matches_central_differences(data, name, seed):
    f, grad, params = _fd_case(data, name)
    g = grad(params)
    leaves, tdef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    v = jax.tree_util.tree_unflatten(tdef, [jax.random.normal(k, x.shape, jnp.float64) for k, x in zip(keys, leaves)])
    eps = 1e-5
    plus = jax.tree_util.tree_map(lambda p, d: p + eps * d, params, v)
    minus = jax.tree_util.tree_map(lambda p, d: p - eps * d, params, v)
    fd = (f(plus) - f(minus)) / (2 * eps)
    ad = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(v)))
    # central differences err by O(eps^2) times the third derivative: about 1e-10 |g| |v| here, whatever the
    # size of ad (a direction nearly orthogonal to g makes ad small, and a relative tolerance too tight)
    scale = float(jnp.sqrt(sum(jnp.vdot(a, a) for a in jax.tree_util.tree_leaves(g)) *
                           sum(jnp.vdot(b, b) for b in jax.tree_util.tree_leaves(v))))
    np.testing.assert_allclose(float(ad), float(fd), rtol=1e-6, atol=1e-9 * scale)
    if name == "at_paml":
        assert float(jnp.sum(jnp.abs(g["memory"]["values"]))) > 0, "the memory values get no meta-gradient"
    rate_norm = sum(float(jnp.sum(x ** 2)) for x in jax.tree_util.tree_leaves(g["rate"]))
    assert rate_norm > 0, "the rate network gets no meta-gradient"


@pytest.mark.usefixtures("x64")
def test_reg_term_is_gamma_times_grad_norm_times_rate(data):
    """REG-PAML's objective minus PAML's = gamma * mean_i |grad L_S(theta)|^2 * alpha(h_i)."""
    cfg, _, state, batch = setup("reg_paml", data, gamma=0.7)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), state.params)
    filled = state.used >= 0
    reg_obj = paml.make_objective(cfg, data["ux"], data["ix"])[1]
    plain_obj = paml.make_objective(dataclasses.replace(cfg, name="paml"), data["ux"], data["ix"])[1]
    reg = jax.jit(lambda p: reg_obj(p, filled, batch, True, 3))(params)
    plain = jax.jit(lambda p: plain_obj(p, filled, batch, True, 3))(params)
    np.testing.assert_allclose(float(reg[0] - plain[0]), 0.7 * float(reg[1]["reg"]), rtol=1e-10)
    assert float(reg[1]["reg"]) > 0


# ------------------------------------------------------------------------------ vmap, step, short run
@pytest.mark.parametrize("name", paml.VARIANTS)
def test_vmap_over_users_equals_loop(data, name):
    cfg, _, state, batch = setup(name, data)
    task_loss, objective, _ = paml.make_objective(cfg, data["ux"], data["ix"])
    filled = state.used >= 0
    # jitted (each compiled once: every task has the same shapes); the values are those of the eager calls
    val, aux = jax.jit(lambda p: objective(p, filled, batch, True, 3))(state.params)
    g = jax.jit(jax.grad(lambda p: objective(p, filled, batch, True, 3)[0]))(state.params)
    n = batch["w"].shape[0]
    tasks = [{k: batch[k][i] for k in paml.TASK_KEYS} for i in range(n)]
    one = lambda p, t: task_loss(p, filled, t, True, 3)[0]  # noqa: E731
    one_loss, one_grad = jax.jit(one), jax.jit(jax.grad(one))
    loop = [one_loss(state.params, t) for t in tasks]
    w = np.asarray(batch["w"])
    np.testing.assert_allclose(float(val), float(np.sum(w * np.array(loop)) / w.sum()), rtol=1e-5)
    g_loop = [one_grad(state.params, t) for t in tasks]
    g_mean = jax.tree_util.tree_map(lambda *gs: sum(wi * x for wi, x in zip(w, gs)) / w.sum(), *g_loop)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_mean)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["reg_paml", "meta_sgd"])
def test_step_is_adam_on_the_objective_gradient(data, name):
    cfg, m, state, batch = setup(name, data)
    _, objective, _ = paml.make_objective(cfg, data["ux"], data["ix"])
    g = jax.jit(jax.grad(lambda p: objective(p, state.used >= 0, batch, True, cfg.k_train)[0]))(state.params)
    tx = optax.adam(cfg.outer_lr)
    upd, _ = tx.update(g, tx.init(state.params), state.params)
    want = optax.apply_updates(state.params, upd)
    new, logs = jax.jit(m.step)(state, batch, jax.random.PRNGKey(0))
    for a, b in zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert int(new.step) == 1 and np.isfinite(float(logs["loss"]))


def test_at_paml_step_writes_normalised_keys_and_rates(data):
    cfg, m, state, batch = setup("at_paml", data)
    new, logs = jax.jit(m.step)(state, batch, jax.random.PRNGKey(0))
    used = np.asarray(new.used)
    assert (used == 0).sum() == int(batch["w"].sum()) and (used == -1).sum() == cfg.memory_size - int(batch["w"].sum())
    keys = np.asarray(new.params["memory"]["keys"])[used == 0]
    np.testing.assert_allclose(np.linalg.norm(keys, axis=1), 1.0, rtol=1e-5)
    assert float(logs["alpha_tilde"]) == 0.0  # warm-up epoch: written, not read


def test_short_run_lowers_validation_mse(data):
    cfg = paml.PAMLConfig(**{**TINY, "name": "reg_paml", "outer_lr": 5e-3, "inner_lr": 1e-2, "rate_scale": 0.1})
    m = paml.method(cfg, data)
    before = m.evaluate(m.init(jax.random.PRNGKey(0)), "val")["mse"]
    res = train(m, seed=0, epochs=3, metric="neg_mse", log=None)
    assert res.val["mse"] < 0.98 * before  # the output bias starts at the mean rating: a low start
    assert {"mse", "ndcg@3", "ndcg@5", "mse_major", "mse_minor", "p_major_minor"} <= set(res.test)


# --------------------------------------------------------------------------------------- hand cases
def test_memory_kernel_weights_hand_case():
    keys = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.1, 0.0]])
    values = jnp.array([1.0, 2.0, 3.0, 9.0])
    filled = jnp.array([True, True, True, False])  # slot 3 is empty: never a neighbour
    tilde, s, slots = paml.memory_read(keys, values, filled, jnp.array([0.0, 0.0]), 2, 2.0)
    assert list(np.asarray(slots)) == [0, 1]
    np.testing.assert_allclose(np.asarray(s), [1.0, np.exp(-2.0)], rtol=1e-6)
    want = (1.0 + 2.0 * np.exp(-2.0)) / (1.0 + np.exp(-2.0) + 1e-5)
    np.testing.assert_allclose(float(tilde), want, rtol=1e-6)
    tilde3, s3, _ = paml.memory_read(keys, values, filled, jnp.array([0.0, 0.0]), 4, 2.0)
    np.testing.assert_allclose(np.asarray(s3)[-1], 0.0)  # the empty slot has weight 0
    np.testing.assert_allclose(float(tilde3), (1 + 2 * np.exp(-2) + 3 * np.exp(-8)) / (1 + np.exp(-2) + np.exp(-8) + 1e-5), rtol=1e-6)


def test_memory_lru_eviction_hand_case():
    keys, values = jnp.zeros((3, 1)), jnp.zeros(3)
    used = jnp.array([5, 2, 9], jnp.int32)
    k, v, u = paml.memory_write(keys, values, used, jnp.array([[7.0]]), jnp.array([0.5]), jnp.array([True]), 10)
    assert list(np.asarray(u)) == [5, 10, 9] and float(v[1]) == 0.5 and float(k[1, 0]) == 7.0  # slot 1 was LRU
    k, v, u = paml.memory_write(k, v, u, jnp.array([[1.0], [2.0]]), jnp.array([0.1, 0.2]), jnp.array([True, True]), 11)
    assert sorted(np.asarray(u).tolist()) == [10, 11, 11] and float(v[1]) == 0.5  # slots 0 (5) and 2 (9) evicted
    k2, v2, u2 = paml.memory_write(k, v, u, jnp.array([[3.0]]), jnp.array([0.3]), jnp.array([False]), 12)
    assert np.array_equal(np.asarray(u2), np.asarray(u)) and np.array_equal(np.asarray(v2), np.asarray(v))
    empty = jnp.array([4, -1, -1], jnp.int32)
    _, _, u3 = paml.memory_write(keys, values, empty, jnp.ones((2, 1)), jnp.ones(2), jnp.array([True, True]), 6)
    assert np.asarray(u3)[0] == 4  # empty slots are filled before the used one is evicted


def test_ndcg_hand_case():
    pred = jnp.array([[0.9, 0.1, 0.5, 0.0]])
    r = jnp.array([[3.0, 5.0, 1.0, 4.0]])
    m = jnp.array([[True, True, True, False]])
    # ranked by pred: ratings 3, 1, 5 -> gains 7, 1, 31; ideal 31, 7, 1
    dcg = 7 + 1 / np.log2(3) + 31 / np.log2(4)
    idcg = 31 + 7 / np.log2(3) + 1 / np.log2(4)
    np.testing.assert_allclose(float(paml.ndcg_at_k(pred, r, m, 3)[0]), dcg / idcg, rtol=1e-6)
    np.testing.assert_allclose(float(paml.ndcg_at_k(pred, r, m, 5)[0]), dcg / idcg, rtol=1e-6)  # 3 items < 5
    np.testing.assert_allclose(float(paml.ndcg_at_k(pred, r, m, 1)[0]), 7 / 31, rtol=1e-6)


def test_major_minor_hand_case():
    # feature a: values 0 (3 users), 1 (2), 2 (1), 3 (1): 4 distinct -> top ceil(1.2) = 2 values {0, 1}
    # feature b: 0 (4), 1 (3): 2 distinct -> top 1 value {0}; feature c: all 0 -> {0}; feature d: 0..6 -> top 3 {0, 1, 2}
    feats = {"a": np.array([0, 0, 0, 1, 1, 2, 3]), "b": np.array([0, 0, 0, 0, 1, 1, 1]),
             "c": np.zeros(7, int), "d": np.array([0, 1, 2, 3, 4, 5, 6])}
    # hits per user: u0 a,b,c,d=4; u1 4; u2 4; u3 a,b,c=3; u4 a,c=2; u5 c=1; u6 c=1
    assert major_users(feats, np.arange(7)).tolist() == [True, True, True, True, False, False, False]
    assert major_users(feats, np.arange(7), more_than=3).tolist() == [True, True, True, False, False, False, False]


def test_cold_start_split_counts_and_query_sizes():
    # user k has k + 1 ratings (k = 0..9); 80% fewest = users 0..7; user 0 has 1 rating -> dropped
    user = np.concatenate([np.full(k + 1, k) for k in range(10)]).astype(np.int32)
    item = np.concatenate([np.arange(k + 1) for k in range(10)]).astype(np.int32)
    inter = Interactions(user=user, item=item, n_users=10, n_items=10, rating=np.ones(len(user), np.float32))
    valid = np.ones(10, bool)
    valid[3] = False
    sp = cold_start_split(inter, valid_user=valid, seed=1)
    c = sp["counts"]
    assert (c["cold"], c["invalid_feature"], c["too_few_ratings"]) == (8, 1, 1)
    users = np.concatenate([sp[p].task_user for p in ("train", "val", "test")])
    assert sorted(users.tolist()) == [1, 2, 4, 5, 6, 7]
    for p in ("train", "val", "test"):
        t = sp[p]
        n = t.support_mask.sum(1) + t.query_mask.sum(1)
        assert (t.query_mask.sum(1) >= 1).all() and (t.support_mask.sum(1) >= 1).all()
        assert np.array_equal(n, t.task_user + 1)
        assert np.array_equal(t.query_mask.sum(1), n - np.clip(np.round(0.8 * n), 1, n - 1))


# ------------------------------------------------------------------------------------------------ CLI
@pytest.mark.parametrize("argv", [["--outer-lr", "-1"], ["--hidden", "a,b"], ["--methods", "maml"],
                                  ["--dataset", "lastfm"], ["--support-frac", "1.5"]])
def test_cli_refuses_nonsense_with_exit_2(argv):
    r = subprocess.run([sys.executable, "-m", "experiments.paml", *argv, "--no-save"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
