"""lambda-Opt (Chen et al., "LambdaOpt: Learn to Regularize Recommender Models in Finer Levels", KDD 2019):
MF-BPR whose fine-grained L2 weights Lambda are learned on validation data through a simulated Adam step.

Algorithm (one step; Theta = (P, Q) the MF embeddings, Lambda >= 0 of the chosen granularity)::

    train triples B_t = (u, i, j) (one uniform negative j per positive), validation triples V_t
    L_train(Theta, Lambda) = mean_B softplus(s_uj - s_ui) + Omega(Theta | Lambda),   s_ui = P_u . Q_i
    Omega(Theta | Lambda)  = mean_B sum_d (Lambda_u P_u^2 + Lambda_i Q_i^2 + Lambda_j Q_j^2)
    # fix Theta, train Lambda: simulate the optimiser's next update with the current Lambda
    Theta_bar(Lambda) = Theta_t + Adam_update(clip(grad_Theta L_train(Theta_t, Lambda; B_t)), state_t)
    Lambda <- max(0, Lambda - AMSGrad(clip(grad_Lambda mean_V softplus(s_uj - s_ui)[Theta_bar(Lambda)])))
    # fix Lambda, train Theta: the real update, the same optax transformation as the simulated one
    Theta_{t+1}, state_{t+1} = Adam step on clip(grad_Theta L_train(Theta_t, Lambda; B_t))

Granularities (``config.granularity``): ``global`` one lambda; ``d`` one per dimension shared by users and
items; ``du`` per user and dimension for users, per dimension for items; ``di`` the converse; ``dui`` per
user and dimension and per item and dimension; ``fix`` is the baseline MF-lambda-Fix (one global lambda =
``config.lam``, not learned). Lambda starts at 0.

The step is :func:`jaxrec.bilevel.alternating` with the hypergradient :func:`jaxrec.bilevel.optax_step`
(through the inner optax transformation itself, so the simulated update *is* the real one), called in the
paper's order: ``outer`` (Lambda at Theta_t) then ``inner`` (Theta with the new Lambda) on the same batch.

Data: ``k_core(config.core)``, then the per-user time-ordered split :func:`jaxrec.data.splits.time_split`.
Evaluation :func:`jaxrec.metrics.per_positive_metrics`: each held-out positive against every item the user
never interacted with; HR@50/100, NDCG@50/100, AUC. Deviations from the official code: docs/lambda_opt.md.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats

import jaxrec.bilevel as bl
from jaxrec import losses, metrics
from jaxrec.configs.lambda_opt import GRANULARITIES, LambdaOptConfig
from jaxrec.data import SEQUENCE_DATASETS, k_core, load_dataset, load_sequences, sample_negatives, to_csr
from jaxrec.data.splits import time_split
from jaxrec.method import Method
from jaxrec.methods.mf_bpr import epoch_batches
from jaxrec.models import mf

__all__ = ["LambdaOptConfig", "DATA_FIELDS", "load", "method", "init_lambda", "regulariser", "bpr",
           "train_loss", "validation_loss", "inner_tx", "outer_tx", "hypergradient", "bilevel_step", "lambda_rows", "artifacts"]

DATA_FIELDS = ("core", "small", "test_frac", "val_frac")
SYNTHETIC = {"n_users": 600, "n_items": 800, "n_clusters": 8, "mean_per_user": 40}
SMALL = {"n_users": 300, "n_items": 400, "n_clusters": 5, "mean_per_user": 30}
EPS_ROOT = 1e-16  # Adam's sqrt(nu + eps_root): finite derivative at nu = 0 (see jaxrec.bilevel.optax_step)


def load(config: LambdaOptConfig, dataset: str, data_dir, seed: int) -> dict:
    """``k_core(core)`` of ``dataset`` then its :func:`time_split` (deterministic: ``seed`` does not change
    the split). CSR ``train``, ``val``, ``test``, ``train_val``, ``all``; ``n_users``, ``n_items``."""
    if dataset == "synthetic":
        inter = load_dataset("synthetic", seed=0, **(SMALL if config.small else SYNTHETIC))
    elif dataset in SEQUENCE_DATASETS:
        inter = load_sequences(dataset, data_dir).to_interactions()  # timestamp = position in the sequence
    else:
        inter = load_dataset(dataset, data_dir)
    inter = k_core(inter, config.core)
    split = time_split(inter, config.test_frac, config.val_frac)
    shape = (inter.n_users, inter.n_items)
    train, val, test = ((to_csr(p, *shape) > 0).astype(np.float32).tocsr() for p in split)
    return {"train": train, "val": val, "test": test, "train_val": ((train + val) > 0).astype(np.float32).tocsr(),
            "all": ((train + val + test) > 0).astype(np.float32).tocsr(),
            "n_users": inter.n_users, "n_items": inter.n_items}


# ------------------------------------------------------------------------------------ the objective
def init_lambda(granularity: str, n_users: int, n_items: int, dim: int, value: float = 0.0) -> dict:
    """Lambda of ``granularity`` filled with ``value``: ``{"shared": [1] | [dim]}`` (global, d, fix) or
    ``{"user": [n_users, dim] | [dim], "item": [n_items, dim] | [dim]}`` (du, di, dui)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}")
    if granularity in ("global", "fix"):
        return {"shared": jnp.full((1,), value)}
    if granularity == "d":
        return {"shared": jnp.full((dim,), value)}
    user = (n_users, dim) if granularity in ("du", "dui") else (dim,)
    item = (n_items, dim) if granularity in ("di", "dui") else (dim,)
    return {"user": jnp.full(user, value), "item": jnp.full(item, value)}


