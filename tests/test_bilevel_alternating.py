"""Float64 property tests of the alternating bilevel step ``jaxrec.bilevel.alternating``: one ``update`` with
SGD on both levels equals the algorithm written out by hand, with the outer derivative taken by central
finite differences of the outer objective (through the one-step map, or at fixed theta for ``direct``)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import jaxrec.bilevel as bl

pytestmark = pytest.mark.usefixtures("x64")
SETTINGS = dict(max_examples=10, deadline=None, derandomize=True)


def inner(theta, lam, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ theta - y) ** 2) + 0.5 * jnp.sum(jnp.exp(lam) * theta ** 2)


def outer(theta, lam, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ theta - y) ** 2) + 0.01 * jnp.sum(lam ** 2) + 0.05 * jnp.sum(jnp.tanh(lam) * theta)


def problem(seed, n=30, d=4):
    rng = np.random.default_rng(seed)
    x, xv = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    w = rng.normal(size=d)
    return (jnp.asarray(rng.normal(size=d)), jnp.asarray(rng.normal(size=d) * 0.5),
            (jnp.asarray(x), jnp.asarray(x @ w + 0.1 * rng.normal(size=n))),
            (jnp.asarray(xv), jnp.asarray(xv @ w + 0.1 * rng.normal(size=n))))


def fd(f, x, eps=1e-6):
    e = eps * jnp.eye(x.shape[0], dtype=x.dtype)
    return jax.vmap(lambda d: (f(x + d) - f(x - d)) / (2 * eps))(e)


@settings(**SETTINGS)
@given(seed=st.integers(0, 10_000), a=st.floats(0.01, 0.3), b=st.floats(0.01, 0.5), alpha=st.floats(0.01, 0.3))
def test_update_is_inner_step_then_one_step_hypergradient_at_new_theta(seed, a, b, alpha):
    theta, lam, tr, va = problem(seed)
    step = bl.alternating(inner, bl.one_step(inner, outer, lr=alpha), optax.sgd(a), optax.sgd(b))
    new, aux = jax.jit(step.update)(step.init(theta, lam), tr, va)
    theta1 = theta - a * jax.grad(inner)(theta, lam, tr)
    F = lambda l: outer(theta1 - alpha * jax.grad(inner)(theta1, l, tr), l, va)  # noqa: E731
    np.testing.assert_allclose(new.theta, theta1, rtol=1e-10)
    np.testing.assert_allclose(new.lam, lam - b * fd(F, lam), rtol=1e-6, atol=1e-9)
    assert float(aux["inner"]) == pytest.approx(float(inner(theta, lam, tr)), rel=1e-12)
    assert float(aux["outer"]) == pytest.approx(float(F(lam)), rel=1e-12)
    assert int(new.step) == 1


@settings(**SETTINGS)
@given(seed=st.integers(0, 10_000), a=st.floats(0.01, 0.3), b=st.floats(0.01, 0.5))
def test_direct_mode_differentiates_outer_at_fixed_new_theta(seed, a, b):
    theta, lam, tr, va = problem(seed)
    step = bl.alternating(inner, bl.direct(outer), optax.sgd(a), optax.sgd(b))
    new, _ = step.update(step.init(theta, lam), tr, va)
    theta1 = theta - a * jax.grad(inner)(theta, lam, tr)
    np.testing.assert_allclose(new.lam, lam - b * fd(lambda l: outer(theta1, l, va), lam), rtol=1e-6, atol=1e-9)


def test_fixed_lam_moves_theta_only_and_reports_outer():
    theta, lam, tr, va = problem(0)
    step = bl.alternating(inner, None, optax.adam(0.1), outer_loss=outer)
    new, aux = step.update(step.init(theta, lam), tr, va)
    np.testing.assert_array_equal(new.lam, lam)
    assert not np.allclose(new.theta, theta)
    assert float(aux["outer"]) == pytest.approx(float(outer(new.theta, lam, va)), rel=1e-12)


def test_has_aux_and_adam_states_thread_through_steps():
    theta, lam, tr, va = problem(1)
    loss_aux = lambda t, l, b: (inner(t, l, b), {"fit": outer(t, l, b)})  # noqa: E731
    step = bl.alternating(loss_aux, bl.implicit(inner, outer, maxiter=3), optax.adam(0.05), optax.adam(0.05),
                          has_aux=True)
    s = step.init(theta, lam)
    for _ in range(3):
        s, aux = jax.jit(step.update)(s, tr, va)
    assert int(s.step) == 3 and "fit" in aux and int(s.outer_opt[0].count) == 3


def test_a_hypergradient_needs_an_outer_transformation():
    with pytest.raises(ValueError, match="outer_tx"):
        bl.alternating(inner, bl.direct(outer), optax.sgd(0.1))
