"""Where the ragged encoder's backward pass spends its time (issue 32): the stage-1 encoder (train mode, the
``[3B, L]`` = 768 x 50 input, ragged width 16 as the step runs it) with one part switched off at a time,
forward and forward + backward timed in interleaved rounds of one process.

Forms (each differentiates the summed encoder output):

- ``full``: as the step runs it (``mclrec.encode_train`` with the host-checked flag), gradient in every
  parameter;
- ``no_dropout``: the same with dropout and attention dropout off (``deterministic``): the mask draws and
  the masked products leave;
- ``no_emb_grad``: gradient in every parameter except the item table (no scatter-add into the
  12,102 x 64 table; the forward is unchanged);
- ``weights_only``: gradient in the block weights and layer norms only, both embedding tables held fixed
  (no scatter into the item or the position table);
- ``dense``: width 50 for every row (no ragged split, no sort and unsort of the rows).

The backward's time is (forward + backward) - forward, so each form's ratio says how much of the backward
that part costs. XLA's FLOP count of each form is printed beside it.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" taskset -c 0 \\
        python -m benchmarks.mclrec_encoder_parts --rounds 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.mclrec_step import beauty_like_batch, flops_of
from jaxrec.methods import mclrec as M

FORMS = ("full", "no_dropout", "no_emb_grad", "weights_only", "dense")


def build(form, n_items, batch_size, max_len):
    """``(fwd, fwd_bwd, args)`` of one form: jitted forward and value-and-gradient of the summed output."""
    rng = np.random.default_rng(1)
    x = jnp.concatenate([beauty_like_batch(rng, batch_size, max_len, n_items)["seq"] for _ in range(3)])
    cfg = M.preset("mclrec", batch_size=batch_size, max_len=max_len,
                   **({"ragged_width": 0} if form == "dense" else {}),
                   **({"dropout": 0.0, "attn_dropout": 0.0} if form == "no_dropout" else {}))
    model = M.build(cfg, n_items)
    theta = M.init_state(model, jax.random.PRNGKey(0)).theta
    flag = M.ragged_flag(cfg, np.asarray(x)[None, :batch_size])
    if flag is not None and not flag.value:
        raise RuntimeError("the benchmark batch does not fit the ragged split")
    fixed_keys = {"no_emb_grad": ("item_emb",), "weights_only": ("item_emb", "pos_emb")}.get(form, ())
    free = {k: v for k, v in theta.items() if k not in fixed_keys}  # theta: the encoder's flat module dict
    fixed = {k: v for k, v in theta.items() if k in fixed_keys}

    def enc_sum(free, fixed, x, k):
        return jnp.sum(M.encode_train(model, {**free, **fixed}, x, k, flag))

    key = jax.random.PRNGKey(2)
    args = (free, fixed, x, key)
    return jax.jit(enc_sum), jax.jit(jax.value_and_grad(enc_sum)), args


def _once(fn, args):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=3, help="calls per form and round (the median is kept)")
    p.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS))
    p.add_argument("--n-items", type=int, default=12101)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-len", type=int, default=50)
    a = p.parse_args(argv)
    print(f"jax {jax.__version__}, load average {os.getloadavg()[0]:.1f}")
    built = {f: build(f, a.n_items, a.batch_size, a.max_len) for f in a.forms}
    fl = {}
    for f, (fwd, both, args) in built.items():
        fl[f] = (flops_of(fwd.lower(*args).compile()), flops_of(both.lower(*args).compile()))
        jax.block_until_ready(fwd(*args)), jax.block_until_ready(both(*args))
    t = {f: {"fwd": [], "both": []} for f in built}
    for r in range(a.rounds):  # interleaved: load changes hit every form alike
        for f, (fwd, both, args) in built.items():
            t[f]["fwd"] += [_once(fwd, args) for _ in range(a.calls)]
            t[f]["both"] += [_once(both, args) for _ in range(a.calls)]
    print(f"{'form':16s} {'fwd ms':>8s} {'fwd+bwd ms':>11s} {'bwd ms':>8s} {'bwd/fwd':>8s} {'fwd GFLOP':>10s} "
          f"{'bwd/fwd FLOPs':>14s}")
    for f in built:
        tf, tb = statistics.median(t[f]["fwd"]), statistics.median(t[f]["both"])
        print(f"{f:16s} {tf * 1e3:8.1f} {tb * 1e3:11.1f} {(tb - tf) * 1e3:8.1f} {(tb - tf) / tf:8.2f} "
              f"{fl[f][0] / 1e9:10.2f} {(fl[f][1] - fl[f][0]) / fl[f][0]:14.2f}")
    print(f"load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
