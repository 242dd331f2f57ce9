"""Meta-Wrapper's training step in jaxrec (JAX, jitted) against the same step written in PyTorch (eager).

The PyTorch side writes DIN and the wrapper as one would without jaxrec: the item / category embedding
tables, DIN's attention unit ``MLP([e_t, e_v, e_t - e_v, e_t * e_v])`` (sigmoid hidden layers, padded
positions set to 0), the weighted pooling, the predictor MLP and the mean binary cross-entropy, all in
``torch`` ops on the same parameter values; Meta-Wrapper's joint objective
``L_in(theta, phi) + mu L_out(U^N(theta), phi)`` unrolls ``U(theta) = theta - beta grad_theta L_in`` with
``torch.autograd.grad(..., create_graph=True)``; both steps end with ``torch.optim.Adam``.

Steps compared (on the same D_in and D_out batches of training rows):

- ``DIN``: gradient of the BCE on one batch + Adam (the ``plain`` variant);
- ``MW N=1`` / ``MW N=2``: the joint objective's gradient in theta and phi through N unrolled steps + Adam (M4).

jaxrec's side is the method's own step, ``jaxrec.methods.meta_wrapper.method(config, data).step`` (jitted;
the gradients it follows are :func:`jaxrec.methods.meta_wrapper.objective_grads` / ``ctr_loss``).
**Agreement first:** in float64 both sides' objective values and gradients (every parameter) must agree to
``--tol`` before anything is timed. **Timing:** float32, compiled / warmed up first, ``--rounds`` interleaved
rounds of ``--steps`` steps per (step, framework); median time per step; PyTorch uses as many threads as XLA
(``--threads``). The MW N = 1, 2, 3 / M2 / M3 step times against DIN's, jaxrec only, are
``python -m benchmarks.meta_wrapper_timing``.

    python -m benchmarks.meta_wrapper_torch --out results                          # synthetic, batch 128
    JAXREC_DATA=../shared/data python -m benchmarks.meta_wrapper_torch --dataset ml-100k --batch-size 256 --out results

Needs ``torch`` (not a jaxrec dependency). Writes ``<out>/meta_wrapper_torch/<dataset>/timing.json``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

try:  # python -m benchmarks.<name>, or imported by the tests
    from benchmarks.torch_util import import_torch  # noqa: E402
except ImportError:  # python benchmarks/<name>.py
    from torch_util import import_torch  # noqa: E402
from jaxrec.cli import live_output  # noqa: E402
from jaxrec.data import resolve_data_dir  # noqa: E402
from jaxrec.methods import meta_wrapper as mw  # noqa: E402
from jaxrec.models.ctr import cast_params, init_params, merge_params, split_params  # noqa: E402
from jaxrec.results import save_result  # noqa: E402


def _paths(tree) -> dict[str, jax.Array]:
    """``{"emb/item/embedding": array, ...}`` for a params pytree."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out["/".join(str(getattr(k, "key", k)) for k in path)] = leaf
    return out


