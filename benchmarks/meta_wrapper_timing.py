"""Training-step time of Meta-Wrapper (N = 1, 2, 3), M2 and M3 as a ratio to DIN's step, and inference time,
measured in one process on the same batches (median over interleaved rounds, after compilation).

    python -m benchmarks.meta_wrapper_timing --dataset synthetic --batch-size 128 --out results
    JAXREC_DATA=../shared/data python -m benchmarks.meta_wrapper_timing --dataset ml-100k --batch-size 256 --out results

Formerly ``python experiments/meta_wrapper.py --table timing``. Every step is the method's own
(``jaxrec.methods.meta_wrapper.method(config, data).step``, jitted), called ``--steps`` times per round on
fixed random D_in / D_out batches of ``--batch-size`` rows drawn with replacement; the variants take turns
within each of ``--rounds`` rounds and the median seconds per step is kept. Inference is the same jitted
DIN forward for DIN's and MW's parameters on ``--eval-batch`` test rows. Writes
``<out>/meta_wrapper/<dataset>/timing.json`` (metrics ``step_ms_<v>``, ``ratio_<v>_over_din``,
``infer_ms_<v>``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.cli import live_output
from jaxrec.data import resolve_data_dir
from jaxrec.methods import meta_wrapper as mw
from jaxrec.models.ctr import ctr_logits, merge_params
from jaxrec.results import save_result

VARIANTS = {"din": {"model": "din", "variant": "plain"}, "mw_N1": {"variant": "M4", "n_inner": 1},
            "mw_N2": {"variant": "M4", "n_inner": 2}, "mw_N3": {"variant": "M4", "n_inner": 3},
            "M2": {"variant": "M2"}, "M3": {"variant": "M3", "n_inner": 1}}


def time_steps(base: mw.MWConfig, split, *, steps: int = 50, rounds: int = 5, seed: int = 0,
               log=print) -> dict[str, float]:
    """Median seconds per training step of each of :data:`VARIANTS` (``base`` with the variant's fields)
    and per inference call on ``base.eval_batch`` test rows (``infer_din`` / ``infer_mw_N1``)."""
    tr = split.train
    rows = tr.arrays()
    rng = np.random.default_rng(seed)
    idx = [{part: {k: jnp.asarray(v[i]) for k, v in rows.items()}  # the step's batch: D_in / D_out rows
            for part, i in (("in", rng.integers(0, len(tr), base.batch_size)),
                            ("out", rng.integers(0, len(tr), base.batch_size)))} for _ in range(steps)]
    runners = {}
    for name, over in VARIANTS.items():
        m = mw.method(dataclasses.replace(base, **over), split)
        step = jax.jit(m.step)
        state, _ = step(m.init(jax.random.PRNGKey(0)), idx[0], jax.random.PRNGKey(1))  # compile
        jax.block_until_ready(state)
        runners[name] = (step, state)
        log(f"compiled {name}")
    times = {k: [] for k in runners}
    for r in range(rounds):
        for name, (step, state) in runners.items():
            t0 = time.perf_counter()
            s = state
            for b in idx:
                s, _ = step(s, b, jax.random.PRNGKey(2))
            jax.block_until_ready(s)
            times[name].append((time.perf_counter() - t0) / len(idx))
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {1e3 * v[-1]:.1f} ms" for k, v in times.items()))
    out = {k: float(np.median(v)) for k, v in times.items()}
    # inference: the same jitted forward for DIN and MW (the wrapper changes training only)
    mcfg = mw.model_config(base, tr.n_items, tr.n_cats)
    pred = jax.jit(lambda params, batch: ctr_logits(params, batch, mcfg, "din"))
    test = {k: jnp.asarray(v[:base.eval_batch]) for k, v in split.test.arrays().items()}
    for name in ("din", "mw_N1"):
        state = runners[name][1]
        params = merge_params(state.theta, state.lam)
        jax.block_until_ready(pred(params, test))
        ts = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(10):
                logits = pred(params, test)
            jax.block_until_ready(logits)
            ts.append((time.perf_counter() - t0) / 10)
        out[f"infer_{name}"] = float(np.median(ts))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--emb-dim", type=int, default=16)
    p.add_argument("--eval-batch", type=int, default=4096, help="test rows per inference call")
    p.add_argument("--steps", type=int, default=50, help="steps per (variant, round)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is kept)")
    p.add_argument("--quick", action="store_true", help="5 steps, 2 rounds (a smoke test)")
    p.add_argument("--out", default="runs", help="results root (the stored timings: --out results)")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    for name in ("batch_size", "emb_dim", "eval_batch", "steps", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"argument --{name.replace('_', '-')}: {getattr(args, name)} is not allowed; use an integer >= 1")
    if args.quick:
        args.steps, args.rounds = 5, 2
    live_output()
    t_start = time.perf_counter()
    base = mw.MWConfig(batch_size=args.batch_size, emb_dim=args.emb_dim, eval_batch=args.eval_batch)
    data_dir = resolve_data_dir(args.data_dir) if args.dataset != "synthetic" else None
    split = mw.load(base, args.dataset, data_dir, 0)
    print(f"{args.dataset}: batch {args.batch_size}, history length {split.train.max_len}, "
          f"jax {jax.__version__} ({jax.devices()[0].platform}), load average {os.getloadavg()[0]:.1f}")
    sec = time_steps(base, split, steps=args.steps, rounds=args.rounds)
    metrics = {f"step_ms_{k}": 1e3 * v for k, v in sec.items() if not k.startswith("infer_")}
    metrics.update({f"ratio_{k}_over_din": v / sec["din"] for k, v in sec.items() if not k.startswith("infer_")})
    metrics.update({f"infer_ms_{k[len('infer_'):]}": 1e3 * v for k, v in sec.items() if k.startswith("infer_")})
    for k, v in metrics.items():
        print(f"{k:28s} {v:.3f}")
    if not args.no_save:
        path = save_result("meta_wrapper", args.dataset,
                           config={"batch_size": args.batch_size, "emb_dim": args.emb_dim, "timing_steps": args.steps,
                                   "timing_rounds": args.rounds, "eval_batch": args.eval_batch},
                           seed=0, metrics=metrics, wall_time=time.perf_counter() - t_start, root=args.out,
                           name="timing", extra={"load_average": os.getloadavg()})
        print(f"wrote {path}")
    return metrics


if __name__ == "__main__":
    main()