def lambda_rows(lam: dict, side: str, idx) -> jax.Array:
    """The lambdas of rows ``idx`` of the ``side`` ("user" / "item") table: ``[B, dim]``, or a shared
    ``[dim]`` / ``[1]`` that broadcasts."""
    table = lam["shared"] if "shared" in lam else lam[side]
    return table[idx] if table.ndim == 2 else table


def _pair_rows(table: jax.Array, i, j) -> tuple:
    """``(table[i], table[j])`` with ONE gather at ``concat(i, j)`` (a shared ``[dim]`` / ``[1]`` table
    broadcasts), so that its gradient is one scatter-add. XLA's CPU scatter (with its dense zero table) is
    the costliest op of the step: separate gathers of ``Q_i``, ``Q_j`` and of the same rows in the BPR and
    in the Omega term gave 3 user + 3 item scatters per training gradient instead of 1 + 1. (Keeping the
    rows stacked as ``[2, B, dim]`` instead of slicing was 3x slower on XLA's CPU backend.)"""
    if table.ndim < 2:
        return table, table
    q = table[jnp.concatenate([i, j])]
    return q[:i.shape[0]], q[i.shape[0]:]


def _theta_rows(theta, batch) -> tuple:
    """``(P_u, Q_i, Q_j)`` of the batch, one gather per table."""
    u, i, j, _ = batch
    return (theta["user"][u], *_pair_rows(theta["item"], i, j))


def _bpr_rows(pu, qi, qj, w) -> jax.Array:
    return losses.bpr_loss(jnp.sum(pu * qi, -1), jnp.sum(pu * qj, -1), reduction="sum", weights=w) / jnp.maximum(w.sum(), 1.0)


def _omega_rows(lam, batch, pu, qi, qj) -> jax.Array:
    u, i, j, w = batch
    lu, (li, lj) = lambda_rows(lam, "user", u), _pair_rows(lam["shared"] if "shared" in lam else lam["item"], i, j)
    per = jnp.sum(lu * pu ** 2, -1) + jnp.sum(li * qi ** 2, -1) + jnp.sum(lj * qj ** 2, -1)
    return jnp.sum(w * per) / jnp.maximum(w.sum(), 1.0)


