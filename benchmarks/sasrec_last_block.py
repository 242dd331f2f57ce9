"""SASRec encoder, forward and forward + backward at MCLRec's stage-1 shape ``[3B, L]`` (train mode, dense):
the full last block (``sequence_output(...)[:, -1]``, the form before issue 32's change) against the
last-position-only last block (``SASRec.__call__``), both compiled in one process and timed alternately.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
        taskset -c 0 python benchmarks/sasrec_last_block.py --rounds 7
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or as benchmarks.<name>
from jaxrec.methods import mclrec as M  # noqa: E402
from jaxrec.models import sasrec as S  # noqa: E402

try:
    from mclrec_step import beauty_like_batch, flops_of  # noqa: E402
except ImportError:  # python -m benchmarks.sasrec_last_block
    from benchmarks.mclrec_step import beauty_like_batch, flops_of  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--n-items", type=int, default=12101)
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args(argv)
    if min(a.batch_size, a.max_len, a.n_items, a.rounds) < 1:
        p.error("--batch-size, --max-len, --n-items and --rounds must be positive")
    model = M.build(M.preset("mclrec", batch_size=a.batch_size, max_len=a.max_len), a.n_items)
    enc, theta = model.encoder, M.init_state(model, jax.random.PRNGKey(0)).theta
    rng = np.random.default_rng(1)
    x = jnp.concatenate([beauty_like_batch(rng, a.batch_size, a.max_len, a.n_items)["seq"] for _ in range(3)])
    key = jax.random.PRNGKey(2)
    forms = {
        "full": lambda th, x, k: enc.apply({"params": th}, x, deterministic=False, rngs={"dropout": k},
                                           method=S.SASRec.sequence_output)[:, -1],
        "last": lambda th, x, k: enc.apply({"params": th}, x, deterministic=False, rngs={"dropout": k}),
    }
    fns = {}
    for name, f in forms.items():
        loss = lambda th, x, k, f=f: jnp.sum(f(th, x, k) ** 2)  # noqa: E731
        fwd = jax.jit(loss).lower(theta, x, key).compile()
        both = jax.jit(jax.value_and_grad(loss)).lower(theta, x, key).compile()
        jax.block_until_ready((fwd(theta, x, key), both(theta, x, key)))
        fns[name] = (fwd, both, flops_of(fwd), flops_of(both))
    times = {n: {"fwd": [], "both": []} for n in fns}
    load0 = os.getloadavg()[0]
    for _ in range(a.rounds):
        for n, (fwd, both, _, _) in fns.items():
            for part, fn in (("fwd", fwd), ("both", both)):
                t = time.perf_counter()
                jax.block_until_ready(fn(theta, x, key))
                times[n][part].append(time.perf_counter() - t)
    med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in times.items()}
    for n, (_, _, ff, bf) in fns.items():
        f, b = med[n]["fwd"], med[n]["both"]
        print(f"{n}: fwd {f * 1e3:.0f} ms, fwd+bwd {b * 1e3:.0f} ms, bwd/fwd time {(b - f) / f:.2f}, "
              f"GFLOP fwd {ff / 1e9:.2f} fwd+bwd {bf / 1e9:.2f} (bwd/fwd {(bf - ff) / ff:.2f})")
    print(f"ratio last/full fwd+bwd: {med['last']['both'] / med['full']['both']:.3f}; "
          f"load {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    return med


if __name__ == "__main__":
    main()
