"""Meta-Wrapper: the unrolled hypergradient of a tiny float64 instance against finite differences of an
independent unroll (coupled and detached form), the detached step trains theta on the inner gradient only,
the ablation objectives M1-M4 switch the right terms and take the same steps on the same rows, M3
alternates correctly, DIN's logits equal an independent numpy reference, the SGD schedule decays once per
epoch, the real-data presets are the paper's protocol, and a short training run is reproducible."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from jaxrec.losses import bce_with_logits
from jaxrec import bilevel as bl
from jaxrec import method as protocol
from jaxrec import cli
from jaxrec.methods.meta_wrapper import (MWConfig, epoch_indices, learning_rate, method, model_config, objective_grads,
                                         optimizer)
from jaxrec.models.ctr import cast_params, ctr_logits, init_params, merge_params, split_params


def _tiny(seed=0, n_items=6, n_cats=2, B=5, T=3):
    rng = np.random.default_rng(seed)

    def batch():
        hist = rng.integers(1, n_items + 1, size=(B, T))
        hist[0, :2] = 0
        hist[1, :1] = 0
        tgt = rng.integers(1, n_items + 1, size=B)
        cat = np.concatenate([[0], rng.integers(1, n_cats + 1, size=n_items)])
        return {"hist": jnp.asarray(hist), "target": jnp.asarray(tgt), "hist_cat": jnp.asarray(cat[hist]),
                "target_cat": jnp.asarray(cat[tgt]), "label": jnp.asarray(rng.integers(0, 2, B), jnp.float64)}

    cfg = MWConfig(variant="M4", emb_dim=3, hidden=(4, 3), att_hidden=(4, 3), mu=0.6, beta=0.5, n_inner=2,
                   detach=False)
    mcfg = model_config(cfg, n_items, n_cats)
    params = cast_params(init_params(mcfg, "din", jax.random.PRNGKey(seed)), jnp.float64)
    # larger embeddings so that the selector matters
    params["emb"] = jax.tree_util.tree_map(lambda x: 5 * x, params["emb"])
    return cfg, mcfg, params, batch(), batch()


def _L(mcfg, theta, phi, b):
    return bce_with_logits(ctr_logits(merge_params(theta, phi), b, mcfg, "din"), b["label"])


def _manual_objective(cfg, mcfg, theta, phi, b_in, b_out, start=None):
    """Independent reference: explicit python loop of N gradient steps from ``start`` (default: theta)."""
    t = theta if start is None else start
    for _ in range(cfg.n_inner):
        g = jax.grad(_L, argnums=1)(mcfg, t, phi, b_in)
        t = jax.tree_util.tree_map(lambda x, y: x - cfg.beta * y, t, g)
    return _L(mcfg, theta, phi, b_in) + cfg.mu * _L(mcfg, t, phi, b_out)


def _split_of(b_in, b_out, mcfg):
    """A split whose three parts hold the rows of both batches (what ``method`` needs to build the step)."""
    part = _Rows({k: jnp.concatenate([b_in[k], b_out[k]]) for k in b_in}, mcfg.n_items, mcfg.n_cats)
    return type("Split", (), {"train": part, "val": part, "test": part})()


def _state(params, tx):
    theta, phi = split_params(params)
    return bl.BilevelState(theta, phi, tx.init(theta), tx.init(phi), jnp.zeros((), jnp.int32))


def _sgd(tree, grad, lr):
    return jax.tree_util.tree_map(lambda x, g: x - lr * g, tree, grad)


class _Rows:
    """A CTR part of the given rows (what ``method`` reads: ``arrays()``, ``len``, ``n_items``, ``n_cats``)."""

    def __init__(self, rows, n_items, n_cats):
        self.rows, self.n_items, self.n_cats = {k: np.asarray(v) for k, v in rows.items()}, n_items, n_cats

    def arrays(self):
        return self.rows

    def __len__(self):
        return len(self.rows["label"])


def _flip(b):
    return dict(b, label=1.0 - b["label"])


def test_unrolled_hypergradient_matches_finite_differences():
    with jax.enable_x64(True):
        cfg, mcfg, params, b_in, b_out = _tiny()
        theta, phi = split_params(params)
        val, (g_t, g_p) = jax.jit(objective_grads(cfg, mcfg))(theta, phi, b_in, b_out)
        f = jax.jit(lambda th, ph: _manual_objective(cfg, mcfg, th, ph, b_in, b_out))
        np.testing.assert_allclose(val, f(theta, phi), rtol=1e-12)
        rng = np.random.default_rng(0)
        eps = 1e-6
        for _ in range(3):
            d_t = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), theta)
            d_p = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), phi)
            shift = lambda s: (jax.tree_util.tree_map(lambda x, d: x + s * d, theta, d_t),  # noqa: E731
                               jax.tree_util.tree_map(lambda x, d: x + s * d, phi, d_p))
            fd = (f(*shift(eps)) - f(*shift(-eps))) / (2 * eps)
            ad = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves((g_t, g_p)),
                                                   jax.tree_util.tree_leaves((d_t, d_p))))
            np.testing.assert_allclose(ad, fd, rtol=1e-6, atol=1e-9)
        # the phi part alone (selector weights only) against finite differences too
        fd_p = (f(theta, jax.tree_util.tree_map(lambda x, d: x + eps * d, phi, d_p))
                - f(theta, jax.tree_util.tree_map(lambda x, d: x - eps * d, phi, d_p))) / (2 * eps)
        ad_p = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g_p), jax.tree_util.tree_leaves(d_p)))
        np.testing.assert_allclose(ad_p, fd_p, rtol=1e-6, atol=1e-9)


_JITTED = {}


def _grads(cfg, mcfg, params, b_in, b_out, **kw):
    c = dataclasses.replace(cfg, **kw)
    key = (dataclasses.astuple(c), mcfg)
    if key not in _JITTED:  # jitted: eager M1/M2 compile every primitive on its own (13 s vs 3-4 s here)
        _JITTED[key] = jax.jit(objective_grads(c, mcfg))
    theta, phi = split_params(params)
    return _JITTED[key](theta, phi, b_in, b_out)


def _close(a, b):
    return all(np.allclose(x, y, rtol=1e-9, atol=1e-12) for x, y in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_ablation_objectives_switch_the_right_terms():
    with jax.enable_x64(True):
        cfg, mcfg, params, b_in, b_out = _tiny(seed=1)  # coupled form (detach=False)
        theta, phi = split_params(params)
        gL = jax.jit(jax.grad(lambda th, ph, b: _L(mcfg, th, ph, b), argnums=(0, 1)))
        g_in, g_out = gL(theta, phi, b_in), gL(theta, phi, b_out)
        both = {k: jnp.concatenate([b_in[k], b_out[k]]) for k in b_in}
        # M1 = DIN on the step's rows of D_in and D_out together (the same data as M2-M4), either form
        for detach in (False, True):
            _, m1 = _grads(cfg, mcfg, params, b_in, b_out, variant="M1", detach=detach)
            assert _close(m1, gL(theta, phi, both))
            assert not _close(_grads(cfg, mcfg, params, b_in, _flip(b_out), variant="M1", detach=detach)[1], m1)
        # M2 coupled = L_in + mu L_out(theta, phi) in theta and phi
        _, m2 = _grads(cfg, mcfg, params, b_in, b_out, variant="M2")
        assert _close(m2, jax.tree_util.tree_map(lambda a, b: a + cfg.mu * b, g_in, g_out))
        # M2 detached: the out-of-bag term C2 regularizes the selector only
        _, m2d = _grads(cfg, mcfg, params, b_in, b_out, variant="M2", detach=True)
        assert _close(m2d[0], g_in[0])
        assert _close(m2d[1], jax.tree_util.tree_map(lambda a, b: a + cfg.mu * b, g_in[1], g_out[1]))
        # M4 reduces to M2 without inner steps (beta = 0: the unrolled map is the identity), in both forms ...
        assert _close(_grads(cfg, mcfg, params, b_in, b_out, beta=0.0)[1], m2)
        assert _close(_grads(cfg, mcfg, params, b_in, b_out, beta=0.0, detach=True)[1], m2d)
        # ... and otherwise carries the second-order term: in theta and phi (coupled), in phi only (detached)
        _, m4 = _grads(cfg, mcfg, params, b_in, b_out)
        assert not _close(m4[0], m2[0]) and not _close(m4[1], m2[1])
        _, m4d = _grads(cfg, mcfg, params, b_in, b_out, detach=True)
        assert _close(m4d[0], g_in[0]) and not _close(m4d[1], m2d[1])


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2 ** 16))
def test_detached_hypergradient_matches_finite_differences(seed):
    """Detached M4 (Eq. 12): grad_phi of L_in(theta, phi) + mu L_out(U_phi^N(theta'), phi) with theta' a copy of
    theta, against central differences of the independent python-loop unroll along a random phi direction;
    grad_theta is grad_theta L_in exactly."""
    with jax.enable_x64(True):
        cfg, mcfg, params, b_in, b_out = _tiny(seed=seed % 7)
        cfg = dataclasses.replace(cfg, detach=True)
        theta, phi = split_params(params)
        key = (dataclasses.astuple(cfg), mcfg)
        if key not in _JITTED:
            _JITTED[key] = jax.jit(objective_grads(cfg, mcfg))
        val, (g_t, g_p) = _JITTED[key](theta, phi, b_in, b_out)
        f = lambda ph: _manual_objective(cfg, mcfg, theta, ph, b_in, b_out)  # noqa: E731
        np.testing.assert_allclose(val, f(phi), rtol=1e-12)
        assert _close(g_t, jax.grad(_L, argnums=1)(mcfg, theta, phi, b_in))
        rng = np.random.default_rng(seed)
        d_p = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), phi)
        eps = 1e-6
        fd = (f(jax.tree_util.tree_map(lambda x, d: x + eps * d, phi, d_p))
              - f(jax.tree_util.tree_map(lambda x, d: x - eps * d, phi, d_p))) / (2 * eps)
        ad = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g_p), jax.tree_util.tree_leaves(d_p)))
        scale = float(jnp.sqrt(sum(jnp.vdot(a, a) for a in jax.tree_util.tree_leaves(g_p)) *
                               sum(jnp.vdot(b, b) for b in jax.tree_util.tree_leaves(d_p))))
        np.testing.assert_allclose(ad, fd, rtol=1e-6, atol=1e-9 * max(scale, 1.0))  # O(eps^2) error ~ |g||d|


@pytest.mark.parametrize("variant", ["M4", "M2"])
def test_detached_step_trains_theta_on_the_inner_gradient_only(variant):
    """The method's own step (SGD, so the update is ``-lr * gradient``): in the detached form theta moves by
    the plain gradient of L_in on D_in (the outer term does not reach it: the same update with D_out's labels
    flipped), phi by the gradient of the whole objective with theta held fixed (M4: through the independent
    unroll); the coupled form moves theta by the whole objective's theta-gradient."""
    with jax.enable_x64(True):
        cfg, mcfg, params, b_in, b_out = _tiny(seed=3)
        theta, phi = split_params(params)
        cfg = dataclasses.replace(cfg, variant=variant, optimizer="sgd", lr=0.3, detach=True)
        if variant == "M2":
            cfg = dataclasses.replace(cfg, beta=0.0)  # the reference unroll is then the identity: M2's objective
        fixed = jax.lax.stop_gradient
        ref = lambda th, ph, bo: _manual_objective(cfg, mcfg, th, ph, b_in, bo, start=fixed(th))  # noqa: E731
        for detach in (True, False):
            c = dataclasses.replace(cfg, detach=detach)
            m = method(c, _split_of(b_in, b_out, mcfg))
            step = jax.jit(m.step)
            new, _ = step(_state(params, optimizer(c)), {"in": b_in, "out": b_out}, jax.random.PRNGKey(0))
            if detach:
                g_t = jax.grad(_L, argnums=1)(mcfg, theta, phi, b_in)  # the inner loss only
                g_p = jax.grad(ref, argnums=1)(theta, phi, b_out)
            else:
                g_t, g_p = jax.grad(lambda th, ph: _manual_objective(c, mcfg, th, ph, b_in, b_out),
                                    argnums=(0, 1))(theta, phi)
            assert _close(new.theta, _sgd(theta, g_t, c.lr)), detach
            assert _close(new.lam, _sgd(phi, g_p, c.lr)), detach
            flipped, _ = step(_state(params, optimizer(c)), {"in": b_in, "out": _flip(b_out)},
                              jax.random.PRNGKey(0))
            assert _close(flipped.theta, new.theta) == detach  # D_out reaches theta in the coupled form only
            assert not _close(flipped.lam, new.lam)


def test_every_ablation_variant_takes_the_same_steps_on_the_same_rows():
    """M1-M4 get the same batches from the method's own ``batches`` (the same D_in / D_out rows, the same
    number of steps per epoch) and M1 trains on all of them: its step is SGD on the gradient of the loss
    over the step's D_in and D_out rows together."""
    from jaxrec.data.ctr import synthetic_interest_groups

    split = synthetic_interest_groups(seed=0, n_users=10, n_items=200, n_pos=10, n_neg=10)
    base = MWConfig(emb_dim=4, hidden=(8, 4), att_hidden=(8, 4), batch_size=16, optimizer="sgd", lr=0.5)
    ms = {v: method(dataclasses.replace(base, variant=v), split) for v in ("M1", "M2", "M3", "M4")}
    n_in = int(round(base.in_frac * len(split.train)))
    for epoch in (0, 1):
        got = {v: m.batches(4, epoch) for v, m in ms.items()}
        for v, b in got.items():
            assert b["in"]["label"].shape[0] == n_in // base.batch_size, v
            assert ms[v].summary(None)["steps_per_epoch"] == n_in // base.batch_size, v
            assert jax.tree_util.tree_all(jax.tree_util.tree_map(
                lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), b, got["M4"])), v
    b = jax.tree_util.tree_map(lambda x: x[0], got["M1"])
    state = ms["M1"].init(jax.random.PRNGKey(0))
    new, _ = jax.jit(ms["M1"].step)(state, b, jax.random.PRNGKey(0))
    mcfg = model_config(base, split.train.n_items, split.train.n_cats)
    both = {k: jnp.concatenate([b["in"][k], b["out"][k]]) for k in b["in"]}
    g = jax.grad(lambda th, ph: _L(mcfg, th, ph, both), argnums=(0, 1))(state.theta, state.lam)
    close = lambda a, c: all(np.allclose(x, y, rtol=1e-4, atol=1e-6) for x, y in  # noqa: E731
                             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(c)))
    assert close(new.theta, _sgd(state.theta, g[0], base.lr)) and close(new.lam, _sgd(state.lam, g[1], base.lr))


