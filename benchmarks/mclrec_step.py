"""Time the jitted MCLRec training step and full-ranking evaluation at the paper's shapes, against this
machine's float32 matmul rate measured in the same run.

Shapes: batch 256, max_len 50, d 64, 2 blocks, Beauty item count (12,101 items + padding). Per variant the
step is lowered and compiled (compile time reported), its FLOPs read from XLA's cost analysis
(``jax.jit(step).lower(...).compile().cost_analysis()["flops"]``), then timed ``--steps`` times
(``jax.block_until_ready``): median wall time, median process CPU time, achieved GFLOP/s = FLOPs / median
wall time, and its fraction of the matmul rate. The matmul rate is the best GFLOP/s of jitted float32
matmuls at the step's own shapes (the FFN ``[3BL, d] x [d, ff]``, the attention projections
``[3BL, d] x [d, d]``, the logits ``[B, d] x [d, n_items]``), measured in this run, right before the steps.
The encoder's backward / forward ratio (train mode, the ``[3B, L]`` input of stage 1) is reported in time
and in XLA FLOPs. Every figure is a ratio from one run; the load average is printed beside it (the CPU
machine is shared). Variants:

- ``mclrec+repeat``: stage 1, stage 2, stage 1 again (three passes; the authors' code per batch, and the
  ``mclrec`` preset since issue 32), run as a two-trip loop; XLA counts a loop body once, so the benchmark
  adds one stage-1 update's FLOPs (compiled alone) to the step's count;
- ``mclrec+repeat/dense``: the same at width 50 for every row (no ragged encoding);
- ``mclrec+repeat/cond``: the same with the ragged path chosen on the device by ``lax.cond`` (how the step
  ran before the host-side check of ``mclrec.ragged_flag``; its backward keeps both branches' residuals);
- ``mclrec``: stage 1 + stage 2 only;
- ``mclrec_j``, ``cl4srec``, ``sasrec``: one update per batch.

Evaluation: full ranking of every item for all 22,363 Beauty users (validation histories, blocks of
1024 users), median of ``--eval-repeats`` passes after compilation; its FLOPs (XLA, per block shape) and
fraction of the matmul rate at its own shapes (scores, FFN), measured in the same run.

Persistent compilation cache (opt-in): ``--compilation-cache DIR`` or ``JAXREC_COMPILATION_CACHE=DIR``
sets ``jax_compilation_cache_dir`` (and caches every compilation, however short), so a second run with the
same shapes loads the compiled step instead of paying the compile time again.

    python benchmarks/mclrec_step.py                      # all variants, writes results/mclrec/bench_<backend>/
    python benchmarks/mclrec_step.py --variants mclrec+repeat sasrec --steps 5 --no-eval --no-save
    JAXREC_COMPILATION_CACHE=/tmp/jax_cache python benchmarks/mclrec_step.py --variants sasrec --steps 3
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

from jaxrec import augment
from jaxrec.methods import mclrec as M
from jaxrec.results import save_result

VARIANTS = {
    "mclrec+repeat": ("mclrec", {"repeat_stage1": True}),
    "mclrec+repeat/dense": ("mclrec", {"repeat_stage1": True, "ragged_width": 0}),  # no ragged encoding
    "mclrec+repeat/cond": ("mclrec", {"repeat_stage1": True}),  # ragged path chosen by lax.cond on the device
    "mclrec": ("mclrec", {"repeat_stage1": False}),
    "mclrec_j": ("mclrec_j", {}),
    "cl4srec": ("cl4srec", {}),
    "sasrec": ("sasrec", {}),
}


def enable_compilation_cache(path: str | None) -> str | None:
    """Opt-in persistent compilation cache (``--compilation-cache`` / ``JAXREC_COMPILATION_CACHE``)."""
    path = path or os.environ.get("JAXREC_COMPILATION_CACHE")
    if path:
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def flops_of(compiled) -> float:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca.get("flops", float("nan")))


def _median_time(fn, args, repeats):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_rates(shapes, repeats=5):
    """(best, per shape) float32 matmul GFLOP/s of ``{name: (m, k, n)}`` (measured now, same process)."""
    rates = {}
    for name, (m, k, n) in shapes.items():
        a = jax.random.normal(jax.random.PRNGKey(0), (m, k), jnp.float32)
        b = jax.random.normal(jax.random.PRNGKey(1), (k, n), jnp.float32)
        t = _median_time(jax.jit(lambda x, y: x @ y), (a, b), repeats)
        rates[name] = 2.0 * m * k * n / t / 1e9
    return max(rates.values()), rates


def matmul_rate(batch_size, max_len, hidden, ff, n_items, repeats=5):
    """Best float32 matmul GFLOP/s at the step's shapes (measured now, same process)."""
    rows = 3 * batch_size * max_len
    return matmul_rates({"ffn": (rows, hidden, ff), "proj": (rows, hidden, hidden),
                         "logits": (batch_size, hidden, n_items)}, repeats)


