"""MAL's training step in jaxrec (JAX, jitted) against the same step written in PyTorch (eager).

The PyTorch side is what a researcher would write without jaxrec: parameter tensors, the inner loss of
``jaxrec.methods.mal.make_losses`` term by term (BPR + sigmoid(lambda)-weighted InfoNCE over sampled
neighbours and shared negatives + L2 on the batch rows; LightGCN propagation by ``torch.sparse.mm``),
``torch.optim.Adam``, and the one-step (SOG) hypergradient by ``torch.autograd.grad(..., create_graph=True)``
through ``Theta~ = Theta - alpha grad_Theta L_in``; IG solves ``(H + gamma I) w = g`` with ``k`` CG steps of
double-backward Hessian-vector products. (``torch.compile`` does not support the double backward these
need, so the PyTorch step is eager.)

Steps compared, on the same fixed train batch (with its auxiliary samples) and meta batch:

- ``fixed``: Adam step on Theta with ``grad L_in`` and the meta loss's value (the fixed-weight ablation rows);
- ``SOG``: that, then the one-step hypergradient at the new Theta and an Adam step on Lambda (MF-MAL);
- ``IG k=2``: the same with the implicit hypergradient (2 CG steps, gamma = 1).

jaxrec's side is ``jaxrec.methods.mal.make_update`` (the bl.alternating step every MAL run scans over), jitted.

**Agreement first.** In float64, from the same Theta, Lambda and batches, both sides' ``L_in``, Theta after
the Adam step, the meta loss and the hypergradient ``d Lambda`` must agree to ``--tol`` (relative, max-norm),
else the script stops: the timing compares the same computation.

**Timing.** float32, each step compiled / warmed up first, then ``--rounds`` rounds in which every
(step, framework) pair runs ``--steps`` times in turn (interleaved, so load changes hit all alike); the
table gives the median over rounds of the time per step and the ratio PyTorch / JAX. Both frameworks use
the same number of threads (``--threads``, default: all cores).

    python benchmarks/mal_torch.py                                   # synthetic (offline), MF and LightGCN
    JAXREC_DATA=../shared/data python benchmarks/mal_torch.py --dataset ml-100k

Needs ``torch`` (not a jaxrec dependency: ``pip install torch``). Writes
``results/mal_torch/<dataset>/<base>.json`` (config, versions, timings, agreement).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # float64 for the agreement check; the timing passes float32 explicitly

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

try:  # python -m benchmarks.<name>, or imported by the tests
    from benchmarks.torch_util import import_torch  # noqa: E402
except ImportError:  # python benchmarks/<name>.py
    from torch_util import import_torch  # noqa: E402
from jaxrec.methods import mal  # noqa: E402
from jaxrec.models import lightgcn  # noqa: E402

MODES = {"fixed": dict(mode="fixed"), "SOG": dict(mode="sog"), "IG k=2": dict(mode="ig", cg_steps=2)}


# ------------------------------------------------------------------------------------------ the batches


def fixed_batches(config: mal.MALConfig, split, seed: int = 0):
    """``mal.fixed_batches`` (one train batch with its auxiliary samples, one meta batch) as numpy, and the
    training graph (float64 weights)."""
    tr = split[0]
    n_users, n_items = int(tr.n_users), int(tr.n_items)
    batch, meta = mal.fixed_batches(config, mal.prepare(split), seed)
    graph = lightgcn.build_graph(tr.user, tr.item, n_users, n_items, dtype=jnp.float64)
    to_np = lambda d: {k: np.asarray(v) for k, v in d.items()}  # noqa: E731
    return to_np(batch), to_np(meta), graph, n_users, n_items


# ---------------------------------------------------------------------------------------------- JAX side


def jax_side(config, batch, meta, graph, n_users, n_items, dtype, backend="segment"):
    """``(update, state, hypergrad)``: jitted ``mal.make_update``, its initial state in ``dtype`` and, for the
    meta-learned modes, the jitted hypergradient alone (for the agreement check). ``backend``: LightGCN's
    propagation in jaxrec (:data:`jaxrec.models.lightgcn.BACKENDS`)."""
    g = None
    if config.base == "lightgcn":
        g = graph.replace(weights=graph.weights.astype(dtype)).with_backend(backend)
    state = mal.init_state(jax.random.PRNGKey(0), config, n_users, n_items, dtype=dtype)
    update = jax.jit(mal.make_update(config, g).update)
    hyper = None
    if config.meta:
        hyper = jax.jit(mal.make_hypergrad(config, *mal.make_losses(config, g)))
    return update, state, hyper


# ------------------------------------------------------------------------------------------ PyTorch side


class TorchMAL:
    """MAL's update in eager PyTorch, term for term the same as ``mal.make_update``."""

    def __init__(self, config, state, batch, meta, graph, n_users, n_items, dtype, sparse="csr"):
        import torch

        self.torch, self.cfg, self.nu = torch, config, n_users
        t = lambda x, dt=dtype: torch.as_tensor(np.array(x)).to(dt)  # noqa: E731  (a writable copy)
        self.theta = [t(state.theta["user"]).requires_grad_(), t(state.theta["item"]).requires_grad_()]
        self.lam = [t(state.lam["user"]).requires_grad_(), t(state.lam["item"]).requires_grad_()]
        self.opt_theta = torch.optim.Adam(self.theta, lr=config.lr, eps=1e-8)
        self.opt_lam = torch.optim.Adam(self.lam, lr=config.meta_lr, eps=config.meta_eps)
        self.b = {k: (torch.as_tensor(np.array(v)) if v.dtype == bool else torch.as_tensor(np.array(v)).long())
                  for k, v in batch.items()}
        self.m = {k: torch.as_tensor(np.array(v)).long() for k, v in meta.items()}
        self.A = None
        if config.base == "lightgcn":
            idx = torch.stack([torch.as_tensor(np.array(graph.rows)).long(),
                               torch.as_tensor(np.array(graph.cols)).long()])
            n = n_users + n_items
            A = torch.sparse_coo_tensor(idx, t(graph.weights), (n, n), check_invariants=True).coalesce()
            self.A = A.to_sparse_csr() if sparse == "csr" else A

    def reps(self, tu, ti):
        if self.A is None:
            return tu, ti
        torch = self.torch
        e = torch.cat([tu, ti])
        acc, x = e, e
        for _ in range(self.cfg.n_layers):
            x = torch.sparse.mm(self.A, x)
            acc = acc + x
        acc = acc / (self.cfg.n_layers + 1)
        return acc[: self.nu], acc[self.nu:]

    def info_nce(self, a, p, negs, mask):
        torch = self.torch
        T = self.cfg.temperature
        s_pos = (a * p).sum(-1) / T
        s_neg = (a @ negs.T / T).masked_fill(~mask, float("-inf"))
        return torch.logsumexp(torch.cat([s_pos[:, None], s_neg], 1), 1) - s_pos

    def bpr(self, eu, ei, b):
        u = eu[b["user"]]
        return self.torch.nn.functional.softplus(-((u * ei[b["pos"]]).sum(-1) - (u * ei[b["neg"]]).sum(-1)))

    def inner(self, theta, lam):
        torch, b = self.torch, self.b
        tu, ti = theta
        eu, ei = self.reps(tu, ti)
        per = self.bpr(eu, ei, b)
        for t, e, anchors, lam_t in (("user", eu, b["user"], lam[0]), ("item", ei, b["pos"], lam[1])):
            if t in self.cfg.aux:
                loss = self.info_nce(e[anchors], e[b[f"{t}_aux_pos"]], e[b[f"{t}_aux_neg"]], b[f"{t}_aux_mask"])
                per = per + torch.sigmoid(lam_t[anchors]) * torch.where(b[f"{t}_aux_has"], loss, torch.zeros_like(loss))
        reg = 0.5 * ((tu[b["user"]] ** 2).sum(-1) + (ti[b["pos"]] ** 2).sum(-1) + (ti[b["neg"]] ** 2).sum(-1))
        return (per + self.cfg.l2 * reg).mean()

    def outer(self, theta):
        return self.bpr(*self.reps(*theta), self.m).mean()

    def hypergrad(self):
        """``(meta loss, d Lambda)`` at the current Theta: SOG through one SGD step, or IG with CG."""
        torch, cfg = self.torch, self.cfg
        theta = [p.detach().requires_grad_() for p in self.theta]
        if cfg.mode == "sog":
            g = torch.autograd.grad(self.inner(theta, self.lam), theta, create_graph=True)
            val = self.outer([p - cfg.alpha * gi for p, gi in zip(theta, g)])
            return val.detach(), torch.autograd.grad(val, self.lam)
        # IG: (H + gamma I) w = grad_Theta L_out by k CG steps, then d Lambda = -(d^2 L_in / dLambda dTheta) w
        val = self.outer(theta)
        rhs = torch.autograd.grad(val, theta)
        g = torch.autograd.grad(self.inner(theta, self.lam), theta, create_graph=True)

        def hvp(v):
            hv = torch.autograd.grad(g, theta, grad_outputs=v, retain_graph=True)
            return [h + cfg.gamma * vi for h, vi in zip(hv, v)]

        dot = lambda a, b: sum((x * y).sum() for x, y in zip(a, b))  # noqa: E731
        w = [torch.zeros_like(r) for r in rhs]
        r = [ri.clone() for ri in rhs]
        p = [ri.clone() for ri in rhs]
        rr = dot(r, r)
        for _ in range(cfg.cg_steps):
            Ap = hvp(p)
            a = rr / dot(p, Ap)
            w = [wi + a * pi for wi, pi in zip(w, p)]
            r = [ri - a * api for ri, api in zip(r, Ap)]
            rr_new = dot(r, r)
            p = [ri + (rr_new / rr) * pi for ri, pi in zip(r, p)]
            rr = rr_new
        d_lam = torch.autograd.grad(g, self.lam, grad_outputs=w)
        return val.detach(), [-d for d in d_lam]

    def update(self):
        """One step of the algorithm box; returns ``(L_in, meta loss, d Lambda or None)``."""
        torch = self.torch
        self.opt_theta.zero_grad(set_to_none=True)
        loss = self.inner(self.theta, [x.detach() for x in self.lam])
        loss.backward()
        self.opt_theta.step()
        if not self.cfg.meta:
            with torch.no_grad():
                return loss.detach(), self.outer(self.theta), None
        val, d_lam = self.hypergrad()
        for p, d in zip(self.lam, d_lam):
            p.grad = d
        self.opt_lam.step()
        return loss.detach(), val, d_lam