def bpr(theta, batch) -> jax.Array:
    """Weighted mean BPR loss of the batch ``(u, i, j, w)``."""
    return _bpr_rows(*_theta_rows(theta, batch), batch[3])


def regulariser(theta, lam, batch) -> jax.Array:
    """``Omega(Theta | Lambda) = mean_B sum_d (Lambda_u P_u^2 + Lambda_i Q_i^2 + Lambda_j Q_j^2)``."""
    return _omega_rows(lam, batch, *_theta_rows(theta, batch))


def train_loss(theta, lam, batch) -> jax.Array:
    """``L_train = BPR + Omega`` on a training batch (the inner loss; the rows are gathered once for both)."""
    rows = _theta_rows(theta, batch)
    return _bpr_rows(*rows, batch[3]) + _omega_rows(lam, batch, *rows)


def validation_loss(theta, lam, batch) -> jax.Array:
    """The unregularised BPR loss on a validation batch (the outer loss)."""
    return bpr(theta, batch)


def inner_tx(config: LambdaOptConfig) -> optax.GradientTransformation:
    """The MF optimiser: gradient-norm clip, then Adam (``eps_root`` > 0, see :data:`EPS_ROOT`)."""
    return optax.chain(optax.clip_by_global_norm(config.clip), optax.adam(config.lr, eps_root=EPS_ROOT))


def outer_tx(config: LambdaOptConfig) -> optax.GradientTransformation:
    """The Lambda optimiser: clip, AMSGrad, then the projection onto Lambda >= 0."""
    return optax.chain(optax.clip_by_global_norm(config.lam_clip), optax.amsgrad(config.lam_lr),
                       optax.keep_params_nonnegative())


def hypergradient(config: LambdaOptConfig):
    """``(theta, lam, train_batch, val_batch, opt_state) -> (val BPR at Theta_bar, d/dLambda)``: the
    one-step hypergradient through the MF optimiser's own next update (:func:`jaxrec.bilevel.optax_step`)."""
    return bl.optax_step(train_loss, validation_loss, inner_tx(config))


def bilevel_step(config: LambdaOptConfig) -> bl.AlternatingStep:
    """The :func:`jaxrec.bilevel.alternating` step: the simulated-Adam-step :func:`hypergradient` for the
    learned granularities, a fixed Lambda (``hypergrad=None``) for ``fix``."""
    tx = inner_tx(config)
    if config.granularity == "fix":
        return bl.alternating(train_loss, None, tx, outer_loss=validation_loss)
    return bl.alternating(train_loss, hypergradient(config), tx, outer_tx(config), hypergrad_opt_state=True)


# ------------------------------------------------------------------------------------------ method
def _val_batches(data: dict, rng: np.random.Generator, n_b: int, batch_size: int):
    """``n_b`` validation batches of ``batch_size`` triples: positives drawn uniformly (with replacement)
    from the validation pairs, one negative each outside the user's train + validation items."""
    coo = data["val"].tocoo()
    pick = rng.integers(0, coo.nnz, size=n_b * batch_size)
    u, i = coo.row[pick].astype(np.int32), coo.col[pick].astype(np.int32)
    j = sample_negatives(rng, u, data["train_val"], 1)[:, 0].astype(np.int32)
    w = np.ones(len(u), np.float32)
    return tuple(jnp.asarray(a.reshape(n_b, batch_size)) for a in (u, i, j, w))


def _stats(lam: dict) -> dict:
    return {"lam_user": jnp.mean(lam["shared"] if "shared" in lam else lam["user"]),
            "lam_item": jnp.mean(lam["shared"] if "shared" in lam else lam["item"])}


def _per_row(lam: dict, side: str, n: int) -> np.ndarray:
    """Mean over dimensions of each row's lambda on ``side`` (a shared lambda is the same for every row)."""
    table = np.asarray(lam["shared"] if "shared" in lam else lam[side])
    return table.mean(-1) if table.ndim == 2 else np.full(n, table.mean())


