"""Time one lambda-Opt step (simulated Adam update + Lambda update + real update) against a plain MF-BPR step,
in one run, at the issue's shapes (dim 128, batch 1024, ml-100k 20-core table sizes by default).

Steps timed (each jitted and compiled first):

- ``mf_bpr``: the library's plain MF-BPR step (:mod:`jaxrec.methods.mf_bpr`, Adam);
- ``fix``: MF-lambda-Fix, the lambda-Opt model with a fixed global lambda (Adam + clip, no Lambda update);
- ``global``, ``d``, ``du``, ``di``, ``dui``: the lambda-Opt step at each granularity (the method's own step);
- ``torch_dui`` (``--torch``): the same DUI step written eagerly in PyTorch: the simulated clipped Adam step by
  hand (differentiable, ``create_graph=True``), the Lambda AMSGrad step (clip 100, projection), then the real
  clipped ``torch.optim.Adam`` step, on the same shapes and pre-drawn batches.

**Interleaved timing.** ``--rounds`` rounds; in each, every variant (in an order rotated per round) runs
``--steps / --rounds`` steps, each timed alone (``jax.block_until_ready``; wall and process-CPU time, the
latter over all threads). A variant's number is the median over rounds of its per-round median, and its
ratio to ``mf_bpr`` (and to ``fix``) the median over rounds of the per-round ratio, so that a change of
load hits every variant alike. The load average (1 min) is printed before and after: the CPU machine is
shared; under load the CPU time is the fairer number.

    python benchmarks/lambda_opt_step.py                       # ratio of every step to mf_bpr and fix
    python benchmarks/lambda_opt_step.py --users 22363 --items 12101 --steps 20   # Beauty-sized tables
    PYTHONPATH=/path/to/torch:. python -m benchmarks.lambda_opt_step --torch --threads 2   # + eager PyTorch
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

try:  # python -m benchmarks.lambda_opt_step
    from benchmarks.torch_util import import_torch
except ImportError:  # python benchmarks/lambda_opt_step.py
    from torch_util import import_torch
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


def jax_runner(m, n_batches: int):
    """``(one, compile_s)``: ``one()`` runs the method's jitted step once on the next of ``n_batches``
    pre-sliced batches (cycling) and blocks; the first call (compilation) is timed as ``compile_s``."""
    step = jax.jit(m.step)
    epoch = m.batches(0, 0)
    n = max(1, min(n_batches, jax.tree_util.tree_leaves(epoch)[0].shape[0] - 1))  # not the padded last batch
    batches = [jax.block_until_ready(jax.tree_util.tree_map(lambda x: x[k], epoch)) for k in range(n)]
    keys = [jax.random.PRNGKey(k) for k in range(n)]
    box = {"state": m.init(jax.random.PRNGKey(0)), "k": 0}

    def one():
        k = box["k"] % n
        box["k"] += 1
        box["state"], logs = step(box["state"], batches[k], keys[k])
        jax.block_until_ready((box["state"], logs))

    t = time.perf_counter()
    one()
    return one, time.perf_counter() - t


def torch_dui(torch, P0, Q0, train_b, val_b, adam_state=None, lr: float = 1e-3, lam_lr: float = 1e-3,
              clip: float = 100.0, lam_clip: float = 100.0):
    """``(one, tensors)``: ``one(k)`` is the DUI step written eagerly in PyTorch on batch ``k``, doing the work
    of the JAX step: the simulated step (clipped Adam by hand, differentiable in Lambda, with Adam's state and
    count held fixed, as the official code), the validation BPR at it, the Lambda step (clip, AMSGrad,
    projection >= 0), the real step (``torch.optim.Adam`` after ``clip_grad_norm_``) with the new Lambda, and
    the step's logs (losses, mean lambdas). ``P0`` / ``Q0``: the initial tables (numpy; their dtype is used);
    ``adam_state``: optional ``(count, mu, nu)`` of the MF Adam (``{"user", "item"}`` numpy) to start from;
    ``train_b`` / ``val_b``: the JAX step's ``(u, i, j, w)`` batches as numpy ``[n, B]`` (``w`` all ones)."""
    P = torch.tensor(np.asarray(P0), requires_grad=True)
    Q = torch.tensor(np.asarray(Q0), requires_grad=True)
    lu = torch.zeros_like(P, requires_grad=True)
    li = torch.zeros_like(Q, requires_grad=True)
    opt = torch.optim.Adam([P, Q], lr=lr)
    if adam_state is not None:
        count, mu, nu = adam_state
        for p, side in ((P, "user"), (Q, "item")):
            opt.state[p] = {"step": torch.tensor(float(count)), "exp_avg": torch.tensor(np.asarray(mu[side])),
                            "exp_avg_sq": torch.tensor(np.asarray(nu[side]))}
    lopt = torch.optim.Adam([lu, li], lr=lam_lr, amsgrad=True)
    b1, b2, eps = 0.9, 0.999, 1e-8
    to_t = lambda b, k: tuple(torch.as_tensor(np.array(x[k]), dtype=torch.long) for x in b[:3])  # noqa: E731
    batches = [(to_t(train_b, k), to_t(val_b, k)) for k in range(train_b[0].shape[0])]

    def loss(Pm, Qm, u, i, j, reg):
        pu, qi, qj = Pm[u], Qm[i], Qm[j]
        out = torch.nn.functional.softplus((pu * qj).sum(1) - (pu * qi).sum(1)).mean()
        if reg:
            out = out + ((lu[u] * pu ** 2).sum() + (li[i] * qi ** 2).sum() + (li[j] * qj ** 2).sum()) / u.shape[0]
        return out

    def one(k):
        (u, i, j), (vu, vi, vj) = batches[k % len(batches)]
        gP, gQ = torch.autograd.grad(loss(P, Q, u, i, j, True), [P, Q], create_graph=True)
        norm = torch.sqrt((gP ** 2).sum() + (gQ ** 2).sum())  # optax.clip_by_global_norm, differentiably
        gP, gQ = (torch.where(norm < clip, g, g / norm * clip) for g in (gP, gQ))
        st = [opt.state.get(p, {}) for p in (P, Q)]
        t = float(st[0].get("step", 0)) + 1
        new = []
        for p, g, s in zip((P, Q), (gP, gQ), st):
            m = b1 * s.get("exp_avg", torch.zeros_like(p)) + (1 - b1) * g
            v = b2 * s.get("exp_avg_sq", torch.zeros_like(p)) + (1 - b2) * g * g
            new.append(p - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t) + 1e-16).sqrt() + eps))
        lopt.zero_grad()
        val_loss = loss(new[0], new[1], vu, vi, vj, False)
        val_loss.backward(inputs=[lu, li])
        torch.nn.utils.clip_grad_norm_([lu, li], lam_clip)
        lopt.step()
        with torch.no_grad():
            lu.clamp_(min=0)
            li.clamp_(min=0)
        opt.zero_grad()
        train = loss(P, Q, u, i, j, True)
        train.backward(inputs=[P, Q])
        torch.nn.utils.clip_grad_norm_([P, Q], clip)
        opt.step()
        with torch.no_grad():
            return train.detach(), val_loss.detach(), lu.mean(), li.mean()

    return one, {"P": P, "Q": Q, "lu": lu, "li": li}


