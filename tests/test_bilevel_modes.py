"""Property tests (float64) for the hypergradient modes of ``jaxrec.bilevel``.

Problems: ridge regression with per-feature L2 weights (closed-form inner solution and hypergradient),
logistic regression with per-feature L2 weights, a tiny tanh MLP with per-layer (log) weight decay.
References are computed independently of the library: plain python loops for the unrolled maps, exact
linear solves / Newton iterations for the argmin, and central finite differences.
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


RTOL = 1e-5
SETTINGS = dict(max_examples=10, deadline=None, derandomize=True)
RIDGE_SHAPES = [(24, 3), (40, 6)]


def rel_err(a, b):
    a, b = ravel_pytree(a)[0], ravel_pytree(b)[0]
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def assert_close(a, b, rtol=RTOL):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    err = rel_err(a, b)
    assert err <= rtol, f"relative error {err:.3e} > {rtol:.0e}"


def fd_grad(f, x, eps=1e-6):
    """Central finite differences of a scalar f over all coordinates of the pytree x."""
    flat, unravel = ravel_pytree(x)
    E = eps * jnp.eye(flat.shape[0], dtype=flat.dtype)
    fp = jax.vmap(lambda e: f(unravel(flat + e)))(E)
    fm = jax.vmap(lambda e: f(unravel(flat - e)))(E)
    return unravel((fp - fm) / (2 * eps))


# ---------------------------------------------------------------- problems
def ridge_inner(theta, lam, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ theta - y) ** 2) + 0.5 * jnp.sum(lam * theta ** 2)


def ridge_outer(theta, lam, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ theta - y) ** 2)


def ridge_problem(seed, n, d, lam_lo=1e-2):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    X, Xv = rng.normal(size=(n, d)), rng.normal(size=(n // 2, d))
    train = (jnp.asarray(X), jnp.asarray(X @ w + 0.3 * rng.normal(size=n)))
    val = (jnp.asarray(Xv), jnp.asarray(Xv @ w + 0.3 * rng.normal(size=n // 2)))
    lam = jnp.asarray(np.exp(rng.uniform(np.log(lam_lo), 0.0, size=d)))
    theta0 = jnp.asarray(rng.normal(size=d))
    return train, val, lam, theta0


def ridge_exact(lam, train, gamma=0.0, center=None):
    """argmin of ridge_inner + gamma/2 |theta - center|^2 by a direct linear solve."""
    x, y = train
    n, d = x.shape
    A = x.T @ x / n + jnp.diag(lam) + gamma * jnp.eye(d)
    rhs = x.T @ y / n + (0.0 if center is None else gamma * center)
    return jnp.linalg.solve(A, rhs), A


def ridge_closed_form_hypergrad(lam, train, val, gamma=0.0, center=None):
    """d/dlam of L_out(theta*(lam)): -theta* * A^{-1} grad_theta L_out (per-feature weights)."""
    th, A = ridge_exact(lam, train, gamma, center)
    xv, yv = val
    g = xv.T @ (xv @ th - yv) / xv.shape[0]
    return -th * jnp.linalg.solve(A, g)


def logistic_inner(theta, lam, batch):
    x, y = batch
    return jnp.mean(jax.nn.softplus(-y * (x @ theta))) + 0.5 * jnp.sum(lam * theta ** 2)


def logistic_outer(theta, lam, batch):
    x, y = batch
    return jnp.mean(jax.nn.softplus(-y * (x @ theta))) + 0.01 * jnp.sum(lam ** 2)


def logistic_problem(seed, n, d):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    X, Xv = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    lab = lambda Z: np.where(Z @ w + 0.5 * rng.normal(size=len(Z)) > 0, 1.0, -1.0)
    lam = jnp.asarray(np.exp(rng.uniform(np.log(3e-2), 0.0, size=d)))
    return (jnp.asarray(X), jnp.asarray(lab(X))), (jnp.asarray(Xv), jnp.asarray(lab(Xv))), lam


def mlp_apply(theta, x):
    h = jnp.tanh(x @ theta["W1"] + theta["b1"])
    return (h @ theta["W2"] + theta["b2"])[:, 0]


def mlp_inner(theta, lam, batch):
    x, y = batch
    decay = 0.5 * jnp.exp(lam["l1"]) * jnp.sum(theta["W1"] ** 2) + 0.5 * jnp.exp(lam["l2"]) * jnp.sum(theta["W2"] ** 2)
    return 0.5 * jnp.mean((mlp_apply(theta, x) - y) ** 2) + decay


def mlp_outer(theta, lam, batch):
    x, y = batch
    return 0.5 * jnp.mean((mlp_apply(theta, x) - y) ** 2) + 0.1 * (jnp.tanh(lam["l1"]) + jnp.tanh(lam["l2"]))


def mlp_problem(seed):
    rng = np.random.default_rng(seed)
    theta = {"W1": rng.normal(size=(3, 5)) / np.sqrt(3), "b1": 0.1 * rng.normal(size=5),
             "W2": rng.normal(size=(5, 1)) / np.sqrt(5), "b2": np.zeros(1)}
    X, Xv = rng.normal(size=(16, 3)), rng.normal(size=(12, 3))
    f = lambda Z: np.sin(Z[:, 0]) + 0.5 * Z[:, 1] * Z[:, 2]
    lam = {"l1": np.log(rng.uniform(1e-3, 1e-1)), "l2": np.log(rng.uniform(1e-3, 1e-1))}
    to = lambda t: jax.tree.map(jnp.asarray, t)
    return to(theta), to(lam), (jnp.asarray(X), jnp.asarray(f(X))), (jnp.asarray(Xv), jnp.asarray(f(Xv)))


PROBLEMS = {
    "ridge": (ridge_inner, ridge_outer),
    "logistic": (logistic_inner, logistic_outer),
    "mlp": (mlp_inner, mlp_outer),
}


def make_problem(name, seed, shape):
    if name == "ridge":
        train, val, lam, theta0 = ridge_problem(seed, *shape)
        return theta0, lam, train, val
    if name == "logistic":
        train, val, lam = logistic_problem(seed, *shape)
        return jnp.asarray(np.random.default_rng(seed + 1).normal(size=shape[1])), lam, train, val
    theta, lam, train, val = mlp_problem(seed)
    return theta, lam, train, val


# ------------------------------------------------------- jitted references
def reference_unrolled_value(inner, outer, steps, theta, lam, lr, train, val):
    """L_out after `steps` plain GD steps, written as a python loop (independent of bl.unroll)."""
    g = jax.grad(inner)
    t = theta
    for _ in range(steps):
        t = jax.tree.map(lambda p, q: p - lr * q, t, g(t, lam, train))
    return outer(t, lam, val)


@functools.partial(jax.jit, static_argnames=("name", "steps", "checkpoint", "scan_unroll"))
def unrolled_vs_fd(name, steps, checkpoint, scan_unroll, theta, lam, lr, train, val):
    inner, outer = PROBLEMS[name]
    opts = dict(steps=steps, lr=lr, checkpoint=checkpoint, scan_unroll=scan_unroll)
    val_, (d_lam, d_theta) = bl.unrolled(inner, outer, wrt_theta=True, **opts)(theta, lam, train, val)
    ref = functools.partial(reference_unrolled_value, inner, outer, steps)
    fd_lam = fd_grad(lambda l: ref(theta, l, lr, train, val), lam)
    fd_theta = fd_grad(lambda t: ref(t, lam, lr, train, val), theta)
    return val_, ref(theta, lam, lr, train, val), d_lam, d_theta, fd_lam, fd_theta


@functools.partial(jax.jit, static_argnames=("name",))
def one_step_vs_fd(name, theta, lam, lr, train, val):
    inner, outer = PROBLEMS[name]
    value, d_lam = bl.one_step(inner, outer, lr=lr)(theta, lam, train, val)
    ref = lambda l: reference_unrolled_value(inner, outer, 1, theta, l, lr, train, val)
    return value, ref(lam), d_lam, fd_grad(ref, lam)


# --------------------------------------------------------------- unrolled
@settings(**SETTINGS)
@given(name=st.sampled_from(["ridge", "logistic", "mlp"]), seed=st.integers(0, 2**16),
       variant=st.sampled_from([(False, None), (True, 1)]), lr=st.floats(0.02, 0.3))
def test_unrolled_matches_finite_differences_of_unrolled_map(name, seed, variant, lr):
    checkpoint, scan_unroll = variant              # (checkpoint each step?, lax.scan unroll: None = auto)
    shape, steps = {"ridge": ((40, 6), 4), "logistic": ((24, 3), 3), "mlp": (None, 3)}[name]
    theta, lam, train, val = make_problem(name, seed, shape)
    v, v_ref, d_lam, d_theta, fd_lam, fd_theta = unrolled_vs_fd(
        name, steps, checkpoint, scan_unroll, theta, lam, lr, train, val)
    np.testing.assert_allclose(v, v_ref, rtol=1e-12)
    assert_close(d_lam, fd_lam)
    assert_close(d_theta, fd_theta)


def ridge_step_batches():
    """A ridge problem whose 24 training rows are cut into 3 step batches of 8 (leading axis = step)."""
    train, val, lam, theta0 = ridge_problem(3, 24, 3)
    x, y = train
    return (x.reshape(3, 8, 3), y.reshape(3, 8)), val, lam, theta0


def test_unroll_per_step_batches_and_callable_lr():
    """per_step_batch uses slice k at step k; lr may be a differentiable function of lam."""
    batches, val, lam, theta0 = ridge_step_batches()
    lam_tree = {"l2": lam, "log_lr": jnp.log(0.1)}
    inner = lambda t, l, b: ridge_inner(t, l["l2"], b)
    outer = lambda t, l, b: ridge_outer(t, l["l2"], b)

    def ref(l):
        t = theta0
        for k in range(3):
            t = t - jnp.exp(l["log_lr"]) * jax.grad(inner)(t, l, (batches[0][k], batches[1][k]))
        return outer(t, l, val)

    hg = bl.unrolled(inner, outer, steps=3, lr=lambda l: jnp.exp(l["log_lr"]), per_step_batch=True)
    value, d = jax.jit(hg)(theta0, lam_tree, batches, val)
    ref_value, fd = jax.jit(lambda l: (ref(l), fd_grad(ref, l)))(lam_tree)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    assert_close(d, fd)
    with pytest.raises(ValueError, match="leading axis of length steps=4"):
        bl.unrolled(inner, outer, steps=4, lr=0.1, per_step_batch=True)(theta0, lam_tree, batches, val)


@functools.partial(jax.jit, static_argnames=("name", "steps", "checkpoint"))
def joint_with_start_loss_vs_fd(name, steps, checkpoint, theta, lam, lr, train, val):
    """The Meta-Wrapper-style joint objective L_in(theta) + 0.5 L_out(theta_bar) built on the start loss that
    ``unroll(return_start_loss=True)`` returns, against the python-loop reference and its finite differences."""
    inner, outer = PROBLEMS[name]
    tbar_fn = bl.unroll(inner, steps=steps, lr=lr, checkpoint=checkpoint, return_start_loss=True)

    def joint(t, l):
        tbar, start = tbar_fn(t, l, train)
        return start + 0.5 * outer(tbar, l, val)

    ref = lambda t, l: inner(t, l, train) + 0.5 * reference_unrolled_value(inner, outer, steps, t, l, lr, train, val)
    plain = bl.unroll(inner, steps=steps, lr=lr)(theta, lam, train)
    value, (g_t, g_l) = jax.value_and_grad(joint, argnums=(0, 1))(theta, lam)
    return (value, ref(theta, lam), tbar_fn(theta, lam, train)[0], plain, g_t, g_l,
            fd_grad(lambda t: ref(t, lam), theta), fd_grad(lambda l: ref(theta, l), lam))


@settings(**SETTINGS)
@given(name=st.sampled_from(["ridge", "logistic", "mlp"]), seed=st.integers(0, 2**16),
       steps=st.sampled_from([0, 1, 3]), checkpoint=st.booleans(), lr=st.floats(0.02, 0.3))
def test_unroll_start_loss_joint_objective_matches_finite_differences(name, seed, steps, checkpoint, lr):
    shape = {"ridge": (40, 6), "logistic": (24, 3), "mlp": None}[name]
    theta, lam, train, val = make_problem(name, seed, shape)
    v, v_ref, tbar, tbar_plain, g_t, g_l, fd_t, fd_l = joint_with_start_loss_vs_fd(
        name, steps, checkpoint, theta, lam, lr, train, val)
    np.testing.assert_allclose(v, v_ref, rtol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14), tbar, tbar_plain)
    assert_close(g_t, fd_t)
    assert_close(g_l, fd_l)


def test_unroll_start_loss_per_step_batch_uses_first_slice():
    batches, _, lam, theta0 = ridge_step_batches()
    tbar, start = jax.jit(bl.unroll(ridge_inner, steps=3, lr=0.1, per_step_batch=True, return_start_loss=True))(
        theta0, lam, batches)
    np.testing.assert_allclose(start, ridge_inner(theta0, lam, (batches[0][0], batches[1][0])), rtol=1e-12)
    np.testing.assert_allclose(tbar, bl.unroll(ridge_inner, steps=3, lr=0.1, per_step_batch=True)(theta0, lam, batches),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="no step batch"):
        bl.unroll(ridge_inner, steps=0, lr=0.1, per_step_batch=True, return_start_loss=True)(
            theta0, lam, (batches[0][:0], batches[1][:0]))


# --------------------------------------------------------------- one step
@settings(**SETTINGS)
@given(name=st.sampled_from(["ridge", "logistic", "mlp"]), shape=st.sampled_from(RIDGE_SHAPES),
       seed=st.integers(0, 2**16), lr=st.floats(0.02, 0.5))
def test_one_step_matches_finite_differences(name, shape, seed, lr):
    theta, lam, train, val = make_problem(name, seed, shape)
    value, v_ref, d_lam, fd = one_step_vs_fd(name, theta, lam, lr, train, val)
    np.testing.assert_allclose(value, v_ref, rtol=1e-12)
    assert_close(d_lam, fd)


# --------------------------------------------------------------- implicit
@functools.partial(jax.jit, static_argnames=("solver", "maxiter"))
def implicit_ridge(solver, maxiter, tol, alpha, gamma, lam, train, val):
    theta_star, _ = ridge_exact(lam, train, gamma)
    hg = bl.implicit(ridge_inner, ridge_outer, solver=solver, maxiter=maxiter, tol=tol, damping=gamma,
                     neumann_alpha=alpha)
    value, d_lam = hg(theta_star, lam, train, val)
    exact_map = lambda l: ridge_outer(ridge_exact(l, train, gamma)[0], l, val)
    return d_lam, fd_grad(exact_map, lam), ridge_closed_form_hypergrad(lam, train, val, gamma)


@settings(**SETTINGS)
@given(seed=st.integers(0, 2**16), solver=st.sampled_from(["cg", "jaxopt", "neumann", "dense"]),
       gamma=st.sampled_from([0.0, 0.0, 0.3, 2.0]))
def test_implicit_at_exact_solution_matches_closed_form_and_fd(seed, solver, gamma):
    """Also covers damping: with gamma > 0 the reference is the proximal problem L_in + gamma/2|theta-0|^2."""
    shape = (40, 6)
    train, val, lam, _ = ridge_problem(seed, *shape, lam_lo=5e-2)
    _, A = ridge_exact(lam, train, gamma)
    alpha = float(1.0 / jnp.linalg.eigvalsh(A)[-1])
    maxiter = {"cg": 4 * shape[1], "jaxopt": 4 * shape[1], "neumann": 1500, "dense": 1}[solver]
    tol = 1e-14 if solver == "jaxopt" else 0.0
    d_lam, fd, closed = implicit_ridge(solver, maxiter, tol, alpha, gamma, lam, train, val)
    assert_close(fd, closed)           # sanity of the two references
    assert_close(d_lam, closed)
    assert_close(d_lam, fd)


def test_implicit_damping_with_lam_dependent_center_imaml():
    """prox_center: inner = ridge + gamma/2 |theta - c|^2 with c part of lam (iMAML-style)."""
    train, val, lam, c = ridge_problem(11, 40, 6)
    gamma = 0.7
    lam_tree = {"l2": lam, "c": c}
    inner = lambda t, l, b: ridge_inner(t, l["l2"], b)
    outer = lambda t, l, b: ridge_outer(t, l["l2"], b) + 0.05 * jnp.sum(l["c"] ** 2)
    exact = lambda l: ridge_exact(l["l2"], train, gamma, l["c"])[0]
    hg = bl.implicit(inner, outer, solver="cg", maxiter=30, damping=gamma, prox_center=lambda l: l["c"])
    _, d = jax.jit(hg)(exact(lam_tree), lam_tree, train, val)
    assert_close(d, fd_grad(lambda l: outer(exact(l), l, val), lam_tree))
    for mode in ("linearize", "rev_rev"):            # the other Hessian-vector product modes agree
        hg_m = bl.implicit(inner, outer, solver="cg", maxiter=30, damping=gamma, prox_center=lambda l: l["c"],
                           hvp_mode=mode)
        assert_close(jax.jit(hg_m)(exact(lam_tree), lam_tree, train, val)[1], d, rtol=1e-10)
    # without the centre term the lam["c"] gradient misses the implicit part: must differ
    _, d_wrong = jax.jit(bl.implicit(inner, outer, solver="cg", maxiter=30, damping=gamma))(
        exact(lam_tree), lam_tree, train, val)
    assert rel_err(d_wrong["c"], d["c"]) > 1e-2


@functools.partial(jax.jit, static_argnames=("maxiter",))
def logistic_implicit(maxiter, lam, train, val):
    solver = bl.newton_solver(logistic_inner, maxiter=50, tol=1e-13)
    theta0 = jnp.zeros(train[0].shape[1], train[0].dtype)
    theta_star = solver(theta0, lam, train)
    _, d_lam = bl.implicit(logistic_inner, logistic_outer, solver="cg", maxiter=maxiter, tol=1e-15)(
        theta_star, lam, train, val)
    exact_map = lambda l: logistic_outer(solver(theta0, l, train), l, val)
    grad_norm = jnp.linalg.norm(jax.grad(logistic_inner)(theta_star, lam, train))
    return d_lam, fd_grad(exact_map, lam), grad_norm


@settings(**SETTINGS)
@given(shape=st.sampled_from(RIDGE_SHAPES), seed=st.integers(0, 2**16))
def test_implicit_logistic_matches_fd_of_exact_argmin(shape, seed):
    train, val, lam = logistic_problem(seed, *shape)
    d_lam, fd, grad_norm = logistic_implicit(4 * shape[1], lam, train, val)
    assert grad_norm < 1e-12
    assert_close(d_lam, fd)


@functools.partial(jax.jit, static_argnames=("solver", "iters"))
def solve_errors(solver, iters, alpha, lam, train, val):
    """Per maxiter in `iters`: the linear-solve error (CG: A-norm, Neumann: 2-norm) and the relative
    hypergradient error of bl.implicit against the closed form."""
    theta_star, A = ridge_exact(lam, train)
    b = jax.grad(ridge_outer)(theta_star, lam, val)
    mv = bl.hvp_fn(ridge_inner, theta_star, lam, train)
    w_exact = jnp.linalg.solve(A, b)
    closed = ridge_closed_form_hypergrad(lam, train, val)
    sol, hyp = [], []
    for k in iters:
        if solver == "cg":
            e = bl.cg(mv, b, maxiter=k) - w_exact
            sol.append(jnp.sqrt(e @ A @ e))
        else:
            sol.append(jnp.linalg.norm(bl.neumann(mv, b, maxiter=k, alpha=alpha) - w_exact))
        _, d = bl.implicit(ridge_inner, ridge_outer, solver=solver, maxiter=k, neumann_alpha=alpha)(
            theta_star, lam, train, val)
        hyp.append(jnp.linalg.norm(d - closed) / jnp.linalg.norm(closed))
    return jnp.stack(sol), jnp.stack(hyp)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16))
def test_implicit_error_falls_as_maxiter_grows(seed):
    train, val, lam, _ = ridge_problem(seed, 40, 6, lam_lo=1e-2)
    _, A = ridge_exact(lam, train)
    alpha = float(1.0 / jnp.linalg.eigvalsh(A)[-1])
    for solver, iters in (("cg", (0, 1, 2, 3, 4, 6, 10)), ("neumann", (0, 4, 32, 256, 4000))):
        sol, hyp = map(np.asarray, solve_errors(solver, iters, alpha, lam, train, val))
        # the solver error is monotone (CG: A-norm, Neumann with alpha = 1/L: 2-norm) ...
        assert np.all(np.diff(sol) <= 1e-12 * sol[0]), (solver, sol)
        # ... and the hypergradient error goes from large to ~0
        assert hyp[-1] < 1e-7, (solver, hyp)
        assert hyp[0] > 1e3 * hyp[-1] and hyp[1] > hyp[-1], (solver, hyp)


# ------------------------------------------------------------------ argmin
@functools.partial(jax.jit, static_argnames=("d",))
def argmin_ridge(d, theta0, lam, train, val):
    newton = bl.newton_solver(ridge_inner, maxiter=3)
    solve = bl.argmin(ridge_inner, newton)
    f = lambda l: solve(theta0, l, train)
    hg = bl.argmin_hypergrad(ridge_inner, ridge_outer, newton, linear_solver="cg", maxiter=4 * d, tol=0.0)
    value, d_lam = hg(theta0, lam, train, val)
    return f(lam), jax.jacobian(f)(lam), value, d_lam


@settings(**SETTINGS)
@given(shape=st.sampled_from(RIDGE_SHAPES), seed=st.integers(0, 2**16))
def test_argmin_matches_closed_form(shape, seed):
    train, val, lam, theta0 = ridge_problem(seed, *shape)
    th_hat, J, value, d_lam = argmin_ridge(shape[1], theta0, lam, train, val)
    th, A = ridge_exact(lam, train)
    np.testing.assert_allclose(th_hat, th, rtol=1e-10)
    assert_close(J, -jnp.linalg.solve(A, jnp.diag(th)))     # d theta*/d lam = -A^{-1} diag(theta*)
    np.testing.assert_allclose(value, ridge_outer(th, lam, val), rtol=1e-10)
    assert_close(d_lam, ridge_closed_form_hypergrad(lam, train, val))


def test_argmin_with_jaxopt_solver_and_gradient_descent():
    import jaxopt

    train, val, lam, theta0 = ridge_problem(5, 24, 3, lam_lo=0.2)
    closed = ridge_closed_form_hypergrad(lam, train, val)
    lbfgs = jaxopt.LBFGS(fun=ridge_inner, tol=1e-13, maxiter=500)
    _, d1 = jax.jit(bl.argmin_hypergrad(ridge_inner, ridge_outer, lbfgs))(theta0, lam, train, val)
    assert_close(d1, closed)
    gd = bl.gradient_descent_solver(ridge_inner, lr=0.3, maxiter=20000, tol=1e-13)
    _, d2 = jax.jit(bl.argmin_hypergrad(ridge_inner, ridge_outer, gd))(theta0, lam, train, val)
    assert_close(d2, closed)


# --------------------------------------------------------- vmap, dtype, helpers
def test_modes_vmap_over_tasks_and_keep_dtype():
    train, val, lam, theta0 = ridge_problem(7, 24, 3)
    lams = jnp.stack([lam, 2 * lam, 0.5 * lam])
    thetas = jnp.stack([theta0, -theta0, 0 * theta0])
    modes = {
        "unrolled": bl.unrolled(ridge_inner, ridge_outer, steps=3, lr=0.1),
        "one_step": bl.one_step(ridge_inner, ridge_outer, lr=0.1),
        "implicit": bl.implicit(ridge_inner, ridge_outer, maxiter=3),
        "implicit_tol_linearize": bl.implicit(ridge_inner, ridge_outer, maxiter=20, tol=1e-6, hvp_mode="linearize"),
        "argmin": bl.argmin_hypergrad(ridge_inner, ridge_outer, bl.newton_solver(ridge_inner, maxiter=2)),
    }
    for name, hg in modes.items():
        vals, ds = jax.jit(jax.vmap(hg, in_axes=(0, 0, None, None)))(thetas, lams, train, val)
        hg = jax.jit(hg)
        for i in range(3):
            v, d = hg(thetas[i], lams[i], train, val)
            np.testing.assert_allclose(vals[i], v, rtol=1e-10, err_msg=name)
            np.testing.assert_allclose(ds[i], d, rtol=1e-8, atol=1e-14, err_msg=name)
        if name not in ("unrolled", "implicit", "argmin"):
            continue
        # dtype agnostic: float32 in -> float32 out, close to the float64 result
        to32 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float32), t)
        v32, d32 = hg(to32(thetas[0]), to32(lams[0]), to32(train), to32(val))
        assert d32.dtype == jnp.float32 and v32.dtype == jnp.float32, name
        np.testing.assert_allclose(d32, hg(thetas[0], lams[0], train, val)[1], rtol=2e-3, atol=1e-5, err_msg=name)


@jax.jit
def second_derivatives(theta, lam, train, v):
    flat, unravel = ravel_pytree(theta)
    lflat, lunravel = ravel_pytree(lam)
    f = lambda x, l: mlp_inner(unravel(x), lunravel(l), train)
    H = jax.hessian(f)(flat, lflat)
    M = jax.jacobian(jax.grad(f, argnums=0), argnums=1)(flat, lflat)      # d/dlam grad_theta: (n_theta, n_lam)
    hvps = [ravel_pytree(bl.hvp(mlp_inner, theta, unravel(v), lam, train, mode=m))[0] for m in bl.derivatives.HVP_MODES]
    Hd, _ = bl.dense_hessian(mlp_inner, theta, lam, train)
    mixed = ravel_pytree(bl.mixed_vjp(mlp_inner, theta, lam, unravel(v), train))[0]
    return H, M, hvps, Hd, mixed


def test_hvp_modes_and_mixed_vjp_match_dense_derivatives():
    theta, lam, train, _ = mlp_problem(2)
    n = ravel_pytree(theta)[0].shape[0]
    v = jnp.asarray(np.random.default_rng(0).normal(size=n))
    H, M, hvps, Hd, mixed = second_derivatives(theta, lam, train, v)
    for hv in hvps:
        assert_close(hv, H @ v, rtol=1e-10)
    assert_close(Hd, H, rtol=1e-10)
    assert_close(mixed, M.T @ v, rtol=1e-10)
    with pytest.raises(ValueError, match="unknown hvp mode"):
        bl.hvp_fn(mlp_inner, theta, lam, train, mode="nope")


@settings(**SETTINGS)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 5))
def test_cg_with_tol_zero_is_exactly_k_krylov_steps(seed, k):
    """CG's k-th iterate minimises the A-norm error over span{b, Ab, ..., A^{k-1} b} (its defining property)."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    A = jnp.asarray(Q @ np.diag(np.exp(rng.uniform(0, 3, size=6))) @ Q.T)
    b = jnp.asarray(rng.normal(size=6))
    x = jax.jit(lambda A, b: bl.cg(lambda v: A @ v, b, maxiter=k, tol=0.0), )(A, b)
    K = np.stack([np.linalg.matrix_power(np.asarray(A), i) @ np.asarray(b) for i in range(k)], axis=1)
    V = np.linalg.qr(K)[0]
    x_ref = V @ np.linalg.solve(V.T @ np.asarray(A) @ V, V.T @ np.asarray(b))
    assert_close(x, jnp.asarray(x_ref), rtol=1e-8)
    # pytree input, early stopping with tol > 0 reaches the tolerance
    tree = bl.cg(lambda t: {"a": A[:3, :3] @ t["a"]}, {"a": b[:3]}, maxiter=50, tol=1e-10)
    r = np.asarray(A[:3, :3] @ tree["a"] - b[:3])
    assert np.linalg.norm(r) <= 1e-10 * np.linalg.norm(b[:3]) * 1.0001