def _np_mlp(layers, x):
    """Dense layers ``Dense_0..Dense_L`` with sigmoid hidden activations and a linear last layer (numpy)."""
    names = sorted(layers, key=lambda n: int(n.split("_")[1]))
    for i, n in enumerate(names):
        x = x @ np.asarray(layers[n]["kernel"]) + np.asarray(layers[n]["bias"])
        if i < len(names) - 1:
            x = 1 / (1 + np.exp(-x))
    return x


def test_din_logits_match_an_independent_numpy_reference():
    """DIN on a hand-sized batch with left padding, written out in numpy: e = [E_item[v], E_cat[c]], the
    selector s_t = MLP([e_t, e_v, e_t - e_v, e_t * e_v]) set to 0 where the history is padding, the user
    vector sum_t s_t e_t, the logit MLP([user, e_v]). The padding rows of both tables hold large values, so a
    selector score or a pooling that reached a padded position would show."""
    mcfg = model_config(MWConfig(emb_dim=2, hidden=(3,), att_hidden=(3, 2)), n_items=5, n_cats=2)
    params = init_params(mcfg, "din", jax.random.PRNGKey(4))
    params["emb"] = {k: {"embedding": v["embedding"].at[0].set(3.0) * 4} for k, v in params["emb"].items()}
    cat = np.array([0, 1, 2, 2, 1, 1])  # category of item 0 (padding) .. 5
    hist = np.array([[0, 0, 3, 1], [0, 2, 5, 4], [1, 2, 3, 5]])
    target = np.array([2, 4, 1])
    batch = {"hist": jnp.asarray(hist), "hist_cat": jnp.asarray(cat[hist]), "target": jnp.asarray(target),
             "target_cat": jnp.asarray(cat[target]), "label": jnp.asarray([1.0, 0.0, 1.0])}
    E_item, E_cat = (np.asarray(params["emb"][k]["embedding"], np.float64) for k in ("item", "cat"))
    ref = []
    for h, v in zip(hist, target):
        e_v = np.concatenate([E_item[v], E_cat[cat[v]]])
        user = np.zeros_like(e_v)
        for t in h:
            if t == 0:  # padding: no score, no contribution
                continue
            e_t = np.concatenate([E_item[t], E_cat[cat[t]]])
            s_t = _np_mlp(params["sel"]["MLP_0"], np.concatenate([e_t, e_v, e_t - e_v, e_t * e_v]))[0]
            user += s_t * e_t
        ref.append(_np_mlp(params["mlp"], np.concatenate([user, e_v]))[0])
    np.testing.assert_allclose(np.asarray(ctr_logits(params, batch, mcfg, "din")), ref, rtol=1e-5, atol=1e-6)


