"""lambda-Opt (jaxrec.methods.lambda_opt): the time-ordered split and the per-positive evaluation on hand cases;
in float64 the Lambda hypergradient through the simulated Adam step against central finite differences of
the validation loss after the method's *real* update, the simulated update equal to the real one, the
projection Lambda >= 0, the outer-then-inner order and the sign of the Lambda step; a short run beats
lambda-Fix at lambda = 0 on the validation loss; the experiment CLI."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import jaxrec.bilevel as bl
from experiments import lambda_opt as exp
from jaxrec import metrics
from jaxrec.data import Interactions
from jaxrec.data.splits import time_split
from jaxrec.method import train
from jaxrec.methods import lambda_opt as L

GRANS = ("global", "d", "du", "di", "dui")


# ------------------------------------------------------------------------------ data and metrics layer
def test_time_split_hand_case():
    # user 0: 10 rows, timestamps shuffled, two rows share the latest timestamp (the later row is later);
    # user 1: 4 rows -> floor(0.8) = 0 test, floor(0.25 * 4) = 1 validation
    ts0 = np.array([5, 3, 9, 1, 9, 0, 7, 2, 8, 4])
    inter = Interactions(user=np.array([0] * 10 + [1] * 4), item=np.arange(14), n_users=2, n_items=14,
                         timestamp=np.concatenate([ts0, [3, 1, 2, 0]]))
    tr, va, te = time_split(inter, 0.2, 0.25)
    assert sorted(te.item) == [2, 4]  # the two rows at t = 9
    assert sorted(va.item[va.user == 0]) == [6, 8]  # floor(0.25 * 8) = 2: t = 8, 7
    assert sorted(tr.item) == [0, 1, 3, 5, 7, 9, 11, 12, 13]
    assert list(va.item[va.user == 1]) == [10] and list(te.item[te.user == 1]) == []  # t = 3 is user 1's latest
    inter2 = Interactions(user=np.zeros(5, int), item=np.arange(5), n_users=1, n_items=5, timestamp=np.zeros(5))
    assert list(time_split(inter2, 0.2, 0.25).test.item) == [4]  # ties: row order, the last row is latest
    with pytest.raises(Exception, match="timestamps"):
        time_split(Interactions(user=np.zeros(5, int), item=np.arange(5), n_users=1, n_items=5), 0.2, 0.25)


def test_per_positive_metrics_hand_case():
    scores = jnp.array([[5.0, 4.0, 3.0, 2.0, 1.0], [2.0, 2.0, 0.0, 3.0, 1.0]])
    # user 0: train item 0, targets 2 and 3, negatives {1, 4}; user 1: target 0, negatives {1, 2, 3, 4}
    interacted = sp.csr_matrix(np.array([[1, 0, 1, 1, 0], [1, 0, 0, 0, 0]], np.float32))
    target = sp.csr_matrix(np.array([[0, 0, 1, 1, 0], [1, 0, 0, 0, 0]], np.float32))
    out = metrics.per_positive_metrics(lambda u: scores[u], target, interacted, ks=(1, 2))
    # user 0: both targets have one negative above (rank 2) and one below (auc 1/2 each)
    # user 1: item 3 above (rank 2; the tie with item 1 does not count), items 2, 4 below: auc 2/4
    assert out["n_users"] == 2
    assert out["hr@1"] == 0.0 and out["hr@2"] == 1.0
    assert out["ndcg@2"] == pytest.approx(1 / np.log2(3))
    assert out["auc"] == pytest.approx(0.5)
    target2 = sp.csr_matrix(np.array([[0, 0, 1, 0, 0], [0, 0, 0, 0, 0]], np.float32))
    out2 = metrics.per_positive_metrics(lambda u: jnp.broadcast_to(scores[0], (u.shape[0], 5)), target2,
                                        interacted, ks=(2,))
    assert out2["n_users"] == 1 and out2["hr@2"] == 1.0
    with pytest.raises(ValueError, match="interacted"):
        metrics.per_positive_metrics(lambda u: scores[u], target, sp.csr_matrix((2, 5)), ks=(1,))


# --------------------------------------------------------------------------- the hypergradient (float64)
def _problem(granularity, seed=0, n_users=7, n_items=9, dim=3, b=6):
    rng = np.random.default_rng(seed)
    cfg = L.LambdaOptConfig(granularity=granularity, dim=dim, lr=0.05, lam_lr=0.05, clip=100.0)
    theta = {"user": jnp.asarray(rng.normal(size=(n_users, dim))), "item": jnp.asarray(rng.normal(size=(n_items, dim)))}
    lam = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.uniform(0.05, 0.5, size=x.shape)),
                                 L.init_lambda(granularity, n_users, n_items, dim))

    def batch(k):
        r = np.random.default_rng(seed * 10 + k)
        return (jnp.asarray(r.integers(0, n_users, b)), jnp.asarray(r.integers(0, n_items, b)),
                jnp.asarray(r.integers(0, n_items, b)), jnp.ones(b))

    step = L.bilevel_step(cfg)
    state = step.init(theta, lam)
    for k in range(2):  # two real steps: Adam's moments and count are not at their initial values
        state, _, _ = step.inner(state, batch(10 + k))
    return cfg, step, state, batch(0), batch(1)


@pytest.fixture
def x64_fn():
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", prev)


@pytest.mark.parametrize("granularity", GRANS)
def test_hypergradient_matches_central_differences_through_the_real_step(x64_fn, granularity):
    cfg, step, state, tr, va = _problem(granularity)

    def F(lam):  # validation BPR after the method's real update with Lambda = lam
        return L.validation_loss(step.inner(state._replace(lam=lam), tr)[0].theta, lam, va)

    value, g = L.hypergradient(cfg)(state.theta, state.lam, tr, va, state.inner_opt)
    assert float(value) == pytest.approx(float(F(state.lam)), rel=1e-12)
    flat, unravel = jax.flatten_util.ravel_pytree(state.lam)
    gflat = jax.flatten_util.ravel_pytree(g)[0]
    assert float(jnp.abs(gflat).max()) > 0
    rng = np.random.default_rng(1)
    eps = 1e-6
    for _ in range(3):  # directional derivatives along random directions
        v = jnp.asarray(rng.normal(size=flat.shape))
        fd = (F(unravel(flat + eps * v)) - F(unravel(flat - eps * v))) / (2 * eps)
        assert float(jnp.dot(gflat, v)) == pytest.approx(float(fd), rel=1e-5, abs=1e-10)


@pytest.mark.parametrize("granularity", ("d", "dui"))
def test_simulated_update_is_the_real_update(granularity):
    cfg, step, state, tr, _ = _problem(granularity)
    sim = jax.jit(bl.optax_update(L.train_loss, L.inner_tx(cfg)))(state.theta, state.inner_opt, state.lam, tr)
    real, _, _ = jax.jit(step.inner)(state, tr)
    for a, b in zip(jax.tree_util.tree_leaves(sim), jax.tree_util.tree_leaves((real.theta, real.inner_opt))):
        np.testing.assert_array_equal(a, b)


def test_step_is_lambda_then_theta_and_descends_the_hypergradient():
    cfg, step, state, tr, va = _problem("dui")
    cfg = dataclasses.replace(cfg, lam_lr=1e-3)
    step = L.bilevel_step(cfg)
    state = state._replace(outer_opt=L.outer_tx(cfg).init(state.lam))
    data = {"n_users": 7, "n_items": 9, "train": sp.csr_matrix((7, 9)), "val": None}
    m = L.method(cfg, {**data, "train": sp.csr_matrix(np.ones((7, 9)))})
    new, logs = m.step(state, (tr, va), jax.random.PRNGKey(0))
    _, g = L.hypergradient(cfg)(state.theta, state.lam, tr, va, state.inner_opt)  # at Theta_t: outer first
    for side in ("user", "item"):
        moved = np.abs(np.asarray(g[side])) > 1e-8
        assert moved.any()
        np.testing.assert_array_equal(np.sign(new.lam[side] - state.lam[side])[moved], -np.sign(g[side])[moved])
    inner_after, _, _ = step.inner(state._replace(lam=new.lam), tr)  # then Theta with the new Lambda
    np.testing.assert_allclose(new.theta["user"], inner_after.theta["user"], rtol=1e-6)
    assert int(new.step) == int(state.step) + 1 and "val_loss" in logs


def test_projection_keeps_lambda_nonnegative():
    cfg, step, state, tr, va = _problem("dui")
    cfg = dataclasses.replace(cfg, lam_lr=10.0)  # a huge step: many coordinates would go negative
    step = L.bilevel_step(cfg)
    state = state._replace(outer_opt=L.outer_tx(cfg).init(state.lam))
    for _ in range(3):
        state, _ = step.outer(state, tr, va)
    leaves = jax.tree_util.tree_leaves(state.lam)
    assert all(float(x.min()) >= 0.0 for x in leaves)
    assert any(float((x == 0).mean()) > 0 for x in leaves)  # the projection was active


# ----------------------------------------------------------------------------------------- short runs
@pytest.fixture(scope="module")
def synth():
    cfg = L.LambdaOptConfig(**{**exp.SYNTH, "epochs": 12, "eval_every": 4})
    return cfg, L.load(cfg, "synthetic", None, 0)


def _val_bpr(state, data):
    rng = np.random.default_rng(123)
    coo = data["val"].tocoo()
    u, i = coo.row.astype(np.int32), coo.col.astype(np.int32)
    j = L.sample_negatives(rng, u, data["train_val"], 1)[:, 0].astype(np.int32)
    return float(L.bpr(state.theta, (jnp.asarray(u), jnp.asarray(i), jnp.asarray(j), jnp.ones(len(u)))))


def test_short_run_lowers_validation_loss_below_lambda_fix_zero(synth):
    cfg, data = synth
    res = {g: train(L.method(dataclasses.replace(cfg, granularity=g, lam=0.0), data), seed=0, epochs=cfg.epochs,
                    metric="hr@100", eval_every=cfg.eval_every, log=None) for g in ("fix", "dui")}
    last = {g: _val_bpr(r.state, data) for g, r in res.items()}
    assert last["dui"] < last["fix"]
    assert res["dui"].summary["lam_item"] > 0 and res["fix"].summary["lam_item"] == 0
    hist = [h["train"]["lam_item"] for h in res["dui"].history]
    assert hist[-1] > hist[0]
    assert set(res["dui"].test) >= {"auc", "hr@50", "hr@100", "ndcg@50", "ndcg@100"}


def test_cli_quick_main_and_refusals(tmp_path, capsys):
    exp.main(["--quick", "--granularity", "dui", "--lam", "0", "0.01", "--out", str(tmp_path), "--seeds", "1"])
    out = capsys.readouterr().out  # several --lam values replace the lambda-Fix grid
    assert "MF-lambda-Fix" in out and "lambda-Opt-DUI" in out and "lambda-Opt-D |" not in out
    assert "lam=0.01:" in out and "lam=10.0" not in out
    exp.main(["--quick", "--granularity", "dui", "--out", str(tmp_path), "--table", "lambda"])
    assert (tmp_path / "lambda_opt" / "synthetic" / "lambda_frequency.png").exists()
    assert (tmp_path / "lambda_opt" / "synthetic" / "lambda_epoch.png").exists()
    for bad in (["--granularity", "dux"], ["--lam", "-1"], ["--lam-lr", "0"], ["--dataset", "nope"]):
        with pytest.raises(SystemExit) as e:
            exp.main(bad)
        assert e.value.code == 2