def torch_dui_runner(data: dict, train_b, val_b, dim: int, threads: int):
    """``(one, 0.0)``: :func:`torch_dui` (float32, N(0, 0.1^2) tables) as a timing runner, cycling over the
    batches but the (padded) last."""
    torch = import_torch("lambda_opt_step.py", threads)
    rng = np.random.default_rng(0)
    P0 = (0.1 * rng.standard_normal((data["n_users"], dim))).astype(np.float32)
    Q0 = (0.1 * rng.standard_normal((data["n_items"], dim))).astype(np.float32)
    step, _ = torch_dui(torch, P0, Q0, train_b, val_b)
    n = max(1, train_b[0].shape[0] - 1)
    box = {"k": 0}

    def one():
        box["k"] += 1
        step(box["k"] % n)

    one()
    return one, 0.0


def agreement(threads: int = 2) -> dict:
    """In float64 on a small random set: from the same Theta and MF Adam state (two real steps taken, Lambda
    = 0, fresh AMSGrad), one DUI step of jaxrec (the method's own step) and of :func:`torch_dui` on the same
    batches; max relative differences of the validation loss at the simulated point, the new Lambda and the
    new Theta (they differ only by Adam's ``eps_root = 1e-16`` in the real torch.optim.Adam step). The MF
    gradient clip is 0.01 here, so that the clipping (of the simulated and of the real step) is active."""
    torch = import_torch("lambda_opt_step.py", threads)
    with jax.enable_x64(True):
        data = random_data(30, 40, 20)
        cfg = L.LambdaOptConfig(granularity="dui", dim=8, batch_size=32, lr=1e-2, lam_lr=1e-2, clip=1e-2)
        m = L.method(cfg, data)
        state = m.init(jax.random.PRNGKey(0))
        state = state._replace(theta=jax.tree_util.tree_map(lambda x: x.astype(np.float64), state.theta))
        state = L.bilevel_step(cfg).init(state.theta, jax.tree_util.tree_map(lambda x: x.astype(np.float64), state.lam))
        train_b, val_b = m.batches(0, 0)
        take = lambda b, k: jax.tree_util.tree_map(lambda x: x[k], b)  # noqa: E731
        for k in (1, 2):
            state, _, _ = L.bilevel_step(cfg).inner(state, take(train_b, k))
        adam = state.inner_opt[1][0]
        one, t = torch_dui(torch, state.theta["user"], state.theta["item"], *jax.tree_util.tree_map(np.asarray, (train_b, val_b)),
                           adam_state=(int(adam.count), adam.mu, adam.nu), lr=cfg.lr, lam_lr=cfg.lam_lr, clip=cfg.clip,
                           lam_clip=cfg.lam_clip)
        new, logs = jax.jit(m.step)(state, (take(train_b, 0), take(val_b, 0)), jax.random.PRNGKey(0))
        _, val_loss, _, _ = one(0)
        rel = lambda a, b: float(np.max(np.abs(np.asarray(a) - b.detach().numpy())) / max(np.max(np.abs(np.asarray(a))), 1e-300))  # noqa: E731
        return {"val_loss": rel(logs["val_loss"], val_loss), "lambda_user": rel(new.lam["user"], t["lu"]),
                "lambda_item": rel(new.lam["item"], t["li"]), "theta_user": rel(new.theta["user"], t["P"]),
                "theta_item": rel(new.theta["item"], t["Q"])}