def _interest_rows(seed, n, n_items=40, n_groups=4, T=6, noise=0.1):
    """A clean interest-group CTR set: a row's history is T items (up to 2 of them left padding) of the
    user's group, the target a random item, the true label ``group(target) == user's group``, the observed
    one flipped with probability ``noise``. Returns the rows and the true labels."""
    rng = np.random.default_rng(seed)
    group = np.arange(1, n_items + 1) % n_groups  # group of item j + 1
    cat = np.concatenate([[0], group + 1])
    user_group = rng.integers(0, n_groups, n)
    hist = np.stack([rng.choice(np.flatnonzero(group == g) + 1, T) for g in user_group])
    for row, pad in enumerate(rng.integers(0, 3, n)):
        hist[row, :pad] = 0
    target = rng.integers(1, n_items + 1, n)
    true = (group[target - 1] == user_group).astype(np.float32)
    label = np.where(rng.random(n) < noise, 1 - true, true).astype(np.float32)
    return {"hist": hist, "hist_cat": cat[hist], "target": target, "target_cat": cat[target], "label": label}, true


@pytest.mark.parametrize("kind", ["base", "wdl", "pnn", "deepfm", "din"])
def test_every_baseline_learns_a_clean_interest_signal(kind):
    """Every baseline (Base, Wide&Deep, PNN, DeepFM, DIN), trained by the method's plain variant for 5 short
    epochs on 1,000 rows of :func:`_interest_rows`, ranks the noise-free test labels well above chance.
    (``tests/test_ctr_models.py``'s test on the paper's synthetic set covers PNN only: there Base and DIN
    memorise item ids and stay at chance within any cheap budget, see RESULTS.md's synthetic study.)"""
    from jaxrec.metrics import auc

    parts = [_interest_rows(seed, n) for seed, n in ((0, 1000), (1, 400), (2, 400))]
    split = type("Split", (), {name: _Rows(rows, 40, 4) for name, (rows, _) in zip(("train", "val", "test"), parts)})()
    cfg = MWConfig(model=kind, variant="plain", emb_dim=4, hidden=(16, 8), att_hidden=(16, 8), batch_size=32,
                   lr=3e-2, track_train_loss=False, eval_batch=400)
    res = protocol.train(method(cfg, split), seed=0, epochs=5, metric="auc", log=None)
    mcfg = model_config(cfg, 40, 4)
    logits = ctr_logits(merge_params(res.state.theta, res.state.lam), split.test.arrays(), mcfg, kind)
    assert float(auc(jnp.asarray(parts[2][1]), logits)) > 0.75, kind


