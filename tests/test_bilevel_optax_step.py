"""Float64 property tests of ``jaxrec.bilevel.optax_step`` / ``optax_update``: the one-step hypergradient through
a differentiable optax update (Adam with clipping, the lambda-Opt inner optimiser) against central finite
differences of the outer objective taken through the *real* optax update; the simulated update equals the real
``tx.update`` + ``apply_updates``; with plain SGD it is ``bl.one_step``; and ``bl.alternating`` hands the inner
optimiser state to it with ``hypergrad_opt_state=True``."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import jaxrec.bilevel as bl

pytestmark = pytest.mark.usefixtures("x64")
SETTINGS = dict(max_examples=6, deadline=None, derandomize=True)


def inner(theta, lam, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ theta - y) ** 2) + jnp.sum(lam * theta ** 2)


def outer(theta, lam, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ theta - y) ** 2) + 0.05 * jnp.sum(jnp.tanh(lam) * theta)


def problem(seed, n=30, d=4):
    rng = np.random.default_rng(seed)
    x, xv = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    w = rng.normal(size=d)
    return (jnp.asarray(rng.normal(size=d)), jnp.asarray(np.abs(rng.normal(size=d)) * 0.3),
            (jnp.asarray(x), jnp.asarray(x @ w + 0.1 * rng.normal(size=n))),
            (jnp.asarray(xv), jnp.asarray(xv @ w + 0.1 * rng.normal(size=n))))


def fd(f, x, eps=1e-6):
    e = eps * jnp.eye(x.shape[0], dtype=x.dtype)
    return jax.vmap(lambda d: (f(x + d) - f(x - d)) / (2 * eps))(e)


def adam_tx(lr, clip):
    return optax.chain(optax.clip_by_global_norm(clip), optax.adam(lr, eps_root=1e-16))


def warm(tx, theta, lam, batch, steps):
    """``steps`` real updates, so the Adam moments and the count are not at their initial values."""
    state = tx.init(theta)
    for _ in range(steps):
        upd, state = tx.update(jax.grad(inner)(theta, lam, batch), state, theta)
        theta = optax.apply_updates(theta, upd)
    return theta, state


@settings(**SETTINGS)
@given(seed=st.integers(0, 10_000), lr=st.floats(0.01, 0.3), clip=st.sampled_from([0.5, 100.0]),
       steps=st.integers(0, 3))
def test_hypergradient_through_adam_matches_central_differences(seed, lr, clip, steps):
    theta, lam, tr, va = problem(seed)
    tx = adam_tx(lr, clip)
    theta, state = warm(tx, theta, lam, tr, steps)

    def F(l):  # the outer loss after the real optax update at lam = l (theta, state fixed)
        upd, _ = tx.update(jax.grad(inner)(theta, l, tr), state, theta)
        return outer(optax.apply_updates(theta, upd), l, va)

    value, d_lam = bl.optax_step(inner, outer, tx)(theta, lam, tr, va, state)
    assert float(value) == pytest.approx(float(F(lam)), rel=1e-12)
    np.testing.assert_allclose(d_lam, fd(F, lam), rtol=1e-5, atol=1e-8)


@settings(**SETTINGS)
@given(seed=st.integers(0, 10_000), lr=st.floats(0.01, 0.3), steps=st.integers(0, 3))
def test_wrt_theta_gradient_matches_central_differences(seed, lr, steps):
    theta, lam, tr, va = problem(seed)
    tx = adam_tx(lr, 100.0)
    theta, state = warm(tx, theta, lam, tr, steps)
    value, (d_lam, d_theta) = bl.optax_step(inner, outer, tx, wrt_theta=True)(theta, lam, tr, va, state)
    update = bl.optax_update(inner, tx)
    np.testing.assert_allclose(d_theta, fd(lambda t: outer(update(t, state, lam, tr)[0], lam, va), theta),
                               rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(d_lam, bl.optax_step(inner, outer, tx)(theta, lam, tr, va, state)[1], rtol=1e-12)


@settings(**SETTINGS)
@given(seed=st.integers(0, 10_000), lr=st.floats(0.01, 0.3), steps=st.integers(0, 3))
def test_simulated_update_is_the_real_update(seed, lr, steps):
    theta, lam, tr, _ = problem(seed)
    tx = adam_tx(lr, 0.5)
    theta, state = warm(tx, theta, lam, tr, steps)
    sim_theta, sim_state = jax.jit(bl.optax_update(inner, tx))(theta, state, lam, tr)

    @jax.jit
    def real(theta, state):  # the real step, written with optax directly (both jitted: bitwise equal)
        upd, new_state = tx.update(jax.grad(inner)(theta, lam, tr), state, theta)
        return optax.apply_updates(theta, upd), new_state

    real_theta, real_state = real(theta, state)
    np.testing.assert_array_equal(sim_theta, real_theta)
    for a, b in zip(jax.tree_util.tree_leaves(sim_state), jax.tree_util.tree_leaves(real_state)):
        np.testing.assert_array_equal(a, b)


@settings(**SETTINGS)
@given(seed=st.integers(0, 10_000), lr=st.floats(0.01, 0.3))
def test_sgd_transformation_is_the_one_step_hypergradient(seed, lr):
    theta, lam, tr, va = problem(seed)
    tx = optax.sgd(lr)
    got = bl.optax_step(inner, outer, tx)(theta, lam, tr, va, tx.init(theta))
    want = bl.one_step(inner, outer, lr=lr)(theta, lam, tr, va)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-10, atol=1e-14)


def test_alternating_passes_the_inner_optimiser_state():
    theta, lam, tr, va = problem(0)
    tx = adam_tx(0.1, 100.0)
    step = bl.alternating(inner, bl.optax_step(inner, outer, tx), tx, optax.sgd(0.5), hypergrad_opt_state=True)
    state = step.init(theta, lam)
    state, _, _ = step.inner(state, tr)  # one real step: the Adam state is no longer the initial one
    new, value = jax.jit(step.outer)(state, tr, va)
    want_value, d_lam = bl.optax_step(inner, outer, tx)(state.theta, lam, tr, va, state.inner_opt)
    assert float(value) == pytest.approx(float(want_value), rel=1e-12)
    np.testing.assert_allclose(new.lam, lam - 0.5 * d_lam, rtol=1e-12)
    np.testing.assert_array_equal(new.theta, state.theta)


def test_check_raises_on_nan():
    theta, lam, tr, va = problem(1)
    tx = optax.sgd(0.1)
    with pytest.raises(bl.NonFiniteError):
        bl.optax_step(inner, outer, tx, check=True)(theta * jnp.nan, lam, tr, va, tx.init(theta))
