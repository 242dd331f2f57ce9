"""PAML, AT-PAML, REG-PAML (Yu et al., "Personalized Adaptive Meta Learning for Cold-start User Preference
Prediction", AAAI 2021) with MeLU (Lee et al., KDD 2019), Meta-SGD and transfer learning, as settings of one
method (``config.name``) on MeLU's model (:mod:`jaxrec.models.melu`).

Algorithm (one meta-step over a batch of B = 32 meta-train users, ``jax.vmap`` over the users)::

    for each user i of the batch (support S_i, query Q_i, user fields u_i):
        h_i   = [emb(u_i,1), ..., emb(u_i,4)]                       # user embedding (concatenation)
        alpha_i = 1e-5                                                # MeLU (fixed)
                = the per-parameter rates a                           # Meta-SGD (learned, shared)
                = 1e-3 * sigmoid(FC(ReLU(FC(ReLU(FC(h_i))))))         # PAML / REG-PAML, widths 64, 32, 1
                = PAML's alpha(h_i) + alpha~_i                        # AT-PAML, after the warm-up epoch:
                  N_i = the K nearest memory keys to h_i (K = 20; 5 at test time)
                  s_k = exp(-delta |h_i - h_k|^2),  alpha~_i = sum_k s_k alpha_k / (sum_k s_k + 1e-5)
        phi_i = adapt(theta_dec, S_i, alpha_i, steps=1)               # phi <- phi - alpha_i grad L_S(phi),
                                                                      # decision layers only, second order
        l_i   = L_Q(phi_i)                                            # query MSE after adaptation
              + gamma * |grad_theta_dec L_S(theta_dec)|^2 * |alpha(h_i)|   # REG-PAML only
    (theta, rate net, memory keys/values) <- Adam(outer_lr) step on grad mean_i l_i
    AT-PAML: write (h_i, alpha(h_i)) of every user into the least-recently-used slots (reads count as use)

    Transfer learning: the step is supervised MSE on S_i + Q_i without adaptation (pooled training);
    evaluation fine-tunes on the support set like MeLU.

Evaluation: every validation / test user is adapted on its support set with its rate, then its query items
are predicted: per-user MSE, nDCG@3 / @5 (gain 2^r - 1, discount log2(1 + rank)), averaged over users;
also the MSE of major and minor users (:func:`jaxrec.data.major_users`) and the two-tailed t-test between
their per-user MSEs (``scipy.stats.ttest_ind``). ``neg_mse`` (= -MSE) is the selection metric.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

from jaxrec import bilevel as bl
from jaxrec.configs.paml import VARIANTS, PAMLConfig, widths
from jaxrec.data import cold_start_split, load_ml100k, load_ml1m_melu_all, major_users, model_features
from jaxrec.data.coldstart import synthetic_ratings
from jaxrec.method import Method
from jaxrec.models import melu

__all__ = ["PAMLConfig", "VARIANTS", "DATA_FIELDS", "PAMLState", "load", "method", "make_objective",
           "memory_read", "memory_write", "ndcg_at_k", "rate_net", "epoch_batches", "evaluator"]

DATA_FIELDS = ("cold_frac", "min_ratings", "support_frac", "small")
TASK_KEYS = ("user", "s_item", "s_rating", "s_mask", "q_item", "q_rating", "q_mask")
SMALL = {"n_users": 200, "n_items": 150}


class PAMLState(NamedTuple):
    """``params``: {"emb", "dec", "rate", "memory": {"keys", "values"}}; ``used``: int32[M] step of each
    memory slot's last read or write (-1 = empty); ``step``: meta-steps taken."""

    params: dict
    opt: Any
    used: jax.Array
    step: jax.Array


# ------------------------------------------------------------------------------------------------ data
def _tasks(t) -> dict:
    return {"user": t.task_user, "s_item": t.support_item, "s_rating": t.support_rating, "s_mask": t.support_mask,
            "q_item": t.query_item, "q_rating": t.query_rating, "q_mask": t.query_mask}


