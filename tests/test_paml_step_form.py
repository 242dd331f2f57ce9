"""The fast form of the PAML family's meta-step (issue 28, Speed) is the same math as the plain one: the
decision MLP on ``[h, e_j]`` with the first layer split (``melu.decide_pair``) and the inner loop as shared
layers plus a per-user update (``paml._adapt``) give the same query loss, REG-PAML term, meta-gradient and
evaluation predictions as ``jaxrec.bilevel.adapt`` on the concatenated input (float64); and the vmapped
meta-gradient never sums a per-user copy of a decision weight over the users (the slow path on CPU)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import bilevel as bl
from jaxrec.methods import paml
from jaxrec.models import melu
from paml_cases import setup, tiny_data


@pytest.fixture(scope="module")
def data():
    return tiny_data()


def _setup(name, data, **kw):
    """Two hidden layers here (the split first layer feeds a second one)."""
    return setup(name, data, **{"hidden": "4,3", **kw})


def _mse(pred, r, m):
    return jnp.sum(jnp.where(m, (pred - r) ** 2, 0.0)) / jnp.maximum(jnp.sum(m), 1)


def _reference(cfg, data):
    """One user's training term and evaluation prediction written the plain way: concatenated input rows,
    ``melu.decide``, ``jaxrec.bilevel.adapt`` on the decision layers (MeLU, Meta-SGD, PAML, REG-PAML)."""
    ux, ix = jnp.asarray(data["ux"]), tuple(jnp.asarray(a) for a in data["ix"])

    def rows(emb, task, items):
        h = melu.user_embedding(emb, ux[task["user"]])
        e = melu.item_embedding(emb, tuple(a[items] for a in ix))
        return h, jnp.concatenate([jnp.broadcast_to(h, (e.shape[0], h.shape[0])), e], -1)

    def loss(dec, s):
        return _mse(melu.decide(dec, s[0]), s[1], s[2])

    def parts(params, task):
        h, xs = rows(params["emb"], task, task["s_item"])
        _, xq = rows(params["emb"], task, task["q_item"])
        support = (xs, task["s_rating"], task["s_mask"])
        if cfg.name == "melu":
            lr = alpha = cfg.inner_lr
        elif cfg.name == "meta_sgd":
            lr = alpha = params["rate"]
        else:
            lr = alpha = paml.rate_net(params["rate"], h, cfg.rate_scale)
        phi = bl.adapt(loss, params["dec"], support, lr, cfg.inner_steps, first_order=cfg.first_order)
        return support, xq, phi, alpha

    def task_loss(params, task):
        support, xq, phi, alpha = parts(params, task)
        lq = _mse(melu.decide(phi, xq), task["q_rating"], task["q_mask"])
        if cfg.name == "reg_paml":
            g = jax.grad(loss)(params["dec"], support)
            lq = lq + cfg.gamma * bl.tree_vdot(g, g) * jnp.abs(alpha)
        return lq

    def predict(params, task):
        _, xq, phi, _ = parts(params, task)
        return melu.decide(phi, xq)

    return task_loss, predict


@pytest.mark.usefixtures("x64")
# one step (MeLU, first-order REG-PAML) and two (the rest) between them cover every member and both orders
@pytest.mark.parametrize("name,steps,first_order", [("melu", 1, False), ("meta_sgd", 2, False), ("paml", 2, False),
                                                    ("reg_paml", 2, False), ("reg_paml", 1, True)])
def test_fast_form_equals_adapt_on_concatenated_input(data, name, steps, first_order):
    cfg, _, state, batch = _setup(name, data, inner_steps=steps, first_order=first_order, gamma=0.3)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), state.params)
    filled = state.used >= 0
    task_loss, _, adapted = paml.make_objective(cfg, data["ux"], data["ix"])
    ref_loss, ref_predict = _reference(cfg, data)
    # one jitted function per side, compiled once per case (every task has the same shapes): the checks per
    # task are the same as eager ones
    vg = jax.value_and_grad(lambda p, t: task_loss(p, filled, t, True, cfg.k_train)[0])
    ours = jax.jit(lambda p, t: (vg(p, t), adapted(p, filled, t, cfg.k_test)[0]))
    ref = jax.jit(lambda p, t: (jax.value_and_grad(ref_loss)(p, t), ref_predict(p, t)))
    for i in range(batch["w"].shape[0]):
        task = {k: batch[k][i] for k in paml.TASK_KEYS}
        ((got, g), pred), ((want, g_ref), pred_ref) = ours(params, task), ref(params, task)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-12)
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(np.asarray(pred), np.asarray(pred_ref), rtol=1e-12, atol=1e-13)


def test_decide_pair_equals_decide_on_concatenated_rows():
    keys = jax.random.split(jax.random.PRNGKey(3), 5)
    layers = melu.mlp_init(keys[0], (5, 4, 3, 1))
    deltas = melu.mlp_init(keys[1], (5, 4, 3, 1))
    deltas = [(w, b + 0.1) for w, b in deltas]
    h, e = jax.random.normal(keys[2], (2,)), jax.random.normal(keys[3], (6, 3))
    x = jnp.concatenate([jnp.broadcast_to(h, (6, 2)), e], -1)
    np.testing.assert_allclose(np.asarray(melu.decide_pair(melu.split_first(layers, 2), h, e)),
                               np.asarray(melu.decide(layers, x)), rtol=1e-5, atol=1e-6)
    summed = [(w + dw, b + db) for (w, b), (dw, db) in zip(layers, deltas)]
    got = melu.decide_pair(melu.split_first(layers, 2), h, e, melu.split_first(deltas, 2))
    np.testing.assert_allclose(np.asarray(got), np.asarray(melu.decide(summed, x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["melu", "paml"])
def test_meta_gradient_sums_no_per_user_weight_copy(data, name):
    """In the lowered meta-gradient of the vmapped objective, no reduction over the users' axis has an
    operand shaped like a per-user copy of a decision weight ([B, *W.shape]): the sum over users of per-user
    weight cotangents (XLA CPU took ~60 ms for one [32, 256, 320] such sum) must not come back. (Meta-SGD's
    per-parameter rates do need one: their gradient is the sum over users of ``-g_i * d delta_i``.)"""
    cfg, _, state, batch = _setup(name, data)
    _, objective, _ = paml.make_objective(cfg, data["ux"], data["ix"])
    filled = state.used >= 0
    text = jax.jit(jax.grad(lambda p: objective(p, filled, batch, True, cfg.k_train)[0])).lower(state.params).as_text()
    b = batch["w"].shape[0]
    for w, _ in state.params["dec"]:
        if w.shape[-1] == 1:  # the output layer's [B, d, 1] is the size of an activation, not a concern
            continue
        shape = "x".join(str(n) for n in (b, *w.shape))
        bad = [ln for ln in text.splitlines()
               if "reduce" in ln and "dimensions = [0]" in ln and re.search(rf"\(tensor<{shape}xf(32|64)>", ln)]
        assert not bad, f"a sum over users of a per-user [{shape}] weight copy: {bad[0][:200]}"
