"""SIF's alternating step (jaxrec, one jitted function, all five operations in one pass) against the plain
MF step (same k, batch) and against the same SIF step written in eager PyTorch; ratios in one run.

- ``MF``: one Adagrad step (global-norm clip, projected w) on ``w^T (u * v)`` (``--ifc mf``), jitted;
- ``SIF``: ``jaxrec.methods.sif`` search step (architecture step on a validation batch through prox_C1 /
  prox_C2, then the weights on the training batch), jitted;
- ``SIF torch``: the same step in eager PyTorch (torch.optim.Adam on alpha, p, q; Adagrad on U, V, w written as optax's, eps 1e-10 inside the square
  root, where torch.optim.Adagrad adds it outside; clip, projections),
  if ``torch`` is installed (it is not a jaxrec dependency).

Agreement first (float64, if torch is present): from the same parameters and batches, alpha, p, q and U, V, w
after one step agree to ``--tol``. Timing: float32, each step warmed up, then ``--rounds`` interleaved rounds of
``--steps`` steps; the median time per step.

    python benchmarks/sif_step.py                   # synthetic sizes (943 x 1682, ml-100k's), k = 8, batch 512
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.methods import sif
from jaxrec.models import ifc


@contextlib.contextmanager
def enable_x64():
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", prev)


def _data(n_users, n_items, n, seed=0):
    rng = np.random.default_rng(seed)
    part = lambda m: (rng.integers(0, n_users, m).astype(np.int32), rng.integers(0, n_items, m).astype(np.int32),  # noqa: E731
                      rng.normal(size=m).astype(np.float32))
    return {"train": part(n), "val": part(n // 2), "test": part(n // 2), "mean": 0.0, "std": 1.0,
            "n_users": n_users, "n_items": n_items}


def _time(fn, steps, rounds):
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        out.append((time.perf_counter() - t) / steps)
    return statistics.median(out)


def torch_step(torch, cfg, theta, lam, train, val):
    """The SIF step in eager PyTorch from numpy copies of (theta, lam); returns (step function, tensors)."""
    T = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in theta.items()}
    L = {"alpha": torch.tensor(np.asarray(lam["alpha"]), requires_grad=True),
         **{f"{m}_{k}": torch.tensor(np.asarray(v), requires_grad=True) for m in ("p", "q") for k, v in lam[m].items()}}
    acc = {k: torch.zeros_like(v) for k, v in T.items()}  # Adagrad as optax's: lr g / sqrt(G + 1e-10)
    opt_a = torch.optim.Adam(list(L.values()), lr=cfg.arch_lr)
    tb = [torch.tensor(np.asarray(a)) for a in train]
    vb = [torch.tensor(np.asarray(a)) for a in val]

    def mlp(m, x):
        return torch.tanh(x[..., None] * L[f"{m}_W1"] + L[f"{m}_b1"]) @ L[f"{m}_W2"] + L[f"{m}_b2"]

    def loss(batch, abar):
        u, i, y, w = batch
        pu, qv = mlp("p", T["U"][u]), mlp("q", T["V"][i])
        four = torch.stack([pu + qv, pu * qv, torch.maximum(pu, qv), torch.minimum(pu, qv)], -2)
        scores = torch.cat([(four * T["w4"]).sum(-1), (torch.cat([pu, qv], -1) @ T["wc"])[..., None]], -1)
        err = scores @ abar - y
        reg = torch.sqrt((w[:, None] * T["U"][u] ** 2).sum() + 1e-12) + torch.sqrt((w[:, None] * T["V"][i] ** 2).sum() + 1e-12)
        return (w * err ** 2).sum() / w.sum().clamp(min=1) + cfg.l2 * reg

    def onehot():
        a = L["alpha"]
        return torch.nn.functional.one_hot(a.argmax(), a.numel()).to(a.dtype)

    def step():
        # 1. architecture: the gradient at abar (straight through), Adam, then the projections
        abar = L["alpha"] + (onehot() - L["alpha"]).detach()
        opt_a.zero_grad()
        loss(vb, abar).backward()
        opt_a.step()
        with torch.no_grad():
            L["alpha"].clamp_(0, 1)
            for m in ("p", "q"):
                L[f"{m}_W1"].clamp_(-1, 1)
                L[f"{m}_W2"].div_(L[f"{m}_W2"].norm().clamp(min=1))
        # 2. weights at prox_C1(alpha)
        for v in T.values():
            v.grad = None
        with torch.no_grad():
            abar = onehot()
        loss(tb, abar).backward()
        torch.nn.utils.clip_grad_norm_(list(T.values()), cfg.clip)
        with torch.no_grad():
            for k, v in T.items():
                acc[k] += v.grad ** 2
                v -= cfg.lr * torch.where(acc[k] > 0, v.grad / torch.sqrt(acc[k] + 1e-10), 0.0)
            T["w4"].div_(T["w4"].norm(dim=-1, keepdim=True).clamp(min=1))
            T["wc"].div_(T["wc"].norm().clamp(min=1))

    return step, T, L


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--threads", type=int, default=1, help="PyTorch intra-op threads (on the shared 2-core machine, 2 threads oversubscribe: 633 ms/step measured)")
    p.add_argument("--out", default="results/sif")
    a = p.parse_args(argv)
    cfg = sif.SIFConfig(dim=a.dim, batch_size=a.batch_size, init_scale=0.1)
    data = _data(943, 1682, 4 * a.batch_size)
    m_sif = sif.method(cfg, data)
    m_mf = sif.method(dataclasses.replace(cfg, model="ifc", ifc="mf"), data)
    s_sif, s_mf = m_sif.init(jax.random.PRNGKey(0)), m_mf.init(jax.random.PRNGKey(0))
    b_sif = jax.tree_util.tree_map(lambda x: x[0], m_sif.batches(0, 0))
    b_mf = jax.tree_util.tree_map(lambda x: x[0], m_mf.batches(0, 0))
    step_sif, step_mf = jax.jit(m_sif.step), jax.jit(m_mf.step)
    key = jax.random.PRNGKey(1)
    jax.block_until_ready(step_sif(s_sif, b_sif, key)), jax.block_until_ready(step_mf(s_mf, b_mf, key))
    rec = {"config": dataclasses.asdict(cfg), "devices": str(jax.devices()), "jax": jax.__version__}
    try:
        import torch
        torch.set_num_threads(a.threads)
    except ImportError:
        torch = None
        print("torch is not installed (pip install torch): the PyTorch column is left out")
    if torch is not None:  # agreement in float64
        with enable_x64():
            f64 = lambda t: jax.tree_util.tree_map(  # noqa: E731
                lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, t)
            m64 = sif.method(cfg, data)
            st, b64 = f64(m64.init(jax.random.PRNGKey(0))), f64(b_sif)
            th64, la64 = st.theta, st.lam
            new = m64.step(st, b64, key)[0]
            torch.set_default_dtype(torch.float64)
            tstep, T, L = torch_step(torch, cfg, th64, la64, *b64)
            tstep()
            err = max(float(np.max(np.abs(np.asarray(new.theta[k]) - T[k].detach().numpy()))) for k in T)
            err = max(err, float(np.max(np.abs(np.asarray(new.lam["alpha"]) - L["alpha"].detach().numpy()))))
            torch.set_default_dtype(torch.float32)
        rec["agreement_max_abs"] = err
        print(f"agreement (float64, one step): max |jaxrec - torch| = {err:.2e}")
        if err > a.tol:
            raise SystemExit(f"jaxrec and PyTorch disagree by {err:.2e} > --tol {a.tol}")
        tstep32, _, _ = torch_step(torch, cfg, s_sif.theta, s_sif.lam, *b_sif)
        tstep32()
    fns = {"MF (jaxrec)": lambda: jax.block_until_ready(step_mf(s_mf, b_mf, key)),
           "SIF (jaxrec)": lambda: jax.block_until_ready(step_sif(s_sif, b_sif, key))}
    if torch is not None:
        fns["SIF (torch eager)"] = tstep32
    times = {k: [] for k in fns}
    for _ in range(a.rounds):  # interleaved rounds
        for k, f in fns.items():
            times[k].append(_time(f, a.steps, 1))
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [f"SIF step benchmark, k={a.dim}, batch {a.batch_size} (943 x 1682 users x items), median of {a.rounds} "
             f"rounds of {a.steps} steps", "", "| step | ms / step | ratio to SIF (jaxrec) |", "|---|---|---|"]
    lines += [f"| {k} | {1e3 * v:.3f} | {v / med['SIF (jaxrec)']:.2f} |" for k, v in med.items()]
    print("\n".join(lines))
    rec.update(ms_per_step={k: 1e3 * v for k, v in med.items()}, table="\n".join(lines))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench_step_k{a.dim}.json").write_text(json.dumps(rec, indent=1))
    (out / f"bench_step_k{a.dim}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