def method(config: LambdaOptConfig, data: dict) -> Method:
    """lambda-Opt (or MF-lambda-Fix) on ``data`` (from :func:`load`) as a :class:`jaxrec.method.Method`."""
    if config.granularity not in GRANULARITIES:
        raise ValueError(f"granularity {config.granularity!r}: use one of {', '.join(GRANULARITIES)}")
    n_users, n_items = data["n_users"], data["n_items"]
    step_fn = bilevel_step(config)
    batch_size = min(config.batch_size, data["train"].nnz)
    freq_user = np.asarray(data["train"].sum(1)).ravel()
    freq_item = np.asarray(data["train"].sum(0)).ravel()

    def init(key):
        theta = mf.init(key, n_users, n_items, config.dim, config.init_scale)
        lam = init_lambda(config.granularity, n_users, n_items, config.dim,
                          config.lam if config.granularity == "fix" else 0.0)
        return step_fn.init(theta, lam)

    def batches(seed, epoch):
        train = epoch_batches(data["train"], seed, epoch, batch_size)
        val = _val_batches(data, np.random.default_rng((seed, epoch, 1)), train[0].shape[0], batch_size)
        return train, val

    def step(state, batch, key):
        train_b, val_b = batch
        state, val_loss = step_fn.outer(state, train_b, val_b)  # fix Theta, train Lambda (simulated step)
        state, loss, _ = step_fn.inner(state, train_b)  # fix Lambda, train Theta (the real step)
        return state._replace(step=state.step + 1), {"loss": loss, "val_loss": val_loss, **_stats(state.lam)}

    score = jax.jit(lambda theta, u: mf.score_all(theta, u))

    def evaluate(state, part):
        target = data["val"] if part == "val" else data["test"]
        return metrics.per_positive_metrics(lambda u: score(state.theta, u), target, data["all"], ks=config.ks)

    def summary(state):
        lu, li = _per_row(state.lam, "user", n_users), _per_row(state.lam, "item", n_items)
        out = {k: float(v) for k, v in _stats(state.lam).items()}
        for side, lam_rows, freq in (("user", lu, freq_user), ("item", li, freq_item)):
            rho = scipy.stats.spearmanr(freq, lam_rows).statistic if np.ptp(lam_rows) > 0 else float("nan")
            out[f"spearman_{side}"] = float(rho)
            edges = np.unique(np.quantile(freq, np.linspace(0, 1, 6)))
            bins = np.clip(np.searchsorted(edges, freq, side="right") - 1, 0, len(edges) - 2)
            out[f"bins_{side}"] = [[float(edges[b]), float(edges[b + 1]), float(lam_rows[bins == b].mean())]
                                   for b in range(len(edges) - 1) if (bins == b).any()]
        return out

    return Method(init=init, batches=batches, step=step, evaluate=evaluate, summary=summary)


def artifacts(config: LambdaOptConfig, data: dict, state) -> dict:
    """The per-row mean lambdas of the best state and the training frequencies (``<stem>.lambda.npz``)."""
    return {"lambda": {"user": _per_row(state.lam, "user", data["n_users"]),
                       "item": _per_row(state.lam, "item", data["n_items"]),
                       "user_freq": np.asarray(data["train"].sum(1)).ravel(),
                       "item_freq": np.asarray(data["train"].sum(0)).ravel()}}


def most_popular(data: dict, ks=(50, 100)) -> dict:
    """Training popularity ranked with the same per-positive protocol (a sanity floor)."""
    pop = jnp.asarray(np.asarray(data["train"].sum(0)).ravel(), jnp.float32)
    fn = lambda u: jnp.broadcast_to(pop, (u.shape[0], pop.shape[0]))  # noqa: E731
    return {"val": metrics.per_positive_metrics(fn, data["val"], data["all"], ks=ks),
            "test": metrics.per_positive_metrics(fn, data["test"], data["all"], ks=ks)}


