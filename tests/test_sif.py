"""SIF (jaxrec.methods.sif, jaxrec.models.ifc): proximal operators and operations on hand cases, the
architecture gradient (first and second order) against central finite differences in float64, the step's
order and projections, the global split, vmapped candidates, the search on planted data, the CLI."""
import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from jaxrec import bilevel as bl
from jaxrec import method as protocol
from jaxrec.configs import sif as sif_config
from jaxrec.data import Interactions, global_split, standardise_ratings
from jaxrec.methods import sif
from jaxrec.models import ifc

SMALL = sif.SIFConfig(small=True, dim=4, init_scale=0.1, lr=0.2, epochs=3)


@pytest.fixture(scope="module")
def data():
    return sif.load(SMALL, "synthetic", None, 0)


def test_config_mirrors_model_names():
    assert sif_config.OPS == ifc.OPS and sif_config.FIXED == ifc.FIXED


# ------------------------------------------------------------------------------- hand cases
def test_prox_operators_hand_cases():
    np.testing.assert_array_equal(sif.prox_c1(jnp.array([0.2, 0.9, -1.0, 0.5, 0.9])), [0, 1, 0, 0, 0])  # first on ties
    np.testing.assert_array_equal(sif.prox_c1(jnp.array([[3.0, 1.0], [0.0, 2.0]])), [[1, 0], [0, 1]])
    np.testing.assert_allclose(sif.prox_c2(jnp.array([-0.5, 0.0, 0.3, 1.0, 1.7])), [0, 0, 0.3, 1, 1])
    a = jnp.array([0.1, 0.7, 0.3])
    np.testing.assert_array_equal(sif.straight_through(a), [0, 1, 0])
    g = jax.grad(lambda x: jnp.dot(sif.straight_through(x), jnp.array([1.0, 2.0, 3.0])))(a)
    np.testing.assert_allclose(g, [1, 2, 3])  # the gradient at abar passes to alpha unchanged


def test_operations_hand_case():
    p, q = jnp.array([1.0, -2.0]), jnp.array([3.0, 0.5])
    w = {"w4": jnp.array([[1.0, 1.0], [1.0, 2.0], [0.5, 0.0], [0.0, 1.0]]), "wc": jnp.array([1.0, 0.0, 0.0, 2.0])}
    # plus (4, -1.5) . (1, 1) = 2.5; multiply (3, -1) . (1, 2) = 1; max (3, 0.5) . (.5, 0) = 1.5;
    # min (1, -2) . (0, 1) = -2; concat (1, -2, 3, .5) . (1, 0, 0, 2) = 2
    np.testing.assert_allclose(ifc.op_scores(w, p, q), [2.5, 1.0, 1.5, -2.0, 2.0])
    theta = {"U": p[None], "V": q[None], **w}
    identity = {"W1": jnp.array([1e-3] + [0.0] * 7), "b1": jnp.zeros(8), "W2": jnp.array([1e3] + [0.0] * 7),
                "b2": jnp.array(0.0)}  # p(x) = 1e3 tanh(1e-3 x) ~ x
    for m, want in enumerate([2.5, 1.0, 1.5, -2.0, 2.0]):
        lam = {"alpha": jax.nn.one_hot(m, 5) * 0.7 + 0.1, "p": identity, "q": identity}
        np.testing.assert_allclose(sif.predict(theta, lam, jnp.array([0]), jnp.array([0])), [want], rtol=1e-4)


def test_fixed_ifcs_hand_case():
    u, v = jnp.array([[1.0, 2.0, 3.0]]), jnp.array([[4.0, 5.0, 6.0]])
    w = jnp.array([1.0, 0.0, -1.0])
    # circular convolution: c0 = 1*4 + 2*6 + 3*5 = 31, c1 = 1*5 + 2*4 + 3*6 = 31, c2 = 1*6 + 2*5 + 3*4 = 28
    np.testing.assert_allclose(ifc.predict_fixed("conv", {"w": w}, u, v), [31 - 28], rtol=1e-5)
    np.testing.assert_allclose(ifc.predict_fixed("mf", {"w": w}, u, v), [4 - 18])
    np.testing.assert_allclose(ifc.predict_fixed("plus", {"w": w}, u, v), [5 - 9])
    np.testing.assert_allclose(ifc.predict_fixed("max", {"w": w}, u, v), [4 - 6])
    np.testing.assert_allclose(ifc.predict_fixed("min", {"w": w}, u, v), [1 - 3])
    wo = jnp.arange(9.0)  # sum_ab wo[3a + b] u_a v_b
    want = sum(float(wo[3 * a + b]) * float(u[0, a] * v[0, b]) for a in range(3) for b in range(3))
    np.testing.assert_allclose(ifc.predict_fixed("outer", {"w": wo}, u, v), [want])
    H, b = jnp.ones((3, 6)) * 0.1, jnp.array([0.0, -5.0, 0.0])
    np.testing.assert_allclose(ifc.predict_fixed("deepwide", {"w": w, "H": H, "b": b}, u, v), [2.1 - 2.1])
    np.testing.assert_allclose(ifc.predict_fixed("ncf", {"w": w, "H": H, "b": b}, u, v),
                               [np.tanh(4 + 2.1) - np.tanh(18 + 2.1)], atol=1e-6)
    with pytest.raises(ValueError, match="unknown fixed interaction function"):
        ifc.init_fixed(jax.random.PRNGKey(0), "dot", 2, 2, 3)


