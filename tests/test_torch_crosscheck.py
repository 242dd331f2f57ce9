"""Cross-checks against independent PyTorch implementations (``benchmarks/mal_torch.py``,
``benchmarks/meta_wrapper_torch.py``): in float64, the PyTorch steps, written term by term in torch ops with
torch's autograd, give the same losses, gradients and hypergradients as jaxrec's jitted steps.

PyTorch is not a jaxrec dependency: these tests run where it is installed (``pip install torch``) and are
skipped elsewhere. Importing the benchmarks turns on ``jax_enable_x64`` for this process (as the other
float64 tests do locally), which is why they run in a subprocess."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]


def _run(code: str):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_mal_update_and_hypergradients_agree_with_pytorch():
    out = _run("""
        import benchmarks.mal_torch as B
        from experiments.mal import load_split
        from jaxrec.methods import mal
        split = load_split("synthetic", None, 0)
        for base in ("mf", "lightgcn"):
            for mode in B.MODES:
                cfg = mal.MALConfig(base=base, batch_size=512, meta_batch_size=512, n_aux_neg=32, **B.MODES[mode])
                batch, meta, graph, nu, ni = B.fixed_batches(cfg, split)
                for backend in (("segment", "dense") if base == "lightgcn" else ("segment",)):
                    agree = B.agreement(cfg, batch, meta, graph, nu, ni, backend)
                    assert set(agree) >= {"L_in", "theta_after_step", "meta_loss"}, agree
                    assert ("d_lambda" in agree) == cfg.meta, agree
                    assert max(agree.values()) < 1e-9, (base, mode, backend, agree)
                    print(base, mode, backend, max(agree.values()))
    """)
    assert out.count("\n") == 3 + 6  # every (base, mode, backend) combination ran


def test_meta_wrapper_gradients_agree_with_pytorch():
    out = _run("""
        import numpy as np
        import benchmarks.meta_wrapper_torch as B
        from jaxrec.methods import meta_wrapper as mw
        tr = mw.load(mw.MWConfig(), "synthetic", None, 0).train
        data = {k: np.asarray(v) for k, v in tr.arrays().items()}
        rng = np.random.default_rng(1)
        i_in, i_out = rng.integers(0, len(tr), 64), rng.integers(0, len(tr), 64)
        for cfg in (mw.MWConfig(variant="plain"), mw.MWConfig(variant="M4", n_inner=1),
                    mw.MWConfig(variant="M4", n_inner=2, beta=0.5)):
            diff = B.agreement(cfg, mw.model_config(cfg, tr.n_items, tr.n_cats), data, i_in, i_out)
            assert diff < 1e-9, (cfg.variant, cfg.n_inner, diff)
            print(cfg.variant, cfg.n_inner, diff)
    """)
    assert out.count("\n") == 3