def test_sgd_rate_decays_once_per_epoch_and_the_real_sets_use_the_paper_protocol():
    """``optimizer``'s rate is ``lr * lr_decay ** epoch`` (constant inside an epoch); the real-data presets of
    the experiment are SGD, decay 0.9 per epoch, 30 epochs, patience 5, the synthetic default stays Adam."""
    from experiments.meta_wrapper import LRS, SPEC

    cfg = MWConfig(optimizer="sgd", lr=0.5, lr_decay=0.9)
    rate = learning_rate(cfg, 4)
    for count, k in ((0, 0), (3, 0), (4, 1), (7, 1), (8, 2), (40, 10)):
        np.testing.assert_allclose(float(rate(count)), 0.5 * 0.9 ** k, rtol=1e-6)
    tx = optimizer(cfg, 4)
    state, ones = tx.init(jnp.zeros(2)), jnp.ones(2)
    for k in range(6):
        upd, state = tx.update(ones, state, jnp.zeros(2))
        np.testing.assert_allclose(np.asarray(upd), -0.5 * 0.9 ** (k // 4), rtol=1e-6)
    assert learning_rate(MWConfig(), 4) == MWConfig().lr  # Adam at a constant rate (the stored runs)
    for dataset in ("ml-100k", "Amazon_Toys_and_Games"):
        c = cli.parse(SPEC, ["--dataset", dataset]).base
        assert (c.optimizer, c.lr_decay, c.epochs, c.patience, c.detach) == ("sgd", 0.9, 30, 5, True)
    c = cli.parse(SPEC, []).base
    assert (c.optimizer, c.lr_decay, c.epochs, c.detach) == ("adam", 1.0, 15, True)
    assert cli.parse(SPEC, ["--no-detach"]).base.detach is False
    assert len(LRS["sgd"]) == len(LRS["adam"]) == 3
    for bad in ({"lr_decay": 0.0}, {"optimizer": "rmsprop"}):
        with pytest.raises(ValueError):
            MWConfig(**bad)


def test_m3_alternates_theta_on_din_then_phi_on_dout():
    with jax.enable_x64(True):
        cfg, mcfg, params, b_in, b_out = _tiny(seed=2)
        cfg = dataclasses.replace(cfg, variant="M3", lr=1e-2)
        m = method(cfg, _split_of(b_in, b_out, mcfg))
        theta0, phi0 = split_params(params)
        tx = optimizer(cfg)  # Adam after add_decayed_weights(2 l2 = 0)
        state = bl.BilevelState(theta0, phi0, tx.init(theta0), tx.init(phi0), jnp.zeros((), jnp.int32))
        new, _ = m.step(state, {"in": b_in, "out": b_out}, jax.random.PRNGKey(0))
        # reference: Adam on grad_theta L_in, then Adam on grad_phi L_out at the *updated* theta
        opt = optax.adam(cfg.lr)
        theta, phi = split_params(params)
        g_t = jax.grad(_L, argnums=1)(mcfg, theta, phi, b_in)
        upd, _ = opt.update(g_t, opt.init(theta), theta)
        theta1 = optax.apply_updates(theta, upd)
        g_p = jax.grad(_L, argnums=2)(mcfg, theta1, phi, b_out)
        upd, _ = opt.update(g_p, opt.init(phi), phi)
        phi1 = optax.apply_updates(phi, upd)
        assert _close(new.theta, theta1)
        assert _close(new.lam, phi1)
        # theta's step ignores D_out, phi's does not
        new2, _ = m.step(state, {"in": b_in, "out": _flip(b_out)}, jax.random.PRNGKey(0))
        assert _close(new2.theta, theta1)
        assert not _close(new2.lam, phi1)


def test_batches_are_the_epoch_indices_rows():
    """``batches`` hands the step the rows of :func:`epoch_indices` (D_in / D_out of one permutation) from the
    seed's stream, the same after a fresh start at a later epoch (a resume) as when continued."""
    from jaxrec.data.ctr import synthetic_interest_groups

    split = synthetic_interest_groups(seed=0, n_users=10, n_items=200, n_pos=10, n_neg=10)
    cfg = MWConfig(variant="M4", emb_dim=4, hidden=(8, 4), att_hidden=(8, 4), batch_size=16)
    rows = split.train.arrays()
    rng = np.random.default_rng(5)
    idx = [epoch_indices(cfg, len(split.train), rng) for _ in range(3)]
    b = method(cfg, split).batches(5, 2)
    for part in ("in", "out"):
        for k, v in rows.items():
            np.testing.assert_array_equal(np.asarray(b[part][k]), v[idx[2][part]])
    assert not set(idx[2]["in"].ravel()) & set(idx[2]["out"].ravel())  # D_in and D_out are disjoint
    m = method(cfg, split)
    m.batches(5, 0), m.batches(5, 1)
    np.testing.assert_array_equal(np.asarray(m.batches(5, 2)["in"]["hist"]), np.asarray(b["in"]["hist"]))


def test_train_runs_and_is_reproducible():
    from jaxrec.data.ctr import synthetic_interest_groups

    split = synthetic_interest_groups(seed=0, n_users=10, n_items=200, n_pos=10, n_neg=10)
    cfg = MWConfig(variant="M4", emb_dim=4, hidden=(8, 4), att_hidden=(8, 4), epochs=2, batch_size=32,
                   n_inner=1, lr=1e-2, eval_batch=32)
    a, b = (protocol.train(method(cfg, split), seed=3, epochs=2, metric="auc", log=None) for _ in range(2))
    assert len(a.history) == 2
    for k in ("train_loss", "auc", "test_loss"):
        assert np.isfinite(a.history[-1]["val"][k])
        assert a.history[-1]["val"][k] == b.history[-1]["val"][k]
    assert a.history[-1]["train"] == b.history[-1]["train"] and a.test == b.test
    with pytest.raises(ValueError, match="din"):
        MWConfig(model="base", variant="M4")
    for v in ("M1", "M2", "M3", "M4"):  # their objectives run without dropout: asking for it is an error
        with pytest.raises(ValueError, match="plain"):
            MWConfig(variant=v, dropout=0.5)
    assert MWConfig(variant="plain", dropout=0.5).dropout == 0.5


def _main(argv, capsys):
    """Run the experiment's command line; return its stdout."""
    from experiments.meta_wrapper import main

    capsys.readouterr()
    main(argv)
    return capsys.readouterr().out


def _fails(argv, capsys, code=1) -> str:
    """Run a command line that must stop with ``code``; return its one-line stderr."""
    from experiments.meta_wrapper import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def _trained(text: str) -> int:
    return text.count("compiling the step ...")


def _rows(text: str) -> list:
    return [line for line in text.splitlines() if line.startswith("| ")]


# every CLI test trains 1-epoch runs on the synthetic set; `base` (sum pooling) compiles fastest
Q = ["--quick", "--epochs", "1"]


def test_cli_tune_selects_best_validation_setting_and_tuned_reuses_it(tmp_path, capsys):
    out, folder = ["--out", str(tmp_path)], tmp_path / "meta_wrapper" / "synthetic"
    assert "tuned.json" in _fails(["--table", "main", "--tuned", "--models", "base"] + Q + out, capsys)
    tune = ["--table", "tune", "--models", "base", "--lrs", "1e-3", "2e-2", "--l2s", "0"] + Q + out
    text = _main(tune, capsys)
    assert _trained(text) == 2
    tuned = json.loads((folder / "tuned.json").read_text())
    grid = tuned["base"]["grid"]
    assert set(grid) == {"lr=0.001,l2=0", "lr=0.02,l2=0"}
    assert tuned["base"]["val_auc"] == max(grid.values()) == grid[f"lr={tuned['base']['lr']:g},l2=0"]
    edge = "largest" if tuned["base"]["lr"] == 2e-2 else "smallest"
    assert f"note: base: lr={tuned['base']['lr']:g} is the {edge} value tried" in text
    for again in (tune, tune + ["--reverse"]):  # the same grid again, also in a second process's order: read back
        text = _main(again, capsys)
        assert _trained(text) == 0 and text.count("[cached]") == 2
        assert json.loads((folder / "tuned.json").read_text()) == tuned
    main = ["--table", "main", "--tuned", "--models", "base", "--seeds", "2"] + Q + out
    text = _main(main, capsys)
    assert _trained(text) == 1 and text.count("[cached]") == 1  # seed 0 is the tuning run of the selected setting
    rev = _main(main + ["--reverse"], capsys)
    assert _trained(rev) == 0 and rev.count("[cached]") == 2
    assert _rows(rev) == _rows(text)  # the same table
    assert not list(folder.glob("*.running"))
    recs = [json.loads(p.read_text()) for p in folder.glob("base_*_seed*.json")]
    assert sorted(r["seed"] for r in recs if r["config"]["lr"] == tuned["base"]["lr"]) == [0, 1]
    # the ablation's M4 is the main table's Meta-Wrapper run (same config): read back, not retrained
    assert _trained(_main(["--table", "main", "--models", "mw"] + Q + out, capsys)) == 1
    text = _main(["--table", "ablation", "--models", "M4"] + Q + out, capsys)
    assert _trained(text) == 0 and text.count("[cached]") == 1
    assert "no entry for din" in _fails(["--table", "main", "--tuned", "--models", "din"] + Q + out, capsys)
    # a tuned.json of one optimizer is not applied to runs of the other
    assert "tuned with adam" in _fails(["--table", "main", "--tuned", "--models", "base", "--optimizer", "sgd"]
                                       + Q + out, capsys)
    assert tuned["base"]["optimizer"] == "adam"


def test_cli_tune_shape_stage_at_the_selected_lr(tmp_path, capsys):
    """The second tuning stage varies batch and embedding size at each model's selected lr / l2: the point
    equal to the first stage's shape is read back, the selection is added to ``tuned.json`` (lr / l2 kept), and
    ``--tuned`` tables then train with the selected shape, seed 0 read back from its tuning run."""
    folder = tmp_path / "meta_wrapper" / "synthetic"
    common = Q + ["--models", "base", "--out", str(tmp_path), "--batch-size", "64", "--emb-dim", "8"]
    assert "add --tuned" in _fails(["--table", "tune", "--batch-sizes", "32", "64"] + common, capsys)
    _main(["--table", "tune", "--lrs", "1e-3", "2e-2", "--l2s", "0"] + common, capsys)
    first = json.loads((folder / "tuned.json").read_text())["base"]
    text = _main(["--table", "tune", "--tuned", "--batch-sizes", "32", "64", "--emb-dims", "8", "4"] + common, capsys)
    assert text.count("[cached]") == 1 and _trained(text) == 3  # bs 64 / emb 8 is the first stage's run
    tuned = json.loads((folder / "tuned.json").read_text())["base"]
    assert (tuned["lr"], tuned["l2"], tuned["grid"]) == (first["lr"], first["l2"], first["grid"])
    assert set(tuned["grid_shape"]) == {"bs=32,emb=8", "bs=32,emb=4", "bs=64,emb=8", "bs=64,emb=4"}
    best = max(tuned["grid_shape"], key=tuned["grid_shape"].get)
    assert best == f"bs={tuned['batch_size']},emb={tuned['emb_dim']}"
    assert tuned["val_auc"] == tuned["grid_shape"][best] >= first["val_auc"]
    text = _main(["--table", "main", "--tuned"] + common, capsys)
    assert _trained(text) == 0 and text.count("[cached]") == 1  # seed 0 = the selected tuning run
    rec = json.loads(open(text.split("[cached] ")[1].split()[0]).read())
    assert (rec["config"]["batch_size"], rec["config"]["emb_dim"], rec["config"]["lr"]) == \
        (tuned["batch_size"], tuned["emb_dim"], tuned["lr"])


def test_cli_sensitivity_reuses_saved_runs_of_the_same_setting(tmp_path, capsys):
    common = Q + ["--out", str(tmp_path)]
    assert _trained(_main(["--table", "main", "--models", "mw"] + common, capsys)) == 1
    text = _main(["--table", "sensitivity", "--factors", "mu"] + common, capsys)
    # the centre mu = 0.4 is the main table's MW run: read back; the other three are trained
    assert text.count("[cached]") == 1 and _trained(text) == 3
    assert len(list((tmp_path / "meta_wrapper" / "synthetic").glob("M4_*_seed0.json"))) == 4
    for row in ("mu=0.2", "mu=0.4", "mu=0.6", "mu=0.8"):
        assert f"| {row} |" in text


def test_cli_refuses_nonsense_before_any_work(tmp_path, capsys):
    """Invalid values stop with exit status 2 and one line, before JAX loads or anything is written; a
    several-valued config flag outside ``--table tune`` is refused too (status 1), as is an unknown model."""
    out = ["--out", str(tmp_path)]
    for argv, what in ((["--lr", "-1"], "--lr"), (["--mu", "nan"], "--mu"), (["--in-frac", "1.5"], "--in-frac"),
                       (["--batch-size", "0"], "--batch-size"), (["--dataset", "nope"], "--dataset"),
                       (["--model", "xyz"], "--model"), (["--table", "timing"], "--table"),
                       (["--max-len", "50"], "--max-len"), (["--seeds", "0"], "--seeds"),
                       (["--table", "tune", "--lrs", "-1"], "--lrs"), (["--batch-sizes", "0"], "--batch-sizes"),
                       (["--lrs", "abc"], "--lrs"), (["--emb-dims", "1.5"], "--emb-dims"),
                       (["--fs-dropout", "1"], "--fs-dropout"), (["--lr-decay", "1.5"], "--lr-decay"),
                       (["--optimizer", "rmsprop"], "--optimizer")):
        assert what in _fails(argv + out, capsys, code=2)
    assert "grid" in _fails(["--lr", "1e-3", "2e-3", "--table", "main", "--models", "base"] + Q + out, capsys)
    assert not list(tmp_path.rglob("*.json"))