# ------------------------------------------------------------------------------------------------ checks


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def agreement(config, batch, meta, graph, n_users, n_items, backend="segment") -> dict[str, float]:
    """Max relative differences between the two sides after one update from the same state (float64)."""
    update, state, hyper = jax_side(config, batch, meta, graph, n_users, n_items, jnp.float64, backend)
    tm = TorchMAL(config, state, batch, meta, graph, n_users, n_items, dtype=__import__("torch").float64)
    jb, jm = jax.tree.map(jnp.asarray, batch), jax.tree.map(jnp.asarray, meta)
    new, aux = update(state, jb, jm)
    loss_t, val_t, _ = tm.update()
    out = {
        "L_in": _rel(loss_t.numpy(), aux["inner"]),
        "theta_after_step": max(_rel(tm.theta[0].detach().numpy(), new.theta["user"]),
                                _rel(tm.theta[1].detach().numpy(), new.theta["item"])),
        "meta_loss": _rel(val_t.numpy(), aux["outer"]),
    }
    if hyper is not None:
        # d Lambda at the same (Theta, Lambda) on both sides: JAX's new Theta and the pre-update Lambda. (The
        # per-entity hypergradients are sums with heavy cancellation, so the ~1e-15 differences between the two
        # Adam implementations' Theta would show up as ~1e-5 relative differences in d Lambda.)
        _, d_lam = hyper(new.theta, state.lam, jb, jm)
        at = TorchMAL(config, state._replace(theta=new.theta), batch, meta, graph, n_users, n_items,
                      dtype=__import__("torch").float64)
        _, d_lam_t = at.hypergrad()
        out["d_lambda"] = max(_rel(d_lam_t[0].numpy(), d_lam["user"]), _rel(d_lam_t[1].numpy(), d_lam["item"]))
    return out