def load(config: PAMLConfig, dataset: str, data_dir, seed: int) -> dict:
    """The PAML protocol (:func:`jaxrec.data.cold_start_split`) on ``dataset`` seeded by ``seed``: task
    arrays per part, the encoders' categorical inputs ``ux`` / ``ix``, vocabulary sizes, the major flag and
    rating count of every user of each part, and the split's counts."""
    if dataset == "synthetic":
        inter = synthetic_ratings(**(SMALL if config.small else {}), seed=0)
    elif dataset == "ml-100k":
        inter = load_ml100k(data_dir)
    elif dataset == "ml-1m-melu":
        inter = load_ml1m_melu_all(data_dir)
    else:
        raise ValueError(f"paml: no cold-start protocol for dataset {dataset!r}")
    feats = model_features(inter)
    split = cold_start_split(inter, cold_frac=config.cold_frac, min_ratings=config.min_ratings,
                             support_frac=config.support_frac, valid_user=feats["valid_user"], seed=seed)
    users = np.concatenate([split[p].task_user for p in ("train", "val", "test")])
    major = dict(zip(users.tolist(), major_users(feats["user"], users).tolist()))
    counts = np.bincount(inter.user, minlength=inter.n_users)
    out = {"ux": np.stack(list(feats["user"].values()), 1).astype(np.int32),
           "ix": tuple(feats["item"].values()), "counts": split["counts"],
           "user_vocab": tuple(int(c.max()) + 1 for c in feats["user"].values()),
           "item_vocab": tuple(max(int(c.max()) + 1, 1) for c in feats["item"].values())}
    for p in ("train", "val", "test"):
        out[p] = _tasks(split[p])
        out[f"{p}_major"] = np.array([major[u] for u in split[p].task_user], bool)
        out[f"{p}_n_ratings"] = counts[split[p].task_user]
    return out