class TorchMW:
    """DIN / Meta-Wrapper step in eager PyTorch on the parameter values of a jaxrec state."""

    def __init__(self, cfg: mw.MWConfig, params, data: dict, dtype):
        import torch

        self.torch, self.cfg = torch, cfg
        self.P = {k: torch.as_tensor(np.array(v)).to(dtype).requires_grad_() for k, v in _paths(params).items()}
        self.theta_keys = [k for k in self.P if not k.startswith("sel/")]
        self.phi_keys = [k for k in self.P if k.startswith("sel/")]
        self.data = {k: torch.as_tensor(np.array(v)) for k, v in data.items()}
        self.n_hidden = len(cfg.hidden)
        self.opt = torch.optim.Adam(list(self.P.values()), lr=cfg.lr, eps=1e-8)

    def _mlp(self, P, prefix, x):
        torch = self.torch
        for layer in range(self.n_hidden):
            x = torch.sigmoid(x @ P[f"{prefix}Dense_{layer}/kernel"] + P[f"{prefix}Dense_{layer}/bias"])
        return x @ P[f"{prefix}Dense_{self.n_hidden}/kernel"] + P[f"{prefix}Dense_{self.n_hidden}/bias"]

    def _embed(self, P, ids, cats):
        e = P["emb/item/embedding"][ids]
        if "emb/cat/embedding" in P:
            e = self.torch.cat([e, P["emb/cat/embedding"][cats]], -1)
        return e

    def loss(self, P, b):
        torch = self.torch
        he, te = self._embed(P, b["hist"], b.get("hist_cat")), self._embed(P, b["target"], b.get("target_cat"))
        mask = b["hist"] != 0
        tv = te[:, None, :].expand_as(he)
        s = self._mlp(P, "sel/MLP_0/", torch.cat([he, tv, he - tv, he * tv], -1))[..., 0]
        s = torch.where(mask, s, torch.zeros_like(s))
        pooled = torch.einsum("bt,btd->bd", s, he)
        logit = self._mlp(P, "mlp/", torch.cat([pooled, te], -1))[:, 0]
        y = b["label"].to(logit.dtype)
        return (torch.clamp(logit, min=0) - logit * y + torch.log1p(torch.exp(-logit.abs()))).mean()

    def objective(self, b_in, b_out):
        """The trained objective: ``L`` (DIN) or ``L_in + mu L_out(U^N(theta), phi)`` (M4; with ``cfg.detach`` the
        unroll starts at ``theta.detach()``)."""
        cfg, torch = self.cfg, self.torch
        if cfg.variant == "plain":
            return self.loss(self.P, b_in)
        l_in = self.loss(self.P, b_in)
        # detached form (Algorithm 1 line 1): the unroll starts at a copy of theta, so the outer term's
        # gradient reaches phi only; coupled: it starts at theta itself
        th = {k: self.P[k].detach().requires_grad_() if cfg.detach else self.P[k] for k in self.theta_keys}
        lk = l_in
        for step in range(cfg.n_inner):
            if step or cfg.detach:
                lk = self.loss({**self.P, **th}, b_in)
            g = torch.autograd.grad(lk, list(th.values()), create_graph=True)
            th = {k: t - cfg.beta * gi for (k, t), gi in zip(th.items(), g)}
        return l_in + cfg.mu * self.loss({**self.P, **th}, b_out)

    def batches(self, idx_in, idx_out):
        return ({k: v[idx_in] for k, v in self.data.items()}, {k: v[idx_out] for k, v in self.data.items()})

    def step(self, idx_in, idx_out):
        self.opt.zero_grad(set_to_none=True)
        val = self.objective(*self.batches(idx_in, idx_out))
        val.backward()
        self.opt.step()
        return val.detach()


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def agreement(cfg, mcfg, data, idx_in, idx_out) -> float:
    """Largest relative difference of the objective and of any parameter's gradient (float64; x64 is
    switched on for this call only)."""
    with jax.enable_x64(True):
        return _agreement(cfg, mcfg, data, idx_in, idx_out)