def test_projections():
    p = ifc.project({"U": jnp.full((2, 3), 5.0), "w": jnp.array([3.0, 4.0]), "H": jnp.array([[0.3, 0.4], [6.0, 8.0]])})
    np.testing.assert_allclose(p["w"], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(p["H"], [[0.3, 0.4], [0.6, 0.8]], rtol=1e-6)
    np.testing.assert_array_equal(p["U"], 5.0)  # embeddings free
    m = ifc.mlp_project({"W1": jnp.array([-2.0, 0.5]), "b1": jnp.array([3.0, 3.0]), "W2": jnp.array([3.0, 4.0]),
                         "b2": jnp.array(7.0)})
    np.testing.assert_allclose(m["W1"], [-1.0, 0.5]), np.testing.assert_allclose(m["W2"], [0.6, 0.8], rtol=1e-6)
    assert float(m["b2"]) == 7.0
    v = jnp.arange(ifc.PQ_SIZE, dtype=jnp.float32)
    np.testing.assert_array_equal(ifc.pq_flat(ifc.pq_unflat(v)), v)


def test_global_split_and_train_only_standardisation():
    inter = Interactions(np.arange(8) % 3, np.arange(8) % 4, 3, 4, rating=np.arange(1.0, 9.0))
    s = global_split(inter, 0.5, 0.25, seed=1)
    assert (len(s.train), len(s.val), len(s.test)) == (4, 2, 2)
    rows = lambda part: set(zip(part.user.tolist(), part.item.tolist(), part.rating.tolist()))  # noqa: E731
    assert rows(s.train) | rows(s.val) | rows(s.test) == rows(inter) and not rows(s.train) & rows(s.test)
    assert rows(global_split(inter, 0.5, 0.25, seed=1).train) == rows(s.train)
    assert rows(global_split(inter, 0.5, 0.25, seed=2).train) != rows(s.train)
    z, mean, std = standardise_ratings(s)
    r = s.train.rating
    assert mean == pytest.approx(r.mean()) and std == pytest.approx(r.std())
    np.testing.assert_allclose(z.test.rating, (s.test.rating - r.mean()) / r.std(), rtol=1e-6)
    with pytest.raises(Exception, match="train_frac"):
        global_split(inter, 0.8, 0.3)


# ---------------------------------------------------------------------------------- the step
def test_step_architecture_then_weights(data):
    """One step of the method: alpha moves against the validation gradient at abar (Adam's first step is
    -arch_lr * sign(g)) and is clipped to [0, 1]; then only the output vector of prox_C1(new alpha) trains."""
    cfg = dataclasses.replace(SMALL, arch_lr=0.3, alpha_noise=0.0)
    m = sif.method(cfg, data)
    state = m.init(jax.random.PRNGKey(0))
    state = state._replace(lam={**state.lam, "alpha": jnp.array([0.5, 0.55, 0.5, 0.5, 0.5])})
    train, val = jax.tree_util.tree_map(lambda x: x[0], m.batches(0, 0))
    g = jax.grad(lambda lam: sif.losses_fn("mixture", cfg.l2)(state.theta, lam, val))(state.lam)["alpha"]
    new, logs = jax.jit(m.step)(state, (train, val), jax.random.PRNGKey(1))
    want = np.clip(np.asarray(state.lam["alpha"]) - 0.3 * np.sign(np.asarray(g)), 0, 1)
    np.testing.assert_allclose(new.lam["alpha"], want, atol=1e-4)  # Adam: g / (|g| + 1e-8)
    active = int(np.argmax(np.asarray(new.lam["alpha"])))  # prox_C1 of the new alpha (want may tie)
    changed = [bool(jnp.any(new.theta["w4"][j] != state.theta["w4"][j])) for j in range(4)]
    changed.append(bool(jnp.any(new.theta["wc"] != state.theta["wc"])))
    assert changed == [j == active for j in range(5)]
    assert float(jnp.max(jnp.linalg.norm(new.theta["w4"], axis=1))) <= 1 + 1e-6
    assert float(jnp.max(jnp.abs(new.lam["p"]["W1"]))) <= 1 + 1e-6
    assert float(jnp.linalg.norm(new.lam["q"]["W2"])) <= 1 + 1e-6


def test_no_auto_uses_the_training_batch(data):
    cfg = dataclasses.replace(SMALL, no_auto=True, alpha_noise=0.0)
    m = sif.method(cfg, data)
    state = m.init(jax.random.PRNGKey(0))
    train, val = jax.tree_util.tree_map(lambda x: x[0], m.batches(0, 0))
    a = jax.jit(m.step)(state, (train, val), jax.random.PRNGKey(1))[0]
    b = jax.jit(m.step)(state, (train, jax.tree_util.tree_map(lambda x: x[::-1] * 0, val)), jax.random.PRNGKey(1))[0]
    np.testing.assert_array_equal(a.lam["alpha"], b.lam["alpha"])  # the validation batch is not used


def test_candidates_vmapped_equal_one_by_one(data):
    archs = sif.sample_archs(np.random.default_rng(0), 2)
    train = sif.candidate_trainer(SMALL, data, 2)
    both = train(archs, 0)
    assert both["val_rmse"].shape == (2,) and np.all(np.isfinite(both["val_rmse"]))
    one = sif.candidate_trainer(SMALL, data, 2)([archs[1]], 0)
    # the candidate's init key differs (split over C); same architecture trained alone reaches a similar RMSE
    assert abs(one["val_rmse"][0] - both["val_rmse"][1]) < 0.2


# ------------------------------------------------------------------------------- the search
def test_short_search_lowers_validation_rmse():
    cfg = dataclasses.replace(SMALL, small=False, dim=8, arch_lr=3e-3, synth_op="max")
    m = sif.method(cfg, sif.load(cfg, "synthetic", None, 0))
    state = m.init(jax.random.PRNGKey(0))
    before = m.evaluate(state, "val")["rmse"]
    res = protocol.train(m, seed=0, epochs=3, metric="neg_rmse", log=None)
    assert res.val["rmse"] < 0.8 * before
    assert res.summary["op"] in ifc.OPS and len(res.summary["pq"]) == ifc.PQ_SIZE


RECOVER = dataclasses.replace(SMALL, small=False, arch_lr=3e-3)  # 300 x 300, 30000 planted ratings, k = 4
EPOCHS_RECOVER = 40


def test_search_recovers_the_planted_operation():
    """Three searches (planted multiply, max, plus) at once: the method's own step under vmap over the three
    data sets (same shapes), 40 epochs; each selects the operation that generated its ratings."""
    ops = ("multiply", "max", "concat")
    methods = [sif.method(dataclasses.replace(RECOVER, synth_op=op),
                          sif.load(dataclasses.replace(RECOVER, synth_op=op), "synthetic", None, 0)) for op in ops]
    stack = lambda trees: jax.tree_util.tree_map(lambda *x: jnp.stack(x), *trees)  # noqa: E731
    state = stack([m.init(jax.random.PRNGKey(0)) for m in methods])
    epoch = jax.jit(jax.vmap(protocol.epoch_function(methods[0].step)))
    for e in range(EPOCHS_RECOVER):
        batches = stack([m.batches(0, e) for m in methods])
        state, _ = epoch(state, batches, jax.random.split(jax.random.PRNGKey(e), len(ops)))
    found = [ifc.OPS[int(a)] for a in jnp.argmax(state.lam["alpha"], axis=1)]
    # planted concat is a user bias plus an item bias, which plus represents exactly as well: the class {plus, concat}
    assert found[:2] == ["multiply", "max"] and found[2] in ("plus", "concat"), (found, np.asarray(state.lam["alpha"]))


# --------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("argv,msg", [(["--dim", "0"], "--dim"), (["--lr", "-1"], "--lr"),
                                      (["--train-frac", "0.6", "--val-frac", "0.5"], "must be < 1"),
                                      (["--model", "dart"], "invalid choice"),
                                      (["--table", "efficiency", "--tpe-batch", "0"], "--tpe-batch")])