@settings(**SETTINGS)
@given(seed=st.integers(0, 2**16), k=st.integers(0, 6), alpha_frac=st.floats(0.1, 1.0))
def test_neumann_is_exactly_k_terms_of_the_series(seed, k, alpha_frac):
    """neumann(maxiter=k) = alpha * sum_{j=0}^{k} (I - alpha A)^j b, checked with explicit matrix powers."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(5, 5)))[0]
    ev = np.exp(rng.uniform(0, 2, size=5))
    A = Q @ np.diag(ev) @ Q.T
    b = rng.normal(size=5)
    alpha = alpha_frac / ev.max()
    x = neumann_jit(k, alpha, jnp.asarray(A), jnp.asarray(b))
    M = np.eye(5) - alpha * A
    ref = alpha * sum(np.linalg.matrix_power(M, j) @ b for j in range(k + 1))
    assert_close(x, jnp.asarray(ref), rtol=1e-10)


@functools.partial(jax.jit, static_argnames=("k",))
def neumann_jit(k, alpha, A, b):
    return bl.neumann(lambda v: A @ v, b, maxiter=k, alpha=alpha)


@functools.partial(jax.jit, static_argnames=("steps",))
def unrolled_and_neumann_at_optimum(steps, lr, lam, train, val):
    solver = bl.newton_solver(logistic_inner, maxiter=50, tol=1e-13)
    theta_star = solver(jnp.zeros(train[0].shape[1], train[0].dtype), lam, train)
    _, d_unr = bl.unrolled(logistic_inner, logistic_outer, steps=steps, lr=lr)(theta_star, lam, train, val)
    _, d_neu = bl.implicit(logistic_inner, logistic_outer, solver="neumann", maxiter=steps - 1, neumann_alpha=lr)(
        theta_star, lam, train, val)
    return d_unr, d_neu


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), steps=st.sampled_from([1, 4]), lr=st.floats(0.1, 1.0))
def test_unrolled_from_optimum_equals_neumann_implicit(seed, steps, lr):
    """Started at theta*, K unrolled steps give exactly the implicit hypergradient with a (K-1)-step Neumann
    series of step lr (all Jacobians are taken at theta*): a cross-check between two independent modes."""
    train, val, lam = logistic_problem(seed, 24, 3)
    d_unr, d_neu = unrolled_and_neumann_at_optimum(steps, lr, lam, train, val)
    assert_close(d_unr, d_neu, rtol=1e-9)