def _agreement(cfg, mcfg, data, idx_in, idx_out) -> float:
    import torch

    params = cast_params(init_params(mcfg, cfg.model, jax.random.PRNGKey(0)), jnp.float64)
    d = {k: jnp.asarray(v) for k, v in data.items()}
    b_in = {k: v[idx_in] for k, v in d.items()}
    b_out = {k: v[idx_out] for k, v in d.items()}
    if cfg.variant == "plain":
        val, g = jax.value_and_grad(lambda p: mw.ctr_loss(mcfg, cfg.model, p, b_in))(params)
    else:
        theta, phi = split_params(params)
        val, (g_t, g_p) = mw.objective_grads(cfg, mcfg)(theta, phi, b_in, b_out)
        g = merge_params(g_t, g_p)
    tm = TorchMW(cfg, params, data, torch.float64)
    tval = tm.objective(*tm.batches(torch.as_tensor(np.array(idx_in)), torch.as_tensor(np.array(idx_out))))
    tval.backward()
    diffs = [_rel(tval.detach().numpy(), val)]
    for k, gj in _paths(g).items():
        diffs.append(_rel(tm.P[k].grad.numpy(), gj))
    return max(diffs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="steps per (framework, round)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--tol", type=float, default=1e-9)
    p.add_argument("--out", default="runs", help="results root (the stored timings: --out results)")
    args = p.parse_args(argv)
    live_output()
    torch = import_torch("benchmarks/meta_wrapper_torch.py", args.threads)
    t_start = time.perf_counter()
    base = mw.MWConfig(batch_size=args.batch_size)
    split = mw.load(base, args.dataset, resolve_data_dir(args.data_dir) if args.dataset != "synthetic" else None, 0)
    tr = split.train
    data = {k: np.asarray(v) for k, v in tr.arrays().items()}
    data = {k: (v.astype(np.int32) if v.dtype.kind in "iu" else v.astype(np.float32)) for k, v in data.items()}
    rng = np.random.default_rng(0)
    bs = args.batch_size
    idx_in, idx_out = rng.integers(0, len(tr), bs), rng.integers(0, len(tr), bs)
    steps = {"DIN": mw.MWConfig(model="din", variant="plain", batch_size=bs),
             "MW N=1": mw.MWConfig(variant="M4", n_inner=1, batch_size=bs),
             "MW N=2": mw.MWConfig(variant="M4", n_inner=2, batch_size=bs)}
    jbatch = {"in": {k: jnp.asarray(v[idx_in]) for k, v in tr.arrays().items()},  # the step's batch: the rows
              "out": {k: jnp.asarray(v[idx_out]) for k, v in tr.arrays().items()}}
    print(f"{args.dataset} (batch {bs}): torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"jax {jax.__version__} ({jax.devices()[0].platform}), load average {os.getloadavg()[0]:.1f}")
    rows, runners = {}, {}
    for name, cfg in steps.items():
        mcfg = mw.model_config(cfg, tr.n_items, tr.n_cats)
        agree = agreement(cfg, mcfg, data, idx_in, idx_out)
        if agree > args.tol:
            sys.exit(f"{name}: the PyTorch and JAX steps disagree in float64 (max rel. diff {agree:.2e}); not timing")
        m = mw.method(cfg, split)  # float32
        state = m.init(jax.random.PRNGKey(0))
        jstep = jax.jit(m.step)
        tm = TorchMW(cfg, merge_params(state.theta, state.lam), data, torch.float32)
        ti, to = torch.as_tensor(idx_in), torch.as_tensor(idx_out)
        box = {"s": state}

        def run_jax(jstep=jstep, box=box):
            s = box["s"]
            for _ in range(args.steps):
                s, _ = jstep(s, jbatch, jax.random.PRNGKey(1))
            jax.block_until_ready(s)
            box["s"] = s

        def run_torch(tm=tm, ti=ti, to=to):
            for _ in range(args.steps):
                tm.step(ti, to)

        run_jax(), run_torch()  # compile / warm up
        runners[name] = (run_jax, run_torch)
        rows[name] = {"agreement": agree}
    times = {(n, f): [] for n in runners for f in ("jax", "torch")}
    for _ in range(args.rounds):
        for name, (rj, rt) in runners.items():
            for fw, fn in (("jax", rj), ("torch", rt)):
                t0 = time.perf_counter()
                fn()
                times[(name, fw)].append((time.perf_counter() - t0) / args.steps)
    print("| step | JAX ms | PyTorch ms | PyTorch / JAX | JAX / JAX's DIN | PyTorch / PyTorch's DIN | float64 agreement |")
    print("|---|---|---|---|---|---|---|")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name in runners:
        j, t = med[(name, "jax")], med[(name, "torch")]
        rows[name].update(jax_s=j, torch_s=t, ratio=t / j, jax_over_din=j / med[("DIN", "jax")],
                          torch_over_din=t / med[("DIN", "torch")])
        print(f"| {name} | {1e3 * j:.1f} | {1e3 * t:.1f} | {t / j:.2f} | {rows[name]['jax_over_din']:.2f} | "
              f"{rows[name]['torch_over_din']:.2f} | {rows[name]['agreement']:.1e} |")
    save_result("meta_wrapper_torch", args.dataset, config=vars(args), seed=0, metrics=rows,
                wall_time=time.perf_counter() - t_start, root=args.out, name="timing",
                extra={"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "load_average": os.getloadavg()})


if __name__ == "__main__":
    main()
