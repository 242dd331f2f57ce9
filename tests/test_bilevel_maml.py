"""Property tests (float64) for ``jaxrec.bilevel.adapt`` / ``maml_objective`` on a two-task problem.

The meta-objective is mean_t L(adapt(params, support_t, lr_t, K), query_t) for a small tanh regression
model; references are python-loop adaptations (no library code) differentiated by central differences.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.flatten_util import ravel_pytree

import jaxrec.bilevel as bl


pytestmark = pytest.mark.usefixtures("x64")  # float64 for this module only (tests/conftest.py)


def rel_err(a, b):
    a, b = ravel_pytree(a)[0], ravel_pytree(b)[0]
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def fd_grad(f, x, eps=1e-6):
    flat, unravel = ravel_pytree(x)
    E = eps * jnp.eye(flat.shape[0], dtype=flat.dtype)
    fp = jax.vmap(lambda e: f(unravel(flat + e)))(E)
    fm = jax.vmap(lambda e: f(unravel(flat - e)))(E)
    return unravel((fp - fm) / (2 * eps))


def loss(params, batch):
    x, y = batch
    return jnp.mean((jnp.tanh(x @ params["w"] + params["b"]) - y) ** 2)


def problem(seed):
    rng = np.random.default_rng(seed)
    xs, xq = rng.normal(size=(2, 6, 3)), rng.normal(size=(2, 6, 3))
    w_t = rng.normal(size=(2, 3))
    ys = np.tanh(np.einsum("tnd,td->tn", xs, w_t))
    yq = np.tanh(np.einsum("tnd,td->tn", xq, w_t))
    params = {"w": 0.5 * rng.normal(size=3), "b": np.asarray(0.1 * rng.normal())}
    feats = rng.normal(size=(2, 2))                      # per-task features
    to = lambda t: jax.tree.map(jnp.asarray, t)
    return to(params), (jnp.asarray(xs), jnp.asarray(ys)), (jnp.asarray(xq), jnp.asarray(yq)), jnp.asarray(feats)


def task_rate(v, f):
    """PAML-style per-task learning rate from task features."""
    return 0.5 * jax.nn.sigmoid(f @ v)


def ref_adapt(params, support, lr, steps):
    """Python-loop reference: params - lr * grad, `steps` times; lr scalar or a pytree like params."""
    p = params
    for _ in range(steps):
        g = jax.grad(loss)(p, support)
        if isinstance(lr, dict):
            p = {k: p[k] - lr[k] * g[k] for k in p}
        else:
            p = {k: p[k] - lr * g[k] for k in p}
    return p


def ref_meta(kind, steps, params, hyper, supports, queries, feats):
    total = 0.0
    for t in range(2):
        s = jax.tree.map(lambda a: a[t], supports)
        q = jax.tree.map(lambda a: a[t], queries)
        lr = task_rate(hyper, feats[t]) if kind == "per_task" else hyper
        total = total + loss(ref_adapt(params, s, lr, steps), q)
    return total / 2


def lib_meta(kind, steps, params, hyper, supports, queries, feats):
    def one(s, q, f):
        lr = task_rate(hyper, f) if kind == "per_task" else hyper
        return loss(bl.adapt(loss, params, s, lr, steps), q)

    return jnp.mean(jax.vmap(one)(supports, queries, feats))


@functools.partial(jax.jit, static_argnames=("kind", "steps"))
def grads_vs_fd(kind, steps, params, hyper, supports, queries, feats):
    lib = jax.grad(lib_meta, argnums=(2, 3))(kind, steps, params, hyper, supports, queries, feats)
    ref = lambda p, h: ref_meta(kind, steps, p, h, supports, queries, feats)
    fd = (fd_grad(lambda p: ref(p, hyper), params), fd_grad(lambda h: ref(params, h), hyper))
    values = (lib_meta(kind, steps, params, hyper, supports, queries, feats), ref(params, hyper))
    return lib, fd, values


def hyper_for(kind, rng):
    if kind == "scalar":
        return jnp.asarray(rng.uniform(0.05, 0.5))
    if kind == "per_param":
        return {"w": jnp.asarray(rng.uniform(0.05, 0.5, size=3)), "b": jnp.asarray(rng.uniform(0.05, 0.5))}
    return jnp.asarray(rng.normal(size=2))


@settings(max_examples=10, deadline=None, derandomize=True)
@given(kind=st.sampled_from(["scalar", "per_param", "per_task"]), seed=st.integers(0, 2**16))
def test_adapt_second_order_matches_finite_differences(kind, seed):
    steps = 2
    params, supports, queries, feats = problem(seed)
    hyper = hyper_for(kind, np.random.default_rng(seed + 7))
    (g_p, g_h), (fd_p, fd_h), (v, v_ref) = grads_vs_fd(kind, steps, params, hyper, supports, queries, feats)
    np.testing.assert_allclose(v, v_ref, rtol=1e-12)
    assert rel_err(g_p, fd_p) < 1e-5
    assert rel_err(g_h, fd_h) < 1e-5


@jax.jit
def maml_objective_parts(params, lr, lrs, supports, queries):
    shared = bl.maml_objective(loss, steps=2)
    per_task = bl.maml_objective(loss, steps=2, per_task_lr=True)
    fo = bl.maml_objective(loss, steps=1, first_order=True)
    return (jax.value_and_grad(shared, argnums=(0, 1))(params, lr, supports, queries),
            jax.value_and_grad(per_task, argnums=(0, 1))(params, lrs, supports, queries),
            jax.grad(fo)(params, lr, supports, queries))


@jax.jit
def maml_references(params, lr, lrs, supports, queries, feats):
    """Python-loop references and their central differences; first-order MAML reference gradient."""
    task = lambda tree, t: jax.tree.map(lambda x: x[t], tree)

    def ref_shared(p, a):
        return ref_meta("scalar", 2, p, a, supports, queries, feats)

    def ref_per_task(p, a):
        return sum(loss(ref_adapt(p, task(supports, t), a[t], 2), task(queries, t)) for t in range(2)) / 2

    fd1 = (fd_grad(lambda p: ref_shared(p, lr), params), fd_grad(lambda a: ref_shared(params, a), lr))
    fd2 = (fd_grad(lambda p: ref_per_task(p, lrs), params), fd_grad(lambda a: ref_per_task(params, a), lrs))
    # first-order MAML: gradient = mean_t grad L_q evaluated at the adapted parameters
    fo = [jax.grad(loss)(ref_adapt(params, task(supports, t), lr, 1), task(queries, t)) for t in range(2)]
    fo = jax.tree.map(lambda a, b: (a + b) / 2, *fo)
    return (ref_shared(params, lr), fd1), (ref_per_task(params, lrs), fd2), fo


def test_maml_objective_and_first_order():
    params, supports, queries, feats = problem(3)
    lr, lrs = jnp.asarray(0.3), jnp.asarray([0.1, 0.4])
    (v, (gp, gl)), (v2, (gp2, gl2)), g_fo = maml_objective_parts(params, lr, lrs, supports, queries)

    (r1, fd1), (r2, fd2), fo_ref = maml_references(params, lr, lrs, supports, queries, feats)
    np.testing.assert_allclose(v, r1, rtol=1e-12)
    assert rel_err((gp, gl), fd1) < 1e-5
    np.testing.assert_allclose(v2, r2, rtol=1e-12)
    assert rel_err((gp2, gl2), fd2) < 1e-5
    assert rel_err(g_fo, fo_ref) < 1e-10
    with pytest.raises(ValueError, match="steps must be >= 0"):
        bl.adapt(loss, params, jax.tree.map(lambda x: x[0], supports), 0.1, -1)
    with pytest.raises(ValueError, match="structure of the parameters"):
        bl.adapt(loss, params, jax.tree.map(lambda x: x[0], supports), {"w": 0.1}, 1)
