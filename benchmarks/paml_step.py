"""Time the PAML meta-step (32 users, one jitted function vmapping the users) against the same step as a
Python loop over users, and the MeLU meta-step against eager PyTorch at the same shapes.

Shapes (ML-1M MeLU files under the PAML protocol): 32 users per meta-batch, support 61 / query 15 items
(the padded sizes of ml-1m-melu's meta-train users), 4 user fields and 4 item fields (genre up to 7 values,
director 12, actor 4 per movie) of 32-wide embeddings, decision MLP 256 -> 320 -> 192 -> 1, one inner step
(second order). Data are random with the real vocabulary sizes (the step's cost does not depend on values).

The MeLU step in PyTorch does the same work as jaxrec's: the same shapes, the same second-order inner step
(``create_graph=True``), and the same algebra of the first layer, whose input ``[h, e_j]`` repeats the user
embedding ``h`` on every row: jaxrec computes ``h @ W1[:128]`` once per user (``melu.decide_pair``); the
PyTorch step can do the same (``form="split"``) or concatenate ``[h, e_j]`` as MeLU's own code does
(``form="concat"``). Both are timed; the goal's ratio is against the faster of the two (eager PyTorch's
double backward through the weight slices of the split form is slow).

1. float64 agreement: the MeLU meta-gradient (w.r.t. every parameter) of jaxrec's objective and of the
   PyTorch step written term by term with autograd (``create_graph=True`` through the inner step), both
   forms, same parameters and batch; the maximum absolute difference is printed (must be < 1e-8).
2. float32 timing (median of ``--steps`` after compilation / warm-up): the jitted vmapped PAML step; the same
   step as a loop over the 32 users (a jitted per-user gradient, summed on the host, then the same Adam
   update) and the loop's per-user dispatch cost (a jitted call with the same inputs and outputs that
   computes nothing); the jitted MeLU step; eager PyTorch MeLU (a loop over the users, as MeLU's code does).
3. FLOPs and bytes of the compiled steps (XLA's ``cost_analysis``), against the float32 matmul rate this
   machine reaches at the MLP's shapes in the same run (the fraction printed).

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


def torch_melu(torch, params, inner_lr, dtype, form="split"):
    """MeLU's meta-step objective in PyTorch from jaxrec's parameter pytree (copied to torch tensors).
    ``form="split"``: the first layer as ``h @ W1[:d_h] + e @ W1[d_h:]`` (jaxrec's algebra); ``"concat"``:
    on the concatenated ``[h, e_j]`` rows (MeLU's code)."""
    if form not in ("split", "concat"):
        raise ValueError(f"torch_melu: form must be 'split' or 'concat', got {form!r}")
    emb = {"user": [torch.tensor(np.asarray(t), dtype=dtype, requires_grad=True) for t in params["emb"]["user"]],
           "item": [torch.tensor(np.asarray(t), dtype=dtype, requires_grad=True) for t in params["emb"]["item"]]}
    dec = [torch.tensor(np.asarray(x), dtype=dtype, requires_grad=True) for layer in params["dec"] for x in layer]

    def mlp(ws, h, e):
        if form == "concat":
            x = torch.relu(torch.cat([h.expand(len(e), -1), e], -1) @ ws[0] + ws[1])
        else:
            x = torch.relu(h @ ws[0][:len(h)] + e @ ws[0][len(h):] + ws[1])
        for j in range(2, len(ws) - 2, 2):
            x = torch.relu(x @ ws[j] + ws[j + 1])
        return (x @ ws[-2] + ws[-1])[..., 0]

    def features(ux_row, items, ix):
        h = torch.cat([t[int(ux_row[f])] for f, t in enumerate(emb["user"])])
        parts = []
        for t, a in zip(emb["item"], ix):
            idx = torch.as_tensor(a[items])
            m = (idx >= 0).to(dtype)
            parts.append((t[idx.clamp(min=0)] * m[..., None]).sum(-2) / m.sum(-1, keepdim=True).clamp(min=1.0))
        return h, torch.cat(parts, -1)

    def mse(pred, r, m):
        r, m = torch.as_tensor(r, dtype=dtype), torch.as_tensor(m, dtype=dtype)
        return (m * (pred - r) ** 2).sum() / m.sum().clamp(min=1.0)

    def objective(ux, ix, batch):
        total = 0.0
        w = np.asarray(batch["w"])
        for i in range(len(w)):
            u = int(batch["user"][i])
            h, es = features(ux[u], np.asarray(batch["s_item"][i]), ix)
            _, eq = features(ux[u], np.asarray(batch["q_item"][i]), ix)
            ls = mse(mlp(dec, h, es), np.asarray(batch["s_rating"][i]), np.asarray(batch["s_mask"][i]))
            g = torch.autograd.grad(ls, dec, create_graph=True)
            phi = [p - inner_lr * gi for p, gi in zip(dec, g)]
            total = total + w[i] * mse(mlp(phi, h, eq), np.asarray(batch["q_rating"][i]), np.asarray(batch["q_mask"][i]))
        return total / max(w.sum(), 1.0)

    return emb, dec, objective


def median_time(fn, steps, cpu=None, key=None):
    """Median wall time of ``steps`` calls after one warm-up call; with ``cpu`` (a dict), also the median
    process CPU time (all threads) under ``cpu[key]``: on a loaded machine it is the steadier comparison."""
    fn()
    ts, cs = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        ts.append(time.perf_counter() - t)
        cs.append(time.process_time() - c)
    if cpu is not None:
        cpu[key] = statistics.median(cs)
    return statistics.median(ts)


def _flops(compiled) -> tuple[float, float]:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca.get("flops", np.nan)), float(ca.get("bytes accessed", np.nan))


def matmul_rate(steps: int) -> float:
    """float32 FLOP/s of jitted plain matmuls at the MLP's shapes (all 32 users' support rows: 1952 x 128 @
    128 x 320 and 1952 x 320 @ 320 x 192), the better of the two."""
    best = 0.0
    for n, k, m in ((32 * 61, 128, 320), (32 * 61, 320, 192)):
        x, w = jnp.ones((n, k), jnp.float32), jnp.ones((k, m), jnp.float32)
        mm = jax.jit(lambda a, b: a @ b)
        best = max(best, 2 * n * k * m / median_time(lambda: jax.block_until_ready(mm(x, w)), 5 * steps))
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    args = p.parse_args(argv)
    if args.steps < 1 or args.threads < 1:
        p.error("--steps and --threads must be >= 1")
    torch = import_torch("benchmarks/paml_step.py", args.threads)
    rng = np.random.default_rng(0)
    data = fake_data(rng)
    load0 = os.getloadavg()

    # 1. float64 agreement of the MeLU meta-gradient (both PyTorch forms)
    jax.config.update("jax_enable_x64", True)
    cfg = paml.PAMLConfig(name="melu", inner_lr=1e-2)
    m = paml.method(cfg, data)
    state = m.init(jax.random.PRNGKey(0))
    batch = jax.tree_util.tree_map(lambda x: x[0], m.batches(0, 0))
    _, objective, _ = paml.make_objective(cfg, data["ux"], data["ix"])
    g = jax.grad(lambda q: objective(q, state.used >= 0, batch, True, 1)[0])(state.params)
    jg = [*g["emb"]["user"], *g["emb"]["item"], *[x for layer in g["dec"] for x in layer]]
    for form in ("split", "concat"):
        emb, dec, t_obj = torch_melu(torch, state.params, cfg.inner_lr, torch.float64, form)
        tg = torch.autograd.grad(t_obj(data["ux"], data["ix"], batch), [*emb["user"], *emb["item"], *dec])
        diff = max(float(np.max(np.abs(np.asarray(a) - b.numpy()))) for a, b in zip(jg, tg))
        print(f"float64 MeLU meta-gradient, jaxrec vs PyTorch ({form}): max |difference| {diff:.2e}")
        assert diff < 1e-8, diff
    jax.config.update("jax_enable_x64", False)

    # 2. float32 timing
    rows, flops, cpu = {}, {}, {}
    for name in ("paml", "melu"):
        cfg = paml.PAMLConfig(name=name)
        m = paml.method(cfg, data)
        state = m.init(jax.random.PRNGKey(0))
        batch = jax.tree_util.tree_map(lambda x: x[0], m.batches(0, 0))
        step = jax.jit(m.step)
        flops[name] = _flops(step.lower(state, batch, None).compile())
        rows[f"{name} jitted vmapped step"] = median_time(lambda: jax.block_until_ready(step(state, batch, None)),
                                                          args.steps, cpu, name)
        if name == "paml":
            task_loss, _, _ = paml.make_objective(cfg, data["ux"], data["ix"])
            grad1 = jax.jit(jax.grad(lambda q, t: task_loss(q, state.used >= 0, t, True, 1)[0]))
            empty = jax.jit(lambda q, t: jax.tree_util.tree_map(jnp.zeros_like, q))  # same in / out, no work
            tx = optax.adam(cfg.outer_lr)
            apply = jax.jit(lambda q, o, gr: (lambda u: (optax.apply_updates(q, u[0]), u[1]))(tx.update(gr, o, q)))
            tasks = [{k: batch[k][i] for k in paml.TASK_KEYS} for i in range(32)]
            t0 = tasks[0]
            flops["paml per user"] = _flops(grad1.lower(state.params, t0).compile())

            def loop_step():
                gs = [grad1(state.params, t) for t in tasks]
                mean = jax.tree_util.tree_map(lambda *x: sum(x) / len(x), *gs)
                return jax.block_until_ready(apply(state.params, state.opt, mean))

            rows["paml loop over users"] = median_time(loop_step, max(2, args.steps // 3), cpu, "paml loop")
            rows["paml loop: one user's gradient"] = median_time(lambda: jax.block_until_ready(grad1(state.params, t0)),
                                                                 args.steps)
            rows["paml loop: one user's dispatch"] = median_time(lambda: jax.block_until_ready(empty(state.params, t0)),
                                                                 args.steps)
    for form in ("split", "concat"):
        emb, dec, t_obj = torch_melu(torch, state.params, 1e-5, torch.float32, form)
        opt = torch.optim.Adam([*emb["user"], *emb["item"], *dec], lr=5e-5)

        def torch_step():
            opt.zero_grad()
            t_obj(data["ux"], data["ix"], batch).backward()
            opt.step()

        rows[f"melu eager PyTorch step ({form})"] = median_time(torch_step, max(2, args.steps // 3))
    rate = matmul_rate(args.steps)

    # 3. report
    load1 = os.getloadavg()
    print(f"load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end (1 min; 5 min {load1[1]:.1f}), "
          f"{os.cpu_count()} CPUs, {args.threads} torch threads, jax {jax.__version__}, torch {torch.__version__}")
    for k, v in rows.items():
        print(f"{k:38s} {1e3 * v:9.2f} ms")
    print(f"float32 matmul at the MLP's shapes: {rate / 1e9:.1f} GFLOP/s")
    for name, key in (("paml", "paml jitted vmapped step"), ("melu", "melu jitted vmapped step"),
                      ("paml per user", "paml loop: one user's gradient")):
        f, b = flops[name]
        print(f"{name:14s} XLA cost analysis: {f / 1e9:.3f} GFLOP, {b / 1e6:.0f} MB accessed; "
              f"{f / rows[key] / 1e9:.1f} GFLOP/s = {f / rows[key] / rate:.2f} of the matmul rate")
    loop, user, disp = (rows["paml loop over users"], rows["paml loop: one user's gradient"],
                        rows["paml loop: one user's dispatch"])
    best = flops["paml"][0] / rate
    print(f"loop: {1e3 * loop / 32:.2f} ms per user ({1e3 * user:.2f} ms its gradient alone), of which dispatch "
          f"{1e3 * disp:.2f} ms: compute-bound. The vmapped step at the matmul rate would take {1e3 * best:.1f} ms, "
          f"{loop / best:.1f}x faster than the loop: the most vmapping can give at this FLOP count")
    print(f"vmap vs loop (PAML): {loop / rows['paml jitted vmapped step']:.1f}x (goal >= 10x); in process CPU time "
          f"{1e3 * cpu['paml']:.1f} vs {1e3 * cpu['paml loop']:.1f} ms: {cpu['paml loop'] / cpu['paml']:.1f}x "
          f"(MeLU step {1e3 * cpu['melu']:.1f} ms CPU)")
    for form in ("split", "concat"):
        print(f"jaxrec vs eager PyTorch ({form}) (MeLU): "
              f"{rows[f'melu eager PyTorch step ({form})'] / rows['melu jitted vmapped step']:.1f}x")
    fast = min(rows["melu eager PyTorch step (split)"], rows["melu eager PyTorch step (concat)"])
    print(f"jaxrec vs the faster eager PyTorch form (MeLU): {fast / rows['melu jitted vmapped step']:.1f}x (goal >= 3x)")


if __name__ == "__main__":
    main()