def epoch_batches(tasks: dict, seed: int, epoch: int, batch_size: int) -> dict:
    """One epoch's shuffled meta-batches: every task array as ``[n_batches, batch_size, ...]`` plus ``w``
    (0 on the padding of the last batch); ``numpy.random.default_rng((seed, epoch))`` (resume-safe)."""
    n = len(tasks["user"])
    perm = np.random.default_rng((seed, epoch)).permutation(n)
    n_b = -(-n // batch_size)
    pad = n_b * batch_size - n
    idx = np.concatenate([perm, np.zeros(pad, np.int64)])
    out = {k: jnp.asarray(v[idx].reshape(n_b, batch_size, *v.shape[1:])) for k, v in tasks.items()}
    out["w"] = jnp.asarray(np.concatenate([np.ones(n), np.zeros(pad)]).reshape(n_b, batch_size), jnp.float32)
    return out


# --------------------------------------------------------------------------------------------- pieces
def rate_net(layers: list, h: jax.Array, scale: float) -> jax.Array:
    """PAML's ``alpha(h) = scale * sigmoid(FC(ReLU(FC(ReLU(FC(h))))))`` (a 0-d rate)."""
    return scale * jax.nn.sigmoid(melu.decide(layers, h))


def memory_read(keys, values, filled, q, k: int, delta: float):
    """AT-PAML's ``alpha~`` of query ``q``: the ``k`` nearest filled keys (exact top-k on squared distance),
    ``s = exp(-delta d^2)`` (0 for empty slots), ``alpha~ = sum s v / (sum s + 1e-5)``. Returns
    ``(alpha~, s [k], slots [k])``."""
    d2 = jnp.sum((keys - q) ** 2, -1)
    k = min(int(k), keys.shape[0])
    _, slots = jax.lax.top_k(-jnp.where(filled, d2, jnp.inf), k)
    s = jnp.where(filled[slots], jnp.exp(-delta * d2[slots]), 0.0)
    return jnp.sum(s * values[slots]) / (jnp.sum(s) + 1e-5), s, slots


def memory_write(keys, values, used, new_keys, new_values, mask, t):
    """Write the ``mask``-ed rows of ``(new_keys, new_values)`` into the least-recently-used slots (smallest
    ``used``; empty slots are -1) and stamp them with step ``t``. Returns ``(keys, values, used)``."""
    b = min(new_keys.shape[0], keys.shape[0])
    _, slots = jax.lax.top_k(-used, b)
    mask = mask[:b]
    keys = keys.at[slots].set(jnp.where(mask[:, None], new_keys[:b], keys[slots]))
    values = values.at[slots].set(jnp.where(mask, new_values[:b], values[slots]))
    used = used.at[slots].set(jnp.where(mask, t, used[slots]))
    return keys, values, used


def _normalise(h):
    return h / (jnp.linalg.norm(h) + 1e-12)


def ndcg_at_k(pred, rating, mask, k: int):
    """nDCG@k of the masked items ranked by ``pred`` (gain ``2^r - 1``, discount ``log2(1 + rank)``); a
    user with fewer than k items is scored on the items it has."""
    n = pred.shape[-1]
    disc = 1.0 / jnp.log2(jnp.arange(2, n + 2, dtype=pred.dtype))
    topk = (jnp.arange(n) < k) * disc
    gain = jnp.where(mask, 2.0 ** rating - 1.0, 0.0)
    by_pred = jnp.take_along_axis(gain, jnp.argsort(jnp.where(mask, -pred, jnp.inf), stable=True), -1)
    ideal = -jnp.sort(-gain, -1)
    return jnp.sum(by_pred * topk, -1) / jnp.maximum(jnp.sum(ideal * topk, -1), 1e-12)


def _adapt(loss, dec, support, lr, steps: int, first_order: bool = False):
    """The inner loop ``phi = jaxrec.bilevel.adapt(loss, dec, support, lr, steps)`` written as ``phi = dec +
    delta``: returns ``(delta, g)`` with ``g = grad loss(dec, support)`` (the first step's gradient, un-stopped;
    REG-PAML's term). ``loss(dec, support, delta)`` evaluates the layers ``dec + delta``.

    Same math as ``adapt`` on ``dec``; the form is for speed under ``jax.vmap`` over users (issue 28): the
    first step is taken outside ``adapt``'s ``lax.scan`` (a scan's carry is batched from the start, so the
    first support forward and gradient would run on a per-user copy of ``dec``), and the per-user update
    ``delta`` is kept apart from the shared ``dec`` (:func:`jaxrec.models.melu.decide_pair`), so that the
    meta-gradient of ``dec`` is plain matmuls over all users' rows rather than a sum over per-user copies
    of the weights (XLA CPU's reduction of a [32, 256, 320] tensor over its first axis was ~60 ms)."""
    g = jax.grad(loss)(dec, support)
    if steps < 1:
        return jax.tree_util.tree_map(jnp.zeros_like, dec), g
    delta = bl.tree_sgd_step(jax.tree_util.tree_map(jnp.zeros_like, g), jax.lax.stop_gradient(g) if first_order else g, lr)
    if steps > 1:
        delta = bl.adapt(lambda d, s: loss(dec, s, d), delta, support, lr, steps - 1, first_order=first_order)
    return delta, g


def _mse(pred, r, m):
    return jnp.sum(jnp.where(m, (pred - r) ** 2, 0.0)) / jnp.maximum(jnp.sum(m), 1)


# ------------------------------------------------------------------------------------------- objective
def make_objective(config: PAMLConfig, ux, ix):
    """``(task_loss, objective, adapted)`` of ``config``'s family member on the encoders' inputs ``ux`` /
    ``ix``:

    - ``task_loss(params, filled, task, read, k) -> (l_i, aux)``: one user's term of the algorithm box;
    - ``objective(params, filled, batch, read, k) -> (weighted mean of l_i over the batch, aux means)``,
      ``jax.vmap`` of ``task_loss`` over the users;
    - ``adapted(params, filled, task, k) -> (query predictions, rate)``: a user's predictions after
      adaptation (evaluation)."""
    name, ux, ix = config.name, jnp.asarray(ux), tuple(jnp.asarray(a) for a in ix)

    def inputs(emb, task):
        """(h, support item embeddings, query item embeddings); the model's input row of item j is [h, e_j]."""
        h = melu.user_embedding(emb, ux[task["user"]])
        feats = lambda items: melu.item_embedding(emb, tuple(a[items] for a in ix))  # noqa: E731
        return h, feats(task["s_item"]), feats(task["q_item"])

    def support_loss(dec, support, delta=None):
        h, e, r, m = support
        return _mse(melu.decide_pair(dec, h, e, delta), r, m)

    def rate(params, filled, h, read, k):
        """(inner rate, alpha(h), alpha~, sum of the kernel weights)."""
        zero = jnp.zeros((), h.dtype)
        if name in ("melu", "transfer"):
            return config.inner_lr, zero, zero, zero
        if name == "meta_sgd":
            return params["rate"], zero, zero, zero
        alpha = rate_net(params["rate"], h, config.rate_scale)
        if name != "at_paml":
            return alpha, alpha, zero, zero
        mem = params["memory"]
        q = _normalise(h) if config.memory_normalize else h  # the memory's keys are the same transform of h
        tilde, s, _ = memory_read(mem["keys"], mem["values"], filled, q, k, config.delta)
        tilde, ssum = jnp.where(read, tilde, 0.0), jnp.where(read, jnp.sum(s), 0.0)
        return alpha + tilde, alpha, tilde, ssum

    def split(tree, h):  # the decision layers (or a pytree like them) in decide_pair's form
        return melu.split_first(tree, h.shape[-1]) if isinstance(tree, list) else tree

    def task_loss(params, filled, task, read, k):
        h, es, eq = inputs(params["emb"], task)
        dec = split(params["dec"], h)
        support = (h, es, task["s_rating"], task["s_mask"])
        lr, alpha, tilde, ssum = rate(params, filled, h, read, k)
        if name == "transfer":  # pooled supervised training, no adaptation
            both = jnp.concatenate([es, eq]), jnp.concatenate([task["s_rating"], task["q_rating"]])
            lq = _mse(melu.decide_pair(dec, h, both[0]), both[1], jnp.concatenate([task["s_mask"], task["q_mask"]]))
            return lq, {"query_mse": lq, "alpha": alpha, "alpha_tilde": tilde, "kernel_sum": ssum, "reg": lq * 0}
        delta, g = _adapt(support_loss, dec, support, split(lr, h), config.inner_steps, config.first_order)
        lq = _mse(melu.decide_pair(dec, h, eq, delta), task["q_rating"], task["q_mask"])
        reg = jnp.zeros_like(lq)
        if name == "reg_paml":  # g = grad_theta L_S(theta_dec), the first inner step's gradient
            reg = bl.tree_vdot(g, g) * jnp.abs(alpha)
        return lq + config.gamma * reg, {"query_mse": lq, "alpha": alpha, "alpha_tilde": tilde,
                                         "kernel_sum": ssum, "reg": reg}

    def objective(params, filled, batch, read, k):
        w = batch["w"]
        task = {key: batch[key] for key in TASK_KEYS}
        losses, aux = jax.vmap(task_loss, in_axes=(None, None, 0, None, None))(params, filled, task, read, k)
        wsum = jnp.maximum(w.sum(), 1.0)
        return jnp.sum(w * losses) / wsum, jax.tree_util.tree_map(lambda a: jnp.sum(w * a) / wsum, aux)

    def adapted(params, filled, task, k):
        h, es, eq = inputs(params["emb"], task)
        lr, alpha, tilde, _ = rate(params, filled, h, True, k)
        if name == "transfer":
            lr = config.inner_lr
        dec = split(params["dec"], h)
        delta, _ = _adapt(support_loss, dec, (h, es, task["s_rating"], task["s_mask"]), split(lr, h), config.inner_steps)
        if name in ("paml", "at_paml", "reg_paml"):
            shown = alpha + tilde
        elif name == "meta_sgd":
            shown = jnp.mean(jnp.stack([jnp.mean(x) for x in jax.tree_util.tree_leaves(lr)]))
        else:
            shown = jnp.asarray(lr)
        return melu.decide_pair(dec, h, eq, delta), shown

    return task_loss, objective, adapted


# ---------------------------------------------------------------------------------------------- method
def method(config: PAMLConfig, data: dict) -> Method:
    """``config.name``'s member of the family on ``data`` (from :func:`load`) as a :class:`Method`."""
    n_train = len(data["train"]["user"])
    steps_per_epoch = -(-n_train // config.batch_size)
    at = config.name == "at_paml"
    warm_steps = steps_per_epoch * config.warmup_epochs if at else 0
    lr = (optax.piecewise_constant_schedule(config.warmup_lr, {warm_steps: config.outer_lr / config.warmup_lr})
          if at and warm_steps > 0 else config.outer_lr)
    tx = optax.adam(lr)
    _, objective, _ = make_objective(config, data["ux"], data["ix"])
    ux = jnp.asarray(data["ux"])
    h_dim = config.emb_dim * len(data["user_vocab"])
    tr = data["train"]
    mean_rating = float(np.concatenate([tr["s_rating"][tr["s_mask"]], tr["q_rating"][tr["q_mask"]]]).mean())
    m_size = config.memory_size if at else 1

    def init(key):
        k_model, k_rate = jax.random.split(key)
        emb, dec = melu.init(k_model, data["user_vocab"], data["item_vocab"], config.emb_dim, widths(config.hidden))
        dec[-1] = (dec[-1][0], dec[-1][1] + mean_rating)  # output bias = mean meta-train rating (docs/paml.md)
        if config.name == "meta_sgd":
            rate = jax.tree_util.tree_map(lambda p: jnp.full_like(p, config.inner_lr), dec)
        elif config.name in ("paml", "at_paml", "reg_paml"):
            rate = melu.mlp_init(k_rate, (h_dim, *widths(config.rate_hidden), 1))
        else:
            rate = []
        params = {"emb": emb, "dec": dec, "rate": rate,
                  "memory": {"keys": jnp.zeros((m_size, h_dim)), "values": jnp.zeros((m_size,))}}
        return PAMLState(params, tx.init(params), -jnp.ones((m_size,), jnp.int32), jnp.zeros((), jnp.int32))

    def step(state, batch, key):
        read = state.step >= warm_steps
        (loss, aux), g = jax.value_and_grad(objective, has_aux=True)(state.params, state.used >= 0, batch, read,
                                                                     config.k_train)
        updates, opt = tx.update(g, state.opt, state.params)
        params, used = optax.apply_updates(state.params, updates), state.used
        if at:  # AT-PAML: reads of this step count as use, then (h_i, alpha(h_i)) go to the LRU slots
            hs, keys_new = jax.vmap(lambda u: _memory_query(config, state.params["emb"], ux[u]))(batch["user"])
            alphas = jax.vmap(lambda h: rate_net(state.params["rate"], h, config.rate_scale))(hs)
            mem = state.params["memory"]
            _, _, slots = jax.vmap(lambda q: memory_read(mem["keys"], mem["values"], state.used >= 0, q,
                                                         config.k_train, config.delta))(keys_new)
            used = used.at[slots.reshape(-1)].max(jnp.where(read, state.step, -1))
            keys, values, used = memory_write(params["memory"]["keys"], params["memory"]["values"], used,
                                              keys_new, alphas, batch["w"] > 0, state.step)
            params = {**params, "memory": {"keys": keys, "values": values}}
        return PAMLState(params, opt, used, state.step + 1), {"loss": loss, **aux}

    per_user = evaluator(config, data)

    def evaluate(state, part):
        mse, n3, n5, rate = per_user(state, part)
        major = data[f"{part}_major"]
        out = {"mse": float(mse.mean()), "neg_mse": -float(mse.mean()), "ndcg@3": float(n3.mean()),
               "ndcg@5": float(n5.mean()), "rate_mean": float(rate.mean()), "major_frac": float(major.mean())}
        if major.any() and (~major).any():
            p = stats.ttest_ind(mse[major], mse[~major]).pvalue if major.sum() > 1 and (~major).sum() > 1 else np.nan
            out.update({"mse_major": float(mse[major].mean()), "mse_minor": float(mse[~major].mean()),
                        "p_major_minor": float(p)})
        return out

    def summary(state):
        out = {"steps": int(state.step), "split_counts": data["counts"]}
        if at:
            filled = np.asarray(state.used) >= 0
            vals = np.asarray(state.params["memory"]["values"])[filled]
            out.update({"memory_filled": int(filled.sum()), "memory_value_mean": float(vals.mean()) if vals.size else 0.0})
        return out

    return Method(init=init, batches=lambda seed, epoch: epoch_batches(data["train"], seed, epoch, config.batch_size),
                  step=step, evaluate=evaluate, summary=summary)


def evaluator(config: PAMLConfig, data: dict):
    """``per_user(state, part) -> (mse, ndcg@3, ndcg@5, rate)``: per-user arrays of ``part`` ("val" /
    "test") after adapting every user on its support set (one jitted, vmapped block of ``eval_batch``
    users at a time); ``rate`` is the inner rate the user got (Meta-SGD: the mean of its rates)."""
    _, _, adapted = make_objective(config, data["ux"], data["ix"])
    blocks = {p: _blocks(data[p], config.eval_batch) for p in ("val", "test")}

    @jax.jit
    def eval_block(state, block):
        task = {k: block[k] for k in TASK_KEYS}
        pred, rate = jax.vmap(lambda t: adapted(state.params, state.used >= 0, t, config.k_test))(task)
        r, m = task["q_rating"], task["q_mask"]
        mse = jnp.sum(jnp.where(m, (pred - r) ** 2, 0.0), -1) / jnp.maximum(m.sum(-1), 1)
        return mse, ndcg_at_k(pred, r, m, 3), ndcg_at_k(pred, r, m, 5), rate

    def per_user(state, part):
        outs = [eval_block(state, b) for b in blocks[part]]
        n = len(data[part]["user"])
        return tuple(np.concatenate([np.asarray(o[j]) for o in outs])[:n] for j in range(4))

    return per_user


def _memory_query(config, emb, ux_row):
    h = melu.user_embedding(emb, ux_row)
    return h, (_normalise(h) if config.memory_normalize else h)


def _blocks(tasks: dict, size: int) -> list:
    n = len(tasks["user"])
    size = min(size, n)
    n_b = -(-n // size)
    idx = np.concatenate([np.arange(n), np.zeros(n_b * size - n, np.int64)])
    return [{k: jnp.asarray(v[idx[b * size:(b + 1) * size]]) for k, v in tasks.items()} for b in range(n_b)]