def encoder_bwd_fwd(n_items, batch_size, max_len, repeats=3):
    """Encoder (train mode, dropout on) on the ``[3B, L]`` stage-1 input, in three forms: ``ragged`` (the
    path checked on the host, as the step runs it), ``cond`` (ragged, chosen by ``lax.cond``) and
    ``dense`` (width 50): forward time, forward + backward time, and the backward / forward ratios in time
    and in XLA FLOPs (the ``cond`` form's FLOPs count its full-width branch)."""
    rng = np.random.default_rng(1)
    x = jnp.concatenate([beauty_like_batch(rng, batch_size, max_len, n_items)["seq"] for _ in range(3)])
    key = jax.random.PRNGKey(2)
    out = {}
    for form, over in (("ragged", {}), ("cond", {}), ("dense", {"ragged_width": 0})):
        cfg = M.preset("mclrec", batch_size=batch_size, max_len=max_len, **over)
        model = M.build(cfg, n_items)
        theta = M.init_state(model, jax.random.PRNGKey(0)).theta
        flag = M.ragged_flag(cfg, np.asarray(x)[None, :batch_size]) if form == "ragged" else None
        if flag is not None and not flag.value:
            raise RuntimeError("the benchmark batch does not fit the ragged split; use another seed")

        def enc_sum(th, x, k, model=model, flag=flag):
            return jnp.sum(M.encode_train(model, th, x, k, flag))

        fwd, both = jax.jit(enc_sum), jax.jit(jax.value_and_grad(enc_sum))
        f_fl = flops_of(fwd.lower(theta, x, key).compile())
        b_fl = flops_of(both.lower(theta, x, key).compile())
        t_f = _median_time(fwd, (theta, x, key), repeats)
        t_b = _median_time(both, (theta, x, key), repeats)
        out[form] = {"fwd_s": t_f, "fwd_bwd_s": t_b, "bwd_over_fwd_time": (t_b - t_f) / t_f,
                     "fwd_gflop": f_fl / 1e9, "bwd_over_fwd_flops": (b_fl - f_fl) / f_fl}
    return out


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
    batches = [beauty_like_batch(rng, batch_size, max_len, n_items) for _ in range(4)]
    if not name.endswith("/cond"):  # the host-side check the training loop makes (one flag for the 4 batches)
        flag = M.ragged_flag(cfg, np.stack([np.asarray(b["seq"]) for b in batches]))
        if flag is not None:
            batches = [dict(b, ragged=flag) for b in batches]
    t = time.perf_counter()
    step = jax.jit(M.make_step(model, jit=False)).lower(state, batches[0], jax.random.PRNGKey(0)).compile()
    compile_s = time.perf_counter() - t
    flops = flops_of(step)
    if cfg.uses_augmenters and cfg.repeat_stage1 and not cfg.joint:
        # XLA's cost analysis counts a while loop's body once: add the second trip's stage 1 (its own FLOPs)
        flops += stage1_flops(model, state, batches[0])
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
    med = statistics.median(wall)
    return {"variant": name, "compile_s": compile_s, "median_step_s": med, "min_step_s": min(wall),
            "median_cpu_s": statistics.median(cpu), "steps": steps, "gflop": flops / 1e9,
            "gflops_achieved": flops / med / 1e9}


