"""Time one lambda-Opt step (simulated Adam update + Lambda update + real update) against a plain MF-BPR step,
in one run, at the issue's shapes (dim 128, batch 1024, ml-100k 20-core table sizes by default).

Steps timed (each jitted, compiled first, then ``--steps`` calls with ``jax.block_until_ready``; median wall
and median process-CPU time per step; the load average is printed because the CPU machine is shared):

- ``mf_bpr``: the library's plain MF-BPR step (:mod:`jaxrec.methods.mf_bpr`, Adam);
- ``fix``: MF-lambda-Fix, the lambda-Opt model with a fixed global lambda (Adam + clip, no Lambda update);
- ``global``, ``d``, ``du``, ``di``, ``dui``: the lambda-Opt step at each granularity.

    python benchmarks/lambda_opt_step.py                       # ratio of every step to mf_bpr
    python benchmarks/lambda_opt_step.py --users 22363 --items 12101 --steps 20   # Beauty-sized tables
    python benchmarks/lambda_opt_step.py --torch               # also the DUI step in eager PyTorch (needs torch)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import jax
import numpy as np
import scipy.sparse as sp

from jaxrec.configs.mf_bpr import MFBPRConfig
from jaxrec.methods import lambda_opt as L
from jaxrec.methods import mf_bpr


def random_data(n_users: int, n_items: int, per_user: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n_users), per_user)
    cols = rng.integers(0, n_items, size=rows.size)
    m = (sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(n_users, n_items)) > 0).astype(np.float32)
    coo = m.tocoo()
    part = rng.random(coo.nnz)
    pick = lambda mask: sp.csr_matrix((coo.data[mask], (coo.row[mask], coo.col[mask])), shape=m.shape)  # noqa: E731
    train, val, test = pick(part < 0.6), pick((part >= 0.6) & (part < 0.8)), pick(part >= 0.8)
    return {"train": train, "val": val, "test": test, "train_val": ((train + val) > 0).astype(np.float32).tocsr(),
            "all": m.tocsr(), "n_users": n_users, "n_items": n_items}


def time_step(m, steps: int) -> dict:
    step = jax.jit(m.step)
    state = m.init(jax.random.PRNGKey(0))
    batches = jax.tree_util.tree_map(lambda x: x[:steps + 1], m.batches(0, 0))
    first = jax.tree_util.tree_map(lambda x: x[0], batches)
    t = time.perf_counter()
    state, _ = step(state, first, jax.random.PRNGKey(1))
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t
    n = jax.tree_util.tree_leaves(batches)[0].shape[0]
    wall, cpu = [], []
    for k in range(steps):
        b = jax.tree_util.tree_map(lambda x: x[(k + 1) % n], batches)
        t, c = time.perf_counter(), time.process_time()
        state, _ = step(state, b, jax.random.PRNGKey(k))
        jax.block_until_ready(state)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"wall_ms": 1e3 * statistics.median(wall), "cpu_ms": 1e3 * statistics.median(cpu), "compile_s": compile_s}


def torch_dui_step(data: dict, dim: int, batch: int, steps: int, threads: int) -> dict:
    """The same DUI step written eagerly in PyTorch (simulated Adam step by hand, as the official code)."""
    from benchmarks.torch_util import import_torch

    torch = import_torch("lambda_opt_step.py", threads)
    nu, ni = data["n_users"], data["n_items"]
    P = torch.randn(nu, dim) * 0.1
    Q = torch.randn(ni, dim) * 0.1
    P.requires_grad_(True)
    Q.requires_grad_(True)
    lu = torch.zeros(nu, dim, requires_grad=True)
    li = torch.zeros(ni, dim, requires_grad=True)
    opt = torch.optim.Adam([P, Q], lr=1e-3)
    lopt = torch.optim.Adam([lu, li], lr=1e-3, amsgrad=True)
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1e-3
    rng = np.random.default_rng(0)

    def trip():
        return (torch.as_tensor(rng.integers(0, nu, batch)), torch.as_tensor(rng.integers(0, ni, batch)),
                torch.as_tensor(rng.integers(0, ni, batch)))

    def loss(Pm, Qm, u, i, j, reg):
        x = (Pm[u] * Qm[i]).sum(1) - (Pm[u] * Qm[j]).sum(1)
        out = torch.nn.functional.softplus(-x).mean()
        if reg:
            out = out + ((lu[u] * Pm[u] ** 2).sum() + (li[i] * Qm[i] ** 2).sum() + (li[j] * Qm[j] ** 2).sum()) / batch
        return out

    def one():
        u, i, j = trip()
        vu, vi, vj = trip()
        gP, gQ = torch.autograd.grad(loss(P, Q, u, i, j, True), [P, Q], create_graph=True)
        st = [opt.state.get(p, {}) for p in (P, Q)]
        t = (st[0].get("step", 0) or 0) + 1
        new = []
        for p, g, s in zip((P, Q), (gP, gQ), st):
            m = b1 * s.get("exp_avg", torch.zeros_like(p)) + (1 - b1) * g
            v = b2 * s.get("exp_avg_sq", torch.zeros_like(p)) + (1 - b2) * g * g
            new.append(p - lr * (m / (1 - b1 ** float(t))) / ((v / (1 - b2 ** float(t)) + 1e-16).sqrt() + eps))
        lopt.zero_grad()
        loss(new[0], new[1], vu, vi, vj, False).backward(inputs=[lu, li])
        torch.nn.utils.clip_grad_norm_([lu, li], 100)
        lopt.step()
        with torch.no_grad():
            lu.clamp_(min=0)
            li.clamp_(min=0)
        opt.zero_grad()
        loss(P, Q, u, i, j, True).backward(inputs=[P, Q])
        torch.nn.utils.clip_grad_norm_([P, Q], 100)
        opt.step()

    one()
    wall, cpu = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        one()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"wall_ms": 1e3 * statistics.median(wall), "cpu_ms": 1e3 * statistics.median(cpu), "compile_s": 0.0}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=943, help="user table size (default: ml-100k 20-core)")
    p.add_argument("--items", type=int, default=1152, help="item table size")
    p.add_argument("--per-user", type=int, default=100, help="interactions per random user")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    p.add_argument("--variants", nargs="+", default=["mf_bpr", "fix", "global", "d", "du", "di", "dui"])
    p.add_argument("--torch", action="store_true", help="also time the DUI step in eager PyTorch")
    p.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    a = p.parse_args(argv)
    if min(a.users, a.items, a.per_user, a.dim, a.batch, a.steps) < 1:
        p.error("every size must be >= 1")
    data = random_data(a.users, a.items, min(a.per_user, a.items))
    res = {}
    for v in a.variants:
        if v == "mf_bpr":
            m = mf_bpr.method(MFBPRConfig(dim=a.dim, lr=1e-3, batch_size=a.batch), data)
        elif v in L.GRANULARITIES:
            m = L.method(L.LambdaOptConfig(granularity=v, dim=a.dim, batch_size=a.batch, lam=1e-2), data)
        else:
            p.error(f"unknown variant {v!r}")
        res[v] = time_step(m, a.steps)
    if a.torch:
        res["torch_dui"] = torch_dui_step(data, a.dim, a.batch, a.steps, a.threads)
    base = res.get("mf_bpr", next(iter(res.values())))
    print(f"{a.users} users x {a.items} items, dim {a.dim}, batch {a.batch}, {a.steps} steps, "
          f"backend {jax.default_backend()}, load average {os.getloadavg()[0]:.1f}, "
          f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print("| step | wall ms | CPU ms | wall / mf_bpr | CPU / mf_bpr | compile s |\n|---|---|---|---|---|---|")
    for k, r in res.items():
        print(f"| {k} | {r['wall_ms']:.2f} | {r['cpu_ms']:.2f} | {r['wall_ms'] / base['wall_ms']:.2f} | "
              f"{r['cpu_ms'] / base['cpu_ms']:.2f} | {r['compile_s']:.1f} |")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"args": vars(a), "results": res, "backend": jax.default_backend(),
                                           "loadavg": os.getloadavg()[0]}, indent=1))


if __name__ == "__main__":
    main()
