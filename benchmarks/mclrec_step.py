"""Time the jitted MCLRec training step and full-ranking evaluation at the paper's shapes.

Shapes: batch 256, max_len 50, d 64, 2 blocks, Beauty item count (12,101 items + padding). The step is
compiled first, then timed ``--steps`` times (``jax.block_until_ready``); we report the median wall time
and the median process CPU time per step, plus the load average (the CPU machine is shared). Variants:

- ``mclrec+repeat``: stage 1, stage 2, stage 1 again (three passes, what the authors' PyTorch code does
  per batch and what their 2.3-2.7 s / batch on a 2-core CPU refers to);
- ``mclrec``: stage 1 + stage 2 (the default in this library);
- ``mclrec_j``, ``cl4srec``, ``sasrec``: one update per batch.

Evaluation: full ranking of every item for all 22,363 Beauty users (validation histories, blocks of
1024 users), median of ``--eval-repeats`` passes after compilation.

    python benchmarks/mclrec_step.py                      # all variants, writes results/mclrec/bench_<backend>/
    python benchmarks/mclrec_step.py --variants mclrec+repeat --steps 10
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.methods import mclrec as M

AUTHORS_S_PER_BATCH = (2.3, 2.7)
VARIANTS = {
    "mclrec+repeat": ("mclrec", {"repeat_stage1": True}),
    "mclrec": ("mclrec", {}),
    "mclrec_j": ("mclrec_j", {}),
    "cl4srec": ("cl4srec", {}),
    "sasrec": ("sasrec", {}),
}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def beauty_like_batch(rng, b, max_len, n_items):
    """Left-padded random batch whose lengths follow Beauty's prefix-instance distribution (median 4,
    90th percentile 22, 5.6% at the 50 cap). The step cost does not depend on the lengths."""
    lens = np.minimum(rng.geometric(1 / 9.0, size=b), max_len)
    seq = rng.integers(1, n_items + 1, size=(b, max_len))
    seq = np.where(np.arange(max_len)[None] >= max_len - lens[:, None], seq, 0).astype(np.int32)
    return {"seq": jnp.asarray(seq), "target": jnp.asarray(rng.integers(1, n_items + 1, size=b), jnp.int32)}


def time_step(name, n_items, batch_size, max_len, steps, rng):
    model_name, over = VARIANTS[name]
    cfg = M.preset(model_name, batch_size=batch_size, max_len=max_len, **over)
    model = M.build(cfg, n_items)
    state = M.init_state(model, jax.random.PRNGKey(0))
    step = M.make_step(model)
    batches = [beauty_like_batch(rng, batch_size, max_len, n_items) for _ in range(4)]
    t = time.perf_counter()
    state, aux = step(state, batches[0], jax.random.PRNGKey(0))
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t
    for i in range(2):  # warm-up
        state, aux = step(state, batches[i % 4], jax.random.PRNGKey(i + 1))
    jax.block_until_ready(state)
    wall, cpu = [], []
    for i in range(steps):
        c, t = _cpu(), time.perf_counter()
        state, aux = step(state, batches[i % 4], jax.random.PRNGKey(100 + i))
        jax.block_until_ready(state)
        wall.append(time.perf_counter() - t)
        cpu.append(_cpu() - c)
    if not np.isfinite(float(aux["loss"])):
        raise FloatingPointError(f"{name}: non-finite loss in the benchmark")
    return {"variant": name, "compile_s": compile_s, "median_step_s": statistics.median(wall),
            "min_step_s": min(wall), "median_cpu_s": statistics.median(cpu), "steps": steps}


def time_eval(n_users, n_items, max_len, repeats, rng):
    cfg = M.preset("mclrec", max_len=max_len)
    model = M.build(cfg, n_items)
    state = M.init_state(model, jax.random.PRNGKey(0))
    lens = np.minimum(rng.geometric(1 / 7.0, size=n_users), max_len)
    seq = rng.integers(1, n_items + 1, size=(n_users, max_len))
    seq = np.where(np.arange(max_len)[None] >= max_len - lens[:, None], seq, 0).astype(np.int32)
    target = rng.integers(1, n_items + 1, size=n_users).astype(np.int32)
    t = time.perf_counter()
    M.evaluate(model, state.theta, seq, target)
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        M.evaluate(model, state.theta, seq, target)
        times.append(time.perf_counter() - t)
    return {"n_users": n_users, "first_call_s": first, "median_s": statistics.median(times)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--n-items", type=int, default=12101)
    p.add_argument("--eval-users", type=int, default=22363)
    p.add_argument("--eval-repeats", type=int, default=3)
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--out", default="results")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    backend = jax.default_backend()
    print(f"backend {backend} ({jax.devices()[0].device_kind}), {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()}", flush=True)
    rows = []
    for v in args.variants:
        r = time_step(v, args.n_items, args.batch_size, args.max_len, args.steps, rng)
        r["load_avg_after"] = os.getloadavg()[0]
        rows.append(r)
        ratio = r["median_step_s"] / AUTHORS_S_PER_BATCH[0], r["median_step_s"] / AUTHORS_S_PER_BATCH[1]
        print(f"{v:14s} median {r['median_step_s'] * 1e3:8.1f} ms/batch (min {r['min_step_s'] * 1e3:.1f}, "
              f"CPU {r['median_cpu_s'] * 1e3:.1f} ms), compile {r['compile_s']:.1f}s; "
              f"vs authors 2.3-2.7 s: x{ratio[1]:.3f}-x{ratio[0]:.3f}", flush=True)
    ev = None
    if not args.no_eval:
        ev = time_eval(args.eval_users, args.n_items, args.max_len, args.eval_repeats, rng)
        print(f"full-ranking evaluation of {ev['n_users']} users x {args.n_items} items: "
              f"median {ev['median_s']:.2f}s (first call incl. compile {ev['first_call_s']:.2f}s)", flush=True)
    if not args.no_save:
        from jaxrec.results import save_result

        metrics = {f"{r['variant']}_median_step_s": r["median_step_s"] for r in rows}
        if ev:
            metrics["eval_all_users_s"] = ev["median_s"]
        path = save_result("mclrec", f"bench_{backend}", config=vars(args), seed=0, metrics=metrics,
                           wall_time=sum(r["median_step_s"] * r["steps"] for r in rows),
                           extra={"steps": rows, "eval": ev, "authors_s_per_batch": AUTHORS_S_PER_BATCH,
                                  "load_avg": os.getloadavg()}, root=args.out, name="step_times")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
