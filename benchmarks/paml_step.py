"""Time the PAML meta-step (32 users, one jitted function vmapping the users) against the same step as a
Python loop over users, and the MeLU meta-step against eager PyTorch at the same shapes.

Shapes (ML-1M MeLU files under the PAML protocol): 32 users per meta-batch, support 61 / query 15 items
(the padded sizes of ml-1m-melu's meta-train users), 4 user fields and 4 item fields (genre up to 7 values,
director 12, actor 4 per movie) of 32-wide embeddings, decision MLP 256 -> 320 -> 192 -> 1, one inner step
(second order). Data are random with the real vocabulary sizes (the step's cost does not depend on values).

1. float64 agreement: the MeLU meta-gradient (w.r.t. every parameter) of jaxrec's objective and of the
   PyTorch step written term by term with autograd (``create_graph=True`` through the inner step), same
   parameters and batch; the maximum absolute difference is printed (must be < 1e-8).
2. float32 timing (median of ``--steps`` after compilation / warm-up): the jitted vmapped PAML step; the same
   step as a loop over the 32 users (a jitted per-user gradient, summed on the host, then the same Adam
   update); the jitted MeLU step; eager PyTorch MeLU (a loop over the users, as MeLU's code does).

    PYTHONPATH=/path/to/torch python benchmarks/paml_step.py --steps 10 --threads 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

try:  # python -m benchmarks.paml_step, or imported by the tests
    from benchmarks.torch_util import import_torch
except ImportError:  # python benchmarks/paml_step.py
    from torch_util import import_torch
from jaxrec.methods import paml

VOCAB_U, VOCAB_I = (2, 7, 21, 3481), (6, 26, 2199, 7979)
WIDTH_I = (1, 7, 12, 4)


def fake_data(rng, n_users=256, n_items=3881, s=61, q=15):
    ux = np.stack([rng.integers(0, v, n_users) for v in VOCAB_U], 1).astype(np.int32)
    ix = tuple(np.where(rng.random((n_items, w)) < 0.7, rng.integers(0, v, (n_items, w)), -1).astype(np.int32)
               for v, w in zip(VOCAB_I, WIDTH_I))
    for a in ix:
        a[:, 0] = np.abs(a[:, 0])
    tasks = {"user": np.arange(n_users, dtype=np.int32), "s_item": rng.integers(0, n_items, (n_users, s)).astype(np.int32),
             "s_rating": rng.integers(1, 6, (n_users, s)).astype(np.float32), "s_mask": rng.random((n_users, s)) < 0.8,
             "q_item": rng.integers(0, n_items, (n_users, q)).astype(np.int32),
             "q_rating": rng.integers(1, 6, (n_users, q)).astype(np.float32), "q_mask": rng.random((n_users, q)) < 0.8}
    tasks["s_mask"][:, 0] = tasks["q_mask"][:, 0] = True
    part = {k: v[:64] for k, v in tasks.items()}
    return {"ux": ux, "ix": ix, "user_vocab": VOCAB_U, "item_vocab": VOCAB_I, "train": tasks, "val": part,
            "test": part, "val_major": np.zeros(64, bool), "test_major": np.zeros(64, bool), "counts": {}}


def torch_melu(torch, params, inner_lr, dtype):
    """MeLU's meta-step objective in PyTorch from jaxrec's parameter pytree (copied to torch tensors)."""
    emb = {"user": [torch.tensor(np.asarray(t), dtype=dtype, requires_grad=True) for t in params["emb"]["user"]],
           "item": [torch.tensor(np.asarray(t), dtype=dtype, requires_grad=True) for t in params["emb"]["item"]]}
    dec = [torch.tensor(np.asarray(x), dtype=dtype, requires_grad=True) for layer in params["dec"] for x in layer]

    def mlp(ws, x):
        for j in range(0, len(ws) - 2, 2):
            x = torch.relu(x @ ws[j] + ws[j + 1])
        return (x @ ws[-2] + ws[-1])[..., 0]

    def features(ux_row, items, ix):
        h = torch.cat([t[int(ux_row[f])] for f, t in enumerate(emb["user"])])
        parts = []
        for t, a in zip(emb["item"], ix):
            idx = torch.as_tensor(a[items])
            m = (idx >= 0).to(dtype)
            parts.append((t[idx.clamp(min=0)] * m[..., None]).sum(-2) / m.sum(-1, keepdim=True).clamp(min=1.0))
        return torch.cat([h.expand(len(items), -1), torch.cat(parts, -1)], -1)

    def mse(pred, r, m):
        r, m = torch.as_tensor(r, dtype=dtype), torch.as_tensor(m, dtype=dtype)
        return (m * (pred - r) ** 2).sum() / m.sum().clamp(min=1.0)

    def objective(ux, ix, batch):
        total = 0.0
        w = np.asarray(batch["w"])
        for i in range(len(w)):
            u = int(batch["user"][i])
            xs = features(ux[u], np.asarray(batch["s_item"][i]), ix)
            xq = features(ux[u], np.asarray(batch["q_item"][i]), ix)
            ls = mse(mlp(dec, xs), np.asarray(batch["s_rating"][i]), np.asarray(batch["s_mask"][i]))
            g = torch.autograd.grad(ls, dec, create_graph=True)
            phi = [p - inner_lr * gi for p, gi in zip(dec, g)]
            total = total + w[i] * mse(mlp(phi, xq), np.asarray(batch["q_rating"][i]), np.asarray(batch["q_mask"][i]))
        return total / max(w.sum(), 1.0)

    return emb, dec, objective


def median_time(fn, steps):
    fn()
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    args = p.parse_args(argv)
    torch = import_torch("benchmarks/paml_step.py", args.threads)
    rng = np.random.default_rng(0)
    data = fake_data(rng)

    # 1. float64 agreement of the MeLU meta-gradient
    jax.config.update("jax_enable_x64", True)
    cfg = paml.PAMLConfig(name="melu", inner_lr=1e-2)
    m = paml.method(cfg, data)
    state = m.init(jax.random.PRNGKey(0))
    batch = jax.tree_util.tree_map(lambda x: x[0], m.batches(0, 0))
    _, objective, _ = paml.make_objective(cfg, data["ux"], data["ix"])
    g = jax.grad(lambda q: objective(q, state.used >= 0, batch, True, 1)[0])(state.params)
    emb, dec, t_obj = torch_melu(torch, state.params, cfg.inner_lr, torch.float64)
    loss = t_obj(data["ux"], data["ix"], batch)
    tg = torch.autograd.grad(loss, [*emb["user"], *emb["item"], *dec])
    jg = [*g["emb"]["user"], *g["emb"]["item"], *[x for layer in g["dec"] for x in layer]]
    diff = max(float(np.max(np.abs(np.asarray(a) - b.numpy()))) for a, b in zip(jg, tg))
    print(f"float64 MeLU meta-gradient, jaxrec vs PyTorch: max |difference| {diff:.2e}")
    assert diff < 1e-8, diff
    jax.config.update("jax_enable_x64", False)

    # 2. float32 timing
    rows = {}
    for name in ("paml", "melu"):
        cfg = paml.PAMLConfig(name=name)
        m = paml.method(cfg, data)
        state = m.init(jax.random.PRNGKey(0))
        batch = jax.tree_util.tree_map(lambda x: x[0], m.batches(0, 0))
        step = jax.jit(m.step)
        rows[f"{name} jitted vmapped step"] = median_time(lambda: jax.block_until_ready(step(state, batch, None)), args.steps)
        if name == "paml":
            task_loss, _, _ = paml.make_objective(cfg, data["ux"], data["ix"])
            grad1 = jax.jit(jax.grad(lambda q, t: task_loss(q, state.used >= 0, t, True, 1)[0]))
            tx = optax.adam(cfg.outer_lr)
            apply = jax.jit(lambda q, o, gr: (lambda u: (optax.apply_updates(q, u[0]), u[1]))(tx.update(gr, o, q)))

            def loop_step():
                gs = [grad1(state.params, {k: batch[k][i] for k in paml.TASK_KEYS}) for i in range(32)]
                mean = jax.tree_util.tree_map(lambda *x: sum(x) / len(x), *gs)
                return jax.block_until_ready(apply(state.params, state.opt, mean))

            rows["paml loop over users"] = median_time(loop_step, max(2, args.steps // 3))
    emb, dec, t_obj = torch_melu(torch, state.params, 1e-5, torch.float32)
    opt = torch.optim.Adam([*emb["user"], *emb["item"], *dec], lr=5e-5)

    def torch_step():
        opt.zero_grad()
        t_obj(data["ux"], data["ix"], batch).backward()
        opt.step()

    rows["melu eager PyTorch step"] = median_time(torch_step, max(2, args.steps // 3))
    print(f"load average {os.getloadavg()[0]:.1f}, {args.threads} torch threads, jax {jax.__version__}, "
          f"torch {torch.__version__}")
    for k, v in rows.items():
        print(f"{k:32s} {1e3 * v:9.1f} ms")
    print(f"vmap vs loop (PAML): {rows['paml loop over users'] / rows['paml jitted vmapped step']:.1f}x (goal >= 10x)")
    print(f"jaxrec vs eager PyTorch (MeLU): {rows['melu eager PyTorch step'] / rows['melu jitted vmapped step']:.1f}x "
          "(goal >= 3x)")


if __name__ == "__main__":
    main()