def test_cli_refuses_nonsense(argv, msg):
    r = subprocess.run([sys.executable, "-m", "experiments.sif", *argv, "--no-save"], capture_output=True, text=True)
    assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1


# the float64 tests last: the x64 fixture is module-scoped (float64 stays on for the tests after it)
# ------------------------------------------------------------------- gradients in float64 (FD)
def _fd(f, x, eps=1e-6):
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for j in range(x.size):
        e = np.zeros_like(x)
        e.flat[j] = eps
        g.flat[j] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


def _problem(seed, k=3, n=6, b=10):
    ks = jax.random.split(jax.random.PRNGKey(seed), 6)
    theta = ifc.init_weights(ks[0], n, n, k, 0.5)
    lam = {"alpha": jax.random.uniform(ks[1], (5,)), "p": ifc.mlp_init(ks[2]), "q": ifc.mlp_init(ks[3])}
    mk = lambda key: (jax.random.randint(key, (b,), 0, n), jax.random.randint(jax.random.fold_in(key, 1), (b,), 0, n),  # noqa: E731
                      jax.random.normal(jax.random.fold_in(key, 2), (b,)), jnp.ones(b))
    return theta, lam, mk(ks[4]), mk(ks[5])


@pytest.mark.usefixtures("x64")
@settings(max_examples=5, deadline=None)
@given(st.integers(0, 10_000))
def test_architecture_gradient_matches_fd_first_order(seed):
    theta, lam, train, val = _problem(seed)
    loss = sif.losses_fn("mixture", 1e-3)
    _, d_lam = bl.direct(loss)(theta, lam, train, val)
    abar = np.asarray(sif.prox_c1(lam["alpha"]))
    # the loss as a function of a continuous alpha vector in place of abar (linear): its gradient at abar
    f = lambda a: float(loss(theta, {**lam, "alpha": jnp.asarray(a)}, val))  # noqa: E731
    ref = _fd(lambda a: _at(loss, theta, lam, val, a), abar)
    np.testing.assert_allclose(d_lam["alpha"], ref, rtol=1e-6, atol=1e-8)
    w1 = np.asarray(lam["p"]["W1"])
    ref_p = _fd(lambda x: float(loss(theta, {**lam, "p": {**lam["p"], "W1": jnp.asarray(x)}}, val)), w1)
    np.testing.assert_allclose(d_lam["p"]["W1"], ref_p, rtol=1e-5, atol=1e-8)
    assert f(np.asarray(lam["alpha"])) == pytest.approx(_at(loss, theta, lam, val, abar))  # loss is at abar