# ------------------------------------------------------------------------------------------------ timing


def timings(config, batch, meta, graph, n_users, n_items, steps: int, rounds: int, sparse: str = "csr",
            backend: str = "segment") -> dict[str, float]:
    import torch

    update, state, _ = jax_side(config, batch, meta, graph, n_users, n_items, jnp.float32, backend)
    jb = jax.tree.map(jnp.asarray, {k: (v.astype(np.int32) if v.dtype.kind == "i" else v) for k, v in batch.items()})
    jm = jax.tree.map(lambda v: jnp.asarray(v, jnp.int32), meta)
    tm = TorchMAL(config, state, batch, meta, graph, n_users, n_items, dtype=torch.float32, sparse=sparse)
    box = {"state": state}

    def run_jax():
        s = box["state"]
        for _ in range(steps):
            s, _ = update(s, jb, jm)
        jax.block_until_ready(s)
        box["state"] = s

    def run_torch():
        for _ in range(steps):
            tm.update()

    run_jax(), run_torch()  # compile / warm up
    assert box["state"].theta["user"].dtype == jnp.float32
    times = {"jax": [], "torch": []}
    for _ in range(rounds):
        for name, fn in (("jax", run_jax), ("torch", run_torch)):
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    from jaxrec.cli import live_output
    from jaxrec.results import save_result

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--bases", nargs="+", default=["mf", "lightgcn"], choices=["mf", "lightgcn"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--steps", type=int, default=5, help="steps per (framework, round)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--torch-sparse", choices=["csr", "coo"], default="csr",
                   help="layout of LightGCN's adjacency on the PyTorch side (about equally fast here)")
    p.add_argument("--graph-backend", choices=lightgcn.BACKENDS, default="segment",
                   help="LightGCN's propagation on the JAX side (jaxrec.models.lightgcn.BACKENDS)")
    p.add_argument("--tol", type=float, default=1e-9, help="float64 agreement needed before timing")
    p.add_argument("--out", default="results")
    args = p.parse_args(argv)
    live_output()
    torch = import_torch("benchmarks/mal_torch.py", args.threads)
    split = mal.load_split(args.dataset, args.data_dir, 0)
    print(f"{args.dataset}: torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__} "
          f"({jax.devices()[0].platform}), load average {os.getloadavg()[0]:.1f}")
    print("| base | step | JAX ms | PyTorch ms | PyTorch / JAX | float64 agreement (max rel. diff) |")
    print("|---|---|---|---|---|---|")
    for base in args.bases:
        t0 = time.perf_counter()
        rows = {}
        for mode in args.modes:
            cfg = mal.MALConfig(base=base, **MODES[mode])
            batch, meta, graph, nu, ni = fixed_batches(cfg, split)
            agree = agreement(cfg, batch, meta, graph, nu, ni, args.graph_backend)
            if max(agree.values()) > args.tol:
                sys.exit(f"{base} {mode}: the PyTorch and JAX steps disagree in float64 ({agree}); not timing")
            t = timings(cfg, batch, meta, graph, nu, ni, args.steps, args.rounds, args.torch_sparse,
                        args.graph_backend)
            rows[mode] = dict(jax_s=t["jax"], torch_s=t["torch"], ratio=t["torch"] / t["jax"], agreement=agree)
            print(f"| {base} | {mode} | {1e3 * t['jax']:.1f} | {1e3 * t['torch']:.1f} | {t['torch'] / t['jax']:.2f} | "
                  f"{max(agree.values()):.1e} |", flush=True)
        name = base if base == "mf" or args.graph_backend == "segment" else f"{base}_{args.graph_backend}"
        save_result("mal_torch", args.dataset, config=dict(vars(args), base=base, mal=dataclasses.asdict(cfg)),
                    seed=0, metrics=rows, wall_time=time.perf_counter() - t0, root=args.out, name=name,
                    extra={"torch": torch.__version__, "threads": torch.get_num_threads(),
                           "load_average": os.getloadavg()})


if __name__ == "__main__":
    main()