def interleave(runners: dict, steps: int, rounds: int) -> dict:
    """Per variant, per round: the median wall and process-CPU seconds of its ``steps // rounds`` steps; the
    variants take turns within each round, in an order rotated from round to round."""
    names = list(runners)
    per = max(1, steps // rounds)
    rec = {k: {"wall": [], "cpu": []} for k in names}
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            wall, cpu = [], []
            for _ in range(per):
                t, c = time.perf_counter(), time.process_time()
                runners[k]()
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            rec[k]["wall"].append(statistics.median(wall))
            rec[k]["cpu"].append(statistics.median(cpu))
    return rec


def summarise(rec: dict, compile_s: dict, bases=("mf_bpr", "fix")) -> dict:
    """Median over rounds of the per-round medians (ms) and of the per-round ratios to each of ``bases``."""
    out = {}
    for k, r in rec.items():
        row = {"wall_ms": 1e3 * statistics.median(r["wall"]), "cpu_ms": 1e3 * statistics.median(r["cpu"]),
               "compile_s": compile_s[k], "rounds_wall_ms": [1e3 * x for x in r["wall"]]}
        for b in bases:
            if b in rec:
                for kind in ("wall", "cpu"):
                    row[f"{kind}_over_{b}"] = statistics.median(x / y for x, y in zip(r[kind], rec[b][kind]))
        out[k] = row
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=943, help="user table size (default: ml-100k 20-core)")
    p.add_argument("--items", type=int, default=1152, help="item table size")
    p.add_argument("--per-user", type=int, default=100, help="interactions per random user")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=200, help="timed steps per variant (over all rounds)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (each runs steps / rounds steps)")
    p.add_argument("--variants", nargs="+", default=["mf_bpr", "fix", "global", "d", "du", "di", "dui"],
                   choices=["mf_bpr", *L.GRANULARITIES])
    p.add_argument("--torch", action="store_true", help="also time the DUI step in eager PyTorch")
    p.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    p.add_argument("--tol", type=float, default=1e-5, help="largest relative PyTorch / jaxrec difference allowed")
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    a = p.parse_args(argv)
    if min(a.users, a.items, a.per_user, a.dim, a.batch, a.steps, a.rounds) < 1:
        p.error("every size, --steps and --rounds must be >= 1")
    load_before, agree = os.getloadavg(), None
    data = random_data(a.users, a.items, min(a.per_user, a.items))
    runners, compile_s = {}, {}
    for v in a.variants:
        if v == "mf_bpr":
            m = mf_bpr.method(MFBPRConfig(dim=a.dim, lr=1e-3, batch_size=a.batch), data)
        else:
            m = L.method(L.LambdaOptConfig(granularity=v, dim=a.dim, batch_size=a.batch, lam=1e-2), data)
        runners[v], compile_s[v] = jax_runner(m, a.steps)
    if a.torch:
        agree = agreement(a.threads)
        print("PyTorch DUI step vs jaxrec's (float64, max relative difference): "
              + ", ".join(f"{k} {v:.1e}" for k, v in agree.items()))
        if max(agree.values()) > a.tol:
            raise SystemExit(f"the PyTorch DUI step differs from jaxrec's by more than --tol {a.tol}: not timed")
        m = L.method(L.LambdaOptConfig(granularity="dui", dim=a.dim, batch_size=a.batch), data)
        train_b, val_b = jax.tree_util.tree_map(np.asarray, m.batches(0, 0))
        runners["torch_dui"], compile_s["torch_dui"] = torch_dui_runner(data, train_b, val_b, a.dim, a.threads)
    res = summarise(interleave(runners, a.steps, a.rounds), compile_s)
    load_after = os.getloadavg()
    print(f"{a.users} users x {a.items} items, dim {a.dim}, batch {a.batch}, {a.steps} steps per variant in "
          f"{a.rounds} interleaved rounds, backend {jax.default_backend()}, {os.cpu_count()} CPUs, load average "
          f"(1/5/15 min) before {'/'.join(f'{x:.1f}' for x in load_before)}, after "
          f"{'/'.join(f'{x:.1f}' for x in load_after)}, max RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    cols = [c for c in ("mf_bpr", "fix") if c in res]
    head = "".join(f" wall / {c} | CPU / {c} |" for c in cols)
    print(f"| step | wall ms | CPU ms |{head} compile s |\n|---|---|---|{'---|---|' * len(cols)}---|")
    for k, r in res.items():
        rat = "".join(f" {r[f'wall_over_{c}']:.2f} | {r[f'cpu_over_{c}']:.2f} |" for c in cols)
        print(f"| {k} | {r['wall_ms']:.2f} | {r['cpu_ms']:.2f} |{rat} {r['compile_s']:.1f} |")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"args": vars(a), "results": res, "backend": jax.default_backend(),
                                           "cpu_count": os.cpu_count(), "torch_agreement": agree, "loadavg_before": load_before,
                                           "loadavg_after": load_after, "jax": jax.__version__}, indent=1))


if __name__ == "__main__":
    main()