def _at(loss, theta, lam, batch, a):
    """The loss with the mixture weights set to the vector ``a`` directly (no prox): the "gradient at abar"."""
    return float(_at_jnp(theta, lam, batch, a))


@pytest.mark.usefixtures("x64")
@settings(max_examples=4, deadline=None)
@given(st.integers(0, 10_000))
def test_architecture_gradient_matches_fd_second_order(seed):
    theta, lam, train, val = _problem(seed)
    loss, lr = sif.losses_fn("mixture", 1e-3), 0.1
    _, d_lam = bl.one_step(loss, loss, lr=lr)(theta, lam, train, val)
    abar = np.asarray(sif.prox_c1(lam["alpha"]))

    def unrolled(a):  # L_val(theta - lr grad_theta L_train(theta, a), a) with the mixture weights a
        la = lambda th, batch: _at_jnp(th, lam, batch, a)  # noqa: E731
        th = jax.tree_util.tree_map(lambda t, g: t - lr * g, theta, jax.grad(la)(theta, train))
        return float(la(th, val))

    np.testing.assert_allclose(d_lam["alpha"], _fd(unrolled, abar), rtol=1e-5, atol=1e-8)


def _at_jnp(theta, lam, batch, a):
    u, i, y, w = batch
    pu, qv = ifc.mlp_apply(lam["p"], theta["U"][u]), ifc.mlp_apply(lam["q"], theta["V"][i])
    pred = ifc.op_scores(theta, pu, qv) @ jnp.asarray(a)
    reg = jnp.sqrt(jnp.sum(theta["U"][u] ** 2) + 1e-12) + jnp.sqrt(jnp.sum(theta["V"][i] ** 2) + 1e-12)
    return jnp.mean((pred - y) ** 2) + 1e-3 * reg
