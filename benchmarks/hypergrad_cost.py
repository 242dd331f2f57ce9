"""Wall-time cost of each hypergradient mode relative to one plain training gradient (MF-BPR).

Problem: matrix factorisation with the BPR loss on the synthetic implicit data of
``jaxrec.data.synthetic.implicit_clusters`` (default 1000 users x 1500 items, ~50k pairs), embedding size 64
(theta = user and item embeddings, ~1.6e5 parameters). The hyperparameters ``lam`` are per-user and per-item
log L2 weights (adaptive regularisation):

    L_in(theta, lam, B)  = mean_{(u,i,j) in B} softplus(s_uj - s_ui) + mean_B [exp(lam_u) |P_u|^2 + exp(lam_i) |Q_i|^2 + exp(lam_j) |Q_j|^2] / 2
    L_out(theta, lam, B') = mean_{(u,i,j) in B'} softplus(s_uj - s_ui)          (held-out pairs)

with ``s_ui = <P_u, Q_i>``; train and validation batches of ``--batch`` triples with sampled negatives.
Each mode is jitted, run once to compile, then timed ``--repeats`` times (``block_until_ready``); the
table reports the median time and its ratio to the median time of ``jax.grad(L_in)`` (one training
gradient), the inter-quartile range of the per-repeat time over that median, and the ratio of the minimum
times (least sensitive to other processes on a shared machine). All modes are timed in the same process, interleaved round-robin so that load changes on a
shared machine affect them alike.

A second, small table reports each mode's accuracy against the exact hypergradient on a float64
L2-logistic regression (:func:`accuracy`).

Run:  python -m benchmarks.hypergrad_cost [--repeats 40] [--dim 64] [--batch 4096]
Writes results/hypergrad_cost/synthetic/<name>.json through jaxrec.results.save_result.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxrec.bilevel as bl


@dataclasses.dataclass
class Config:
    n_users: int = 1000
    n_items: int = 1500
    dim: int = 64
    batch: int = 4096
    repeats: int = 30
    lr: float = 0.05
    seed: int = 0
    hvp_mode: str = "fwd_rev"


def make_data(cfg: Config):
    """Seeded train/validation BPR triples from the synthetic implicit data (or a random fallback)."""
    rng = np.random.default_rng(cfg.seed)
    try:
        from jaxrec.data import synthetic

        inter = synthetic.implicit_clusters(n_users=cfg.n_users, n_items=cfg.n_items, seed=cfg.seed)
        users, items, source = np.asarray(inter.user), np.asarray(inter.item), "jaxrec.data.synthetic.implicit_clusters"
    except ImportError:  # data layer not available: seeded uniform interactions
        n = 50 * cfg.n_users
        users, items = rng.integers(0, cfg.n_users, n), rng.integers(0, cfg.n_items, n)
        source = "seeded uniform random interactions"

    def triples():
        idx = rng.integers(0, len(users), cfg.batch)
        neg = rng.integers(0, cfg.n_items, cfg.batch)     # uniform negatives (collisions are rare and harmless here)
        return {"u": jnp.asarray(users[idx], jnp.int32), "i": jnp.asarray(items[idx], jnp.int32),
                "j": jnp.asarray(neg, jnp.int32)}

    return triples(), triples(), source


def bpr(theta, b):
    p = theta["P"][b["u"]]
    s_pos = jnp.sum(p * theta["Q"][b["i"]], -1)
    s_neg = jnp.sum(p * theta["Q"][b["j"]], -1)
    return jnp.mean(jax.nn.softplus(s_neg - s_pos))


def inner_loss(theta, lam, b):
    """BPR + per-user / per-item L2 with weights exp(lam) on the batch rows."""
    reg = (jnp.exp(lam["user"][b["u"]]) * jnp.sum(theta["P"][b["u"]] ** 2, -1)
           + jnp.exp(lam["item"][b["i"]]) * jnp.sum(theta["Q"][b["i"]] ** 2, -1)
           + jnp.exp(lam["item"][b["j"]]) * jnp.sum(theta["Q"][b["j"]] ** 2, -1))
    return bpr(theta, b) + 0.5 * jnp.mean(reg)


def outer_loss(theta, lam, b):
    return bpr(theta, b)


def modes(cfg: Config):
    """Name -> function (theta, lam, inner_batch, outer_batch) -> output; 'grad' is the baseline."""
    out = {"train grad": lambda th, lm, bi, bo: jax.grad(inner_loss)(th, lm, bi)}
    for k in range(1, 6):
        out[f"unrolled K={k}"] = bl.unrolled(inner_loss, outer_loss, steps=k, lr=cfg.lr)
    out["unrolled K=5 ckpt"] = bl.unrolled(inner_loss, outer_loss, steps=5, lr=cfg.lr, checkpoint=True)
    out["unrolled K=5 rolled scan"] = bl.unrolled(inner_loss, outer_loss, steps=5, lr=cfg.lr, scan_unroll=1)
    out["one_step"] = bl.one_step(inner_loss, outer_loss, lr=cfg.lr)
    for k in range(1, 11):
        out[f"implicit cg k={k}"] = bl.implicit(inner_loss, outer_loss, solver="cg", maxiter=k, hvp_mode=cfg.hvp_mode)
    for m in ("linearize", "rev_rev"):
        out[f"implicit cg k=2 {m}"] = bl.implicit(inner_loss, outer_loss, solver="cg", maxiter=2, hvp_mode=m)
    out["implicit neumann k=5"] = bl.implicit(inner_loss, outer_loss, solver="neumann", maxiter=5, neumann_alpha=cfg.lr)
    return {k: jax.jit(v) for k, v in out.items()}


def run(cfg: Config):
    t_start = time.perf_counter()
    train_b, val_b, source = make_data(cfg)
    key_p, key_q = jax.random.split(jax.random.PRNGKey(cfg.seed))
    theta = {"P": 0.1 * jax.random.normal(key_p, (cfg.n_users, cfg.dim)),
             "Q": 0.1 * jax.random.normal(key_q, (cfg.n_items, cfg.dim))}
    lam = {"user": jnp.full((cfg.n_users,), jnp.log(1e-2)), "item": jnp.full((cfg.n_items,), jnp.log(1e-2))}
    fns = modes(cfg)
    compile_s = {}
    for name, f in fns.items():                      # compile + warm up
        t0 = time.perf_counter()
        jax.block_until_ready(f(theta, lam, train_b, val_b))
        compile_s[name] = time.perf_counter() - t0
        bl.check_finite(f(theta, lam, train_b, val_b), name)
    times = {name: [] for name in fns}
    for _ in range(cfg.repeats):                     # interleaved round-robin repeats
        for name, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(theta, lam, train_b, val_b))
            times[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(t)) for name, t in times.items()}
    base = med["train grad"]
    n_params = sum(x.size for x in jax.tree.leaves(theta))
    mins = {name: float(np.min(t)) for name, t in times.items()}
    rows = [(name, med[name] * 1e3, med[name] / base,
             float(np.percentile(times[name], 25) / base), float(np.percentile(times[name], 75) / base),
             mins[name] / mins["train grad"]) for name in fns]
    wall = time.perf_counter() - t_start
    return rows, {"n_params": int(n_params), "data": source, "compile_s": compile_s,
                  "times_s": times, "device": str(jax.devices()[0]), "wall": wall}


def accuracy(seed: int = 0, n: int = 400, d: int = 20, lr: float = 0.5):
    """Relative hypergradient error of each mode against the exact one (float64, L2-logistic regression).

    ``L_in = mean softplus(-y x.theta) + sum_j exp(lam_j) theta_j^2 / 2`` on n training rows,
    ``L_out`` = logistic loss on n validation rows. ``theta*`` is solved by Newton's method to
    ``|grad| < 1e-12``; the reference is ``implicit(solver="dense")`` at ``theta*`` (the exact IFT
    hypergradient). All modes start at ``theta*``; ``lr`` is the unrolled / one-step / Neumann step size
    relative to ``1 / lambda_max(H)``. Uses :func:`jaxrec.bilevel.hypergrad_error`.
    """
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        rng = np.random.default_rng(seed)
        w = rng.normal(size=d)
        X, Xv = rng.normal(size=(n, d)), rng.normal(size=(n, d))
        lab = lambda Z: np.where(Z @ w + rng.normal(size=len(Z)) > 0, 1.0, -1.0)
        train, val = (jnp.asarray(X), jnp.asarray(lab(X))), (jnp.asarray(Xv), jnp.asarray(lab(Xv)))
        lam = jnp.asarray(np.log(rng.uniform(1e-3, 1e-1, size=d)))

        def inner(th, lm, b):
            return jnp.mean(jax.nn.softplus(-b[1] * (b[0] @ th))) + 0.5 * jnp.sum(jnp.exp(lm) * th ** 2)

        def outer(th, lm, b):
            return jnp.mean(jax.nn.softplus(-b[1] * (b[0] @ th)))

        theta = jax.jit(bl.newton_solver(inner, maxiter=50, tol=1e-12))(jnp.zeros(d), lam, train)
        H, _ = bl.dense_hessian(inner, theta, lam, train)
        ev = np.linalg.eigvalsh(np.asarray(H))
        step = lr / float(ev[-1])
        exact = jax.jit(bl.implicit(inner, outer, solver="dense"))
        modes = {"one_step": bl.one_step(inner, outer, lr=step)}
        for k in (1, 2, 5, 10, 20):
            modes[f"unrolled K={k}"] = bl.unrolled(inner, outer, steps=k, lr=step, scan_unroll=1)
        for k in (1, 2, 5, 10, 20):
            modes[f"implicit cg k={k}"] = bl.implicit(inner, outer, solver="cg", maxiter=k)
        for k in (1, 2, 5, 10, 20):
            modes[f"implicit neumann k={k}"] = bl.implicit(inner, outer, solver="neumann", maxiter=k, neumann_alpha=step)
        rows = {name: bl.hypergrad_error(jax.jit(f), exact, theta, lam, train, val) for name, f in modes.items()}
        info = {"cond_H": float(ev[-1] / ev[0]), "step": step, "n": n, "d": d, "seed": seed}
        return rows, info
    finally:
        jax.config.update("jax_enable_x64", prev)


def format_accuracy(rows) -> str:
    lines = ["| mode (started at the exact theta*) | relative error | cosine to exact |", "|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['rel_error']:.2e} | {r['cosine']:.6f} |")
    return "\n".join(lines)


def format_rows(rows) -> str:
    lines = ["| mode | median ms | ratio to one training gradient (medians) | IQR of the ratio | ratio of minima |",
             "|---|---|---|---|---|"]
    for name, ms, ratio, lo, hi, rmin in rows:
        lines.append(f"| {name} | {ms:.2f} | {ratio:.2f} | {lo:.2f}-{hi:.2f} | {rmin:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Config):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    ap.add_argument("--out", default="results", help="results root folder")
    ap.add_argument("--name", default=None, help="result file name (default seed<seed>_<backend>)")
    ap.add_argument("--smoke", action="store_true", help="tiny problem, 2 repeats, no result file (a quick check)")
    args = ap.parse_args(argv)
    cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    if args.smoke:
        cfg = dataclasses.replace(cfg, n_users=60, n_items=80, dim=8, batch=64, repeats=2)
    acc_rows, acc_info = accuracy(cfg.seed)
    acc_table = format_accuracy(acc_rows)
    print(f"Accuracy against the exact hypergradient (float64 L2-logistic regression, n=400, d=20, "
          f"cond(H)={acc_info['cond_H']:.1f}, step {acc_info['step']:.3g} = 0.5/lambda_max):\n")
    print(acc_table + "\n")
    rows, info = run(cfg)
    table = format_rows(rows)
    print(f"MF-BPR {cfg.n_users} users x {cfg.n_items} items, dim {cfg.dim}, |theta| = {info['n_params']}, "
          f"batch {cfg.batch}, device {info['device']}, median of {cfg.repeats} repeats\n")
    print(table)
    metrics = {name: {"median_ms": ms, "ratio": ratio, "ratio_q25": lo, "ratio_q75": hi, "ratio_of_minima": rmin}
               for name, ms, ratio, lo, hi, rmin in rows}
    extra = {k: v for k, v in info.items() if k != "wall"}
    extra["table"] = table
    extra["accuracy"] = {"rows": acc_rows, "info": acc_info, "table": acc_table}
    try:
        from jaxrec.results import save_result
    except ImportError:
        save_result = None
    name = args.name or f"seed{cfg.seed}_{jax.default_backend()}"
    if save_result is not None and not args.smoke:
        path = save_result("hypergrad_cost", "synthetic", config=cfg, seed=cfg.seed, metrics=metrics,
                           wall_time=info["wall"], extra=extra, root=args.out, name=name)
        print(f"\nsaved {path}")
    return rows


if __name__ == "__main__":
    main()
