"""lambda-Opt's step cost (issue 29): the losses gather each table once, so each gradient is one scatter-add
per table; the step benchmark (benchmarks/lambda_opt_step.py) interleaves the variants, reports ratios to
mf_bpr and fix, runs as a script and as a module, and its eager PyTorch DUI step does the jaxrec step's work
(float64 agreement; where torch is installed)."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import benchmarks.lambda_opt_step as B
from jaxrec.methods import lambda_opt as L

ROOT = Path(__file__).resolve().parents[1]


def _batch(n_users=7, n_items=9, b=6, seed=0):
    r = np.random.default_rng(seed)
    return (jnp.asarray(r.integers(0, n_users, b)), jnp.asarray(r.integers(0, n_items, b)),
            jnp.asarray(r.integers(0, n_items, b)), jnp.ones(b))


@pytest.mark.parametrize("granularity", ("fix", "d", "du", "dui"))
def test_each_gradient_is_one_scatter_per_table(granularity):
    theta = {"user": jnp.ones((7, 3)), "item": jnp.ones((9, 3))}
    rng = np.random.default_rng(2)  # distinct lambdas per row, so a row mix-up shows
    lam = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.uniform(0.05, 0.5, x.shape), jnp.float32),
                                 L.init_lambda(granularity, 7, 9, 3))
    batch = _batch()
    for f, args in ((jax.grad(L.train_loss), (theta, lam, batch)), (jax.grad(L.validation_loss), (theta, lam, batch)),
                    (jax.grad(L.train_loss, argnums=1), (theta, lam, batch))):
        text = jax.jit(f).lower(*args).as_text()
        n_tables = len([x for x in jax.tree_util.tree_leaves(f(*args)) if x.ndim == 2])
        assert text.count('"stablehlo.scatter"(') == n_tables, (granularity, text.count('"stablehlo.scatter"('))
    # the stacked rows are the rows: the losses equal the plain three-gather formulas
    u, i, j, w = batch
    th = {"user": theta["user"].at[u].multiply(1.3), "item": theta["item"].at[i].multiply(0.7)}
    pu, qi, qj = th["user"][u], th["item"][i], th["item"][j]
    bpr = jnp.mean(jax.nn.softplus(jnp.sum(pu * qj, -1) - jnp.sum(pu * qi, -1)))
    reg = jnp.mean(jnp.sum(L.lambda_rows(lam, "user", u) * pu ** 2 + L.lambda_rows(lam, "item", i) * qi ** 2
                           + L.lambda_rows(lam, "item", j) * qj ** 2, -1))
    np.testing.assert_allclose(L.bpr(th, batch), bpr, rtol=1e-6)
    np.testing.assert_allclose(L.train_loss(th, lam, batch), bpr + reg, rtol=1e-6)


def test_interleave_rotates_the_order_and_summarise_takes_per_round_ratios():
    calls = []
    runners = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    rec = B.interleave(runners, steps=6, rounds=2)
    assert calls == list("aaabbbcccbbbcccaaa")  # 3 steps each, order rotated in round 2
    assert all(len(r["wall"]) == 2 and len(r["cpu"]) == 2 for r in rec.values())
    rec = {"mf_bpr": {"wall": [1.0, 2.0, 3.0], "cpu": [1.0, 1.0, 1.0]},
           "fix": {"wall": [3.0, 4.0, 3.0], "cpu": [3.0, 3.0, 3.0]}}
    out = B.summarise(rec, {"mf_bpr": 0.1, "fix": 0.2})
    assert out["fix"]["wall_over_mf_bpr"] == 2.0  # median of 3, 2, 1 (the ratio of the medians is 1.5)
    assert out["fix"]["cpu_over_mf_bpr"] == 3.0 and out["mf_bpr"]["wall_over_fix"] == 0.5
    assert out["fix"]["wall_ms"] == 3000.0 and out["fix"]["compile_s"] == 0.2


def test_benchmark_main_writes_ratios_and_refuses_bad_sizes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    B.main(["--users", "30", "--items", "40", "--per-user", "20", "--dim", "8", "--batch", "32", "--steps", "4",
            "--rounds", "2", "--variants", "mf_bpr", "fix", "dui", "--out", str(out)])
    text = capsys.readouterr().out
    assert "load average" in text and "| dui |" in text and "wall / fix" in text
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"mf_bpr", "fix", "dui"} and len(res["loadavg_before"]) == 3
    assert res["results"]["mf_bpr"]["wall_over_mf_bpr"] == 1.0 and res["results"]["fix"]["cpu_over_fix"] == 1.0
    assert res["results"]["dui"]["cpu_over_mf_bpr"] > 0
    for bad in (["--steps", "0"], ["--rounds", "0"], ["--variants", "nope"]):
        with pytest.raises(SystemExit) as e:
            B.main(bad)
        assert e.value.code == 2


@pytest.mark.parametrize("script", ("lambda_opt_step", "paml_step"))
def test_benchmarks_run_as_script_and_as_module(script):
    for cmd in ([sys.executable, f"benchmarks/{script}.py", "--help"], [sys.executable, "-m", f"benchmarks.{script}", "--help"]):
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "usage" in r.stdout, r.stderr[-2000:]


def test_torch_dui_step_does_the_same_work():
    pytest.importorskip("torch")
    agree = B.agreement(threads=1)
    assert set(agree) == {"val_loss", "lambda_user", "lambda_item", "theta_user", "theta_item"}
    assert max(agree.values()) < 1e-5, agree