def stage1_flops(model, state, batch) -> float:
    """XLA FLOPs of one stage-1 update (``parts.inner``) on ``batch``, its views made as the step makes them."""
    c, parts = model.config, M.make_parts(model)

    def stage1(state, batch, key):
        k_aug, k1 = jax.random.split(key)
        views = augment.two_views(k_aug, batch["seq"], c.crop_ratio, c.mask_ratio, c.reorder_ratio)
        inner = {"seq": batch["seq"], "target": batch["target"], "views": views, "key": k1,
                 "ragged": batch.get("ragged")}
        return parts.inner(state, inner)[0]

    return flops_of(jax.jit(stage1).lower(state, batch, jax.random.PRNGKey(0)).compile())


def time_eval(n_users, n_items, max_len, repeats, rng):
    """Median wall time of ``M.evaluate`` over ``n_users`` synthetic Beauty-like histories, its FLOPs (XLA's cost
    analysis of each block shape ``evaluate`` dispatches, summed over its blocks) and the fraction of the best
    float32 matmul rate at the evaluation's own shapes (scores ``[block, d] x [d, n_items]``, the FFN
    ``[block * L, d] x [d, ff]``), measured in the same process just before."""
    cfg = M.preset("mclrec", max_len=max_len)
    model = M.build(cfg, n_items)
    state = M.init_state(model, jax.random.PRNGKey(0))
    lens = np.minimum(rng.geometric(1 / 7.0, size=n_users), max_len)
    seq = rng.integers(1, n_items + 1, size=(n_users, max_len))
    seq = np.where(np.arange(max_len)[None] >= max_len - lens[:, None], seq, 0).astype(np.int32)
    target = rng.integers(1, n_items + 1, size=n_users).astype(np.int32)
    ranks, shapes = M.make_eval(model), []

    def counting(theta, sq, tg):  # evaluate's own blocks, so the count follows its trimming
        shapes.append(tuple(sq.shape))
        return ranks(theta, sq, tg)

    t = time.perf_counter()
    M.evaluate(model, state.theta, seq, target, ranks_fn=counting)
    first = time.perf_counter() - t
    flops = {sh: flops_of(ranks.lower(state.theta, jnp.zeros(sh, jnp.int32), jnp.ones(sh[:1], jnp.int32)).compile())
             for sh in set(shapes)}
    total = sum(flops[sh] for sh in shapes)
    blk = cfg.eval_block
    peak, rates = matmul_rates({"scores": (blk, cfg.hidden, n_items), "ffn": (blk * max_len, cfg.hidden, cfg.ff)})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        M.evaluate(model, state.theta, seq, target, ranks_fn=ranks)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    achieved = total / med / 1e9
    return {"n_users": n_users, "first_call_s": first, "median_s": med, "blocks": len(shapes),
            "block_widths": sorted({sh[1] for sh in shapes}), "gflop": total / 1e9, "gflops_achieved": achieved,
            "matmul_rates": rates, "matmul_gflops": peak, "fraction": achieved / peak,
            "load_avg_after": os.getloadavg()[0]}


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
    p.add_argument("--no-encoder", action="store_true", help="skip the encoder backward / forward ratio")
    p.add_argument("--compilation-cache", default=None,
                   help="persistent compilation cache directory (default: $JAXREC_COMPILATION_CACHE; off if unset)")
    p.add_argument("--out", default="results")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    for k in ("steps", "batch_size", "max_len", "n_items", "eval_users", "eval_repeats"):
        if getattr(args, k) < 1 or (k == "batch_size" and args.batch_size < 2):
            p.error(f"--{k.replace('_', '-')} must be a positive integer (batch size at least 2)")
    cache = enable_compilation_cache(args.compilation_cache)

    rng = np.random.default_rng(0)
    backend = jax.default_backend()
    print(f"backend {backend} ({jax.devices()[0].device_kind}), {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()}, compilation cache {cache or 'off'}", flush=True)
    c = M.MCLRecConfig()
    rows, enc = [], None
    for v in args.variants:
        peak, rates = matmul_rate(args.batch_size, args.max_len, c.hidden, c.ff, args.n_items)
        r = time_step(v, args.n_items, args.batch_size, args.max_len, args.steps, rng)
        r.update(matmul_gflops=peak, matmul_rates=rates, fraction=r["gflops_achieved"] / peak,
                 load_avg_after=os.getloadavg()[0])
        rows.append(r)
        print(f"{v:14s} median {r['median_step_s'] * 1e3:8.1f} ms/batch (min {r['min_step_s'] * 1e3:.1f}, "
              f"CPU {r['median_cpu_s'] * 1e3:.1f} ms), compile {r['compile_s']:.1f}s; {r['gflop']:.1f} GFLOP "
              f"-> {r['gflops_achieved']:.1f} GFLOP/s = {r['fraction']:.0%} of the matmul rate {peak:.1f} "
              f"GFLOP/s (" + ", ".join(f"{k} {x:.1f}" for k, x in rates.items()) + f"); load {r['load_avg_after']:.1f}",
              flush=True)
    if not args.no_encoder:
        enc = encoder_bwd_fwd(args.n_items, args.batch_size, args.max_len)
        enc["load_avg_after"] = os.getloadavg()[0]
        for form in ("ragged", "cond", "dense"):
            e = enc[form]
            print(f"encoder [3B, L] train mode, {form:6s}: forward {e['fwd_s'] * 1e3:.1f} ms, forward+backward "
                  f"{e['fwd_bwd_s'] * 1e3:.1f} ms: backward / forward {e['bwd_over_fwd_time']:.2f}x in time, "
                  f"{e['bwd_over_fwd_flops']:.2f}x in XLA FLOPs", flush=True)
        print(f"load {enc['load_avg_after']:.1f}", flush=True)
    ev = None
    if not args.no_eval:
        ev = time_eval(args.eval_users, args.n_items, args.max_len, args.eval_repeats, rng)
        print(f"full-ranking evaluation of {ev['n_users']} users x {args.n_items} items: "
              f"median {ev['median_s']:.2f}s (first call incl. compile {ev['first_call_s']:.2f}s); {ev['gflop']:.1f} GFLOP "
              f"in {ev['blocks']} blocks -> {ev['gflops_achieved']:.1f} GFLOP/s = {ev['fraction']:.0%} of the matmul rate "
              f"{ev['matmul_gflops']:.1f} GFLOP/s (" + ", ".join(f"{k} {x:.1f}" for k, x in ev["matmul_rates"].items())
              + f"); load {ev['load_avg_after']:.1f}", flush=True)
    if not args.no_save:
        metrics = {f"{r['variant']}_median_step_s": r["median_step_s"] for r in rows}
        metrics.update({f"{r['variant']}_matmul_fraction": r["fraction"] for r in rows})
        if ev:
            metrics["eval_all_users_s"] = ev["median_s"]
            metrics["eval_matmul_fraction"] = ev["fraction"]
        path = save_result("mclrec", f"bench_{backend}", config=vars(args), seed=0, metrics=metrics,
                           wall_time=sum(r["median_step_s"] * r["steps"] for r in rows),
                           extra={"steps": rows, "eval": ev, "encoder": enc, "load_avg": os.getloadavg()},
                           root=args.out, name="step_times")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
