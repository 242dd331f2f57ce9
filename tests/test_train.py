"""Tests for jaxrec.train (early stopping, checkpoint round trip, resume after interrupt, fit loop),
jaxrec.results (save_result content, mean_std, format_table), jaxrec.losses and jaxrec.cli."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec import cli, losses, results
from jaxrec import method as protocol
from jaxrec.train import Checkpointer, EarlyStopping, TrainState, fit


# ----------------------------------------------------------------------------------- early stopping
def test_early_stopping_max_and_min():
    es = EarlyStopping(patience=2, mode="max")
    seq = [0.1, 0.3, 0.2, 0.3, 0.25]  # best 0.3 at epoch 1; 0.3 again is not an improvement
    flags = [es.update(v, e) for e, v in enumerate(seq[:4])]
    assert flags == [True, True, False, False]
    assert es.should_stop and es.best == 0.3 and es.best_epoch == 1
    es = EarlyStopping(patience=1, mode="min")
    assert es.update(1.0) and es.update(0.5) and not es.update(float("nan"))
    assert es.should_stop
    assert not EarlyStopping(None).should_stop


def _toy_problem(target=3.0):
    """Quadratic loss (w - target)^2 with Adam; validation metric = -|w - target| is maximised."""
    tx = optax.adam(0.1)

    @jax.jit
    def step(state):
        loss, g = jax.value_and_grad(lambda p: jnp.sum((p["w"] - target) ** 2))(state.params)
        key, sub = jax.random.split(state.key)
        noise = 0.01 * jax.random.normal(sub, ())
        g = jax.tree.map(lambda x: x + noise, g)
        return state.apply_gradients(g, tx).replace(key=key), loss

    def epoch_fn(state, epoch):
        for _ in range(3):
            state, loss = step(state)
        return state, {"loss": loss}

    def eval_fn(state):
        return {"score": -jnp.abs(state.params["w"] - target).sum()}

    state = TrainState.create({"w": jnp.zeros(2)}, tx, jax.random.PRNGKey(0))
    return state, epoch_fn, eval_fn


def test_fit_early_stopping_keeps_best_state():
    calls = []
    vals = [0.1, 0.5, 0.4, 0.3, 0.2, 0.9]  # best at epoch 1, patience 3 stops at epoch 4

    def epoch_fn(state, epoch):
        calls.append(epoch)
        return {"x": jnp.asarray(float(epoch))}, {"loss": 1.0}

    def eval_fn(state):
        return {"ndcg@20": vals[int(state["x"])]}

    best, hist = fit({"x": jnp.asarray(-1.0)}, epoch_fn, eval_fn, epochs=6, patience=3, metric="ndcg@20",
                     log=None)
    assert calls == [0, 1, 2, 3, 4]
    assert float(best["x"]) == 1.0
    assert hist.best_epoch == 1 and hist.stopped_early and len(hist) == 5
    assert hist.best_metrics["ndcg@20"] == 0.5
    assert [h["improved"] for h in hist] == [True, True, False, False, False]


def test_fit_raises_on_nan_loss():
    with pytest.raises(FloatingPointError, match="epoch 0"):
        fit(0, lambda s, e: (s, {"loss": float("nan")}), None, epochs=2, log=None)


def test_checkpoint_round_trip_with_optax_and_typed_key(tmp_path):
    tx = optax.adam(1e-2)
    params = {"user": jnp.arange(6.0).reshape(2, 3), "item": jnp.ones((4, 3)), "b": jnp.array(2, jnp.int32)}
    state = TrainState.create(params, tx, jax.random.key(3))
    grads = jax.tree.map(jnp.ones_like, params)
    grads["b"] = jnp.zeros((), jnp.int32)
    state = jax.jit(lambda s, g: s.apply_gradients(g, tx))(state, jax.tree.map(lambda g: g.astype(jnp.float32), grads))
    ck = Checkpointer(tmp_path / "ck")
    assert ck.restore(state) is None
    ck.save(7, state, meta={"note": "x"})
    assert not list((tmp_path / "ck").glob("*.tmp*"))  # atomic: no temp file left
    template = TrainState.create(jax.tree.map(jnp.zeros_like, params), tx, jax.random.key(0))
    epoch, got, meta = ck.restore(template, with_meta=True)
    assert epoch == 7 and meta == {"note": "x"}
    assert jnp.issubdtype(got.key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(got.key), jax.random.key_data(state.key))
    for a, b in zip(jax.tree.leaves(got.params) + jax.tree.leaves(got.opt_state),
                    jax.tree.leaves(state.params) + jax.tree.leaves(state.opt_state)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a wrong template fails loudly naming the file
    with pytest.raises(RuntimeError, match="checkpoint"):
        ck.restore({"other": jnp.zeros(3)})


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path):
    state0, epoch_fn, eval_fn = _toy_problem()
    best_a, hist_a = fit(state0, epoch_fn, eval_fn, epochs=8, patience=20, metric="score", log=None)

    class Interrupt(Exception):
        pass

    seen = []

    def flaky_epoch_fn(state, epoch):
        if epoch == 5 and not seen:
            seen.append(epoch)
            raise Interrupt  # e.g. the job was killed during epoch 5
        return epoch_fn(state, epoch)

    ck = tmp_path / "run"
    with pytest.raises(Interrupt):
        fit(state0, flaky_epoch_fn, eval_fn, epochs=8, patience=20, metric="score", ckpt_dir=ck, log=None)
    ran = []

    def counting(state, epoch):
        ran.append(epoch)
        return epoch_fn(state, epoch)

    best_b, hist_b = fit(state0, counting, eval_fn, epochs=8, patience=20, metric="score", ckpt_dir=ck,
                         log=None)
    assert ran == [5, 6, 7]  # only the interrupted epoch is redone
    assert hist_b.resumed_from == 5 and len(hist_b) == 8
    assert hist_b.best_epoch == hist_a.best_epoch
    np.testing.assert_allclose(best_b.params["w"], best_a.params["w"], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(best_b.key), np.asarray(best_a.key))
    # a finished run is not re-run
    best_c, hist_c = fit(state0, counting, eval_fn, epochs=8, patience=20, metric="score", ckpt_dir=ck,
                         log=None)
    assert ran == [5, 6, 7] and hist_c.best_epoch == hist_a.best_epoch


# -------------------------------------------------------------------------------------------- results
def test_save_result_content(tmp_path):
    import dataclasses

    @dataclasses.dataclass
    class Cfg:
        lr: float = 0.01
        dims: tuple = (8, 4)

    p = results.save_result("exp", "toy", config=Cfg(), seed=2, metrics={"ndcg@20": jnp.float32(0.25),
                            "recall@20": np.float64(0.5)}, wall_time=1.5, extra={"best_epoch": 3},
                            root=tmp_path, name="mf_seed2")
    assert p == tmp_path / "exp" / "toy" / "mf_seed2.json"
    rec = json.loads(p.read_text())
    assert rec["config"] == {"lr": 0.01, "dims": [8, 4]}
    assert rec["seed"] == 2 and rec["wall_time_s"] == 1.5
    assert rec["metrics"]["ndcg@20"] == pytest.approx(0.25) and rec["metrics"]["recall@20"] == 0.5
    assert rec["versions"]["jax"] == jax.__version__ and "numpy" in rec["versions"]
    assert rec["device"]["platform"] == jax.devices()[0].platform
    assert rec["extra"] == {"best_epoch": 3} and rec["timestamp"]
    assert results.load_results("exp", "toy", root=tmp_path)[0]["name"] == "mf_seed2"
    with pytest.raises(ValueError):
        results.save_result("exp", "../x", config={}, seed=0, metrics={}, wall_time=0, root=tmp_path)


def test_mean_std_and_format_table():
    runs = [{"r@20": 0.1, "n@20": 0.2}, {"r@20": 0.3, "n@20": 0.4}]
    ms = results.mean_std(runs)
    assert ms["r@20"][0] == pytest.approx(0.2) and ms["r@20"][1] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    base = [{"r@20": 0.1, "n@20": 0.1}]
    table = results.format_table({"MF": runs, "Pop": base}, improvement=("MF", "Pop"), digits=3)
    lines = table.splitlines()
    assert lines[0] == "| model | r@20 | n@20 |"
    assert lines[2] == "| MF | 0.200 ± 0.141 | 0.300 ± 0.141 |"
    assert lines[3] == "| Pop | 0.100 | 0.100 |"  # one run: no spread to print
    assert lines[4] == "| Improv. (MF vs Pop) | +100.0% | +200.0% |"


# --------------------------------------------------------------------------------------------- losses
def test_losses_values_and_stability():
    pos, neg = jnp.array([2.0, 0.0, 100.0]), jnp.array([1.0, 0.0, -100.0])
    want = np.mean([-math.log(1 / (1 + math.exp(-1))), math.log(2), 0.0])
    assert float(losses.bpr_loss(pos, neg)) == pytest.approx(want, rel=1e-6)
    assert np.isfinite(float(losses.bpr_loss(jnp.array([-1e4]), jnp.array([1e4]))))
    assert float(losses.bpr_loss(jnp.array([-50.0]), jnp.array([50.0]))) == pytest.approx(100.0)
    # [B, n_neg] negatives broadcast the positive
    assert float(losses.bpr_loss(jnp.array([1.0]), jnp.array([[1.0, 1.0]]))) == pytest.approx(math.log(2))
    x, y = jnp.array([0.0, 3.0, -200.0]), jnp.array([1.0, 0.0, 0.0])
    ref = np.mean([math.log(2), 3 + math.log1p(math.exp(-3)), 0.0])
    assert float(losses.bce_with_logits(x, y)) == pytest.approx(ref, rel=1e-6)
    z = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    lse = math.log(math.e + math.e ** 2 + math.e ** 3)
    assert float(losses.softmax_cross_entropy(z, jnp.array([2, 0]))) == pytest.approx(
        np.mean([lse - 3, math.log(3)]), rel=1e-6)
    soft = jnp.array([[0, 0, 1.0], [1.0, 0, 0]])
    assert float(losses.softmax_cross_entropy(z, soft)) == pytest.approx(
        float(losses.softmax_cross_entropy(z, jnp.array([2, 0]))), rel=1e-6)
    assert float(losses.l2({"a": jnp.array([1.0, 2.0]), "b": [jnp.array(3.0)]})) == pytest.approx(14.0)
    with jax.enable_x64(True):
        assert losses.bpr_loss(jnp.array([1.0], jnp.float64), jnp.array([0.0], jnp.float64)).dtype == jnp.float64


# ------------------------------------------------------------------------------------------------ cli
def test_common_parser():
    p = cli.common_parser("x")
    a = p.parse_args([])
    assert a.dataset == "synthetic" and a.out == "results" and not a.quick and not a.no_save
    assert cli.seed_list(a) == [0]
    a = p.parse_args(["--dataset", "ml-100k", "--data-dir", "/d", "--seeds", "3", "--epochs", "5",
                      "--quick", "--no-save", "--out", "o"])
    assert (a.dataset, a.data_dir, a.epochs, a.quick, a.no_save, a.out) == ("ml-100k", "/d", 5, True, True, "o")
    assert cli.seed_list(a) == [0, 1, 2]


def test_live_output_line_buffers_a_file_stdout(tmp_path):
    """``jaxrec.cli.live_output`` makes a redirected stdout show each printed line at once (a nohup log)."""
    import os
    import subprocess
    import sys

    log = tmp_path / "log.txt"
    code = ("import time, pathlib, sys; from jaxrec.cli import live_output; live_output(); print('epoch 1');"
            f"time.sleep(0.2); sys.stderr.write(repr(pathlib.Path({str(log)!r}).read_text()))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the default: block-buffered file
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-c", code], stdout=f, stderr=subprocess.PIPE, text=True, check=True,
                           env=env)
    assert r.stderr == repr("epoch 1\n")  # already in the file while the process still runs


def test_run_marker_claims_and_takes_over_stale(tmp_path):
    """A ``.running`` marker is claimed once; a live holder blocks a second claim; a dead holder's marker is
    taken over."""
    import os
    import subprocess
    import sys

    from jaxrec.results import claim_run

    m = tmp_path / "sub" / "MF_x_seed0.running"
    assert claim_run(m) and m.read_text() == str(os.getpid())
    assert not claim_run(m)  # held by this (live) process
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    m.write_text(str(dead.pid))
    assert claim_run(m) and m.read_text() == str(os.getpid())


def test_await_or_claim_waits_for_the_holder_then_reads_its_result(tmp_path):
    """While another live process holds the marker, ``await_or_claim`` polls until the result is saved and
    returns it without claiming; with no result and no holder it claims (returns None)."""
    import subprocess
    import sys
    import threading

    from jaxrec.results import await_or_claim

    result = tmp_path / "run.json"
    marker = tmp_path / "run.running"

    def find():
        return result.read_text() if result.exists() else None

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        marker.write_text(str(holder.pid))
        def save():  # atomically, as save_result does (write then rename): find never sees an empty file
            (tmp_path / "run.tmp").write_text("done")
            (tmp_path / "run.tmp").replace(result)

        timer = threading.Timer(0.3, save)
        timer.start()
        assert await_or_claim(find, marker, poll_s=0.02, verbose=False) == "done"
        timer.join()
        assert marker.read_text() == str(holder.pid)  # never taken from the live holder
    finally:
        holder.kill()
        holder.wait()
    result.unlink()
    marker.unlink()
    assert await_or_claim(find, marker, poll_s=0.02) is None and marker.exists()  # nothing saved: claimed


def test_grid_edge_notes_flag_a_selection_on_the_border():
    from jaxrec.results import grid_edge_notes

    grid = [{"lr": lr, "l2": l2, "mode": "sog"} for lr in (1e-3, 1e-2, 1e-1) for l2 in (0.0, 1e-4)]
    assert grid_edge_notes(grid, {"lr": 1e-2, "l2": 0.0, "mode": "sog"}) == []  # inside; l2 = 0 is no edge
    notes = grid_edge_notes(grid, {"lr": 1e-1, "l2": 1e-4, "mode": "sog"})
    assert notes == ["lr=0.1 is the largest value tried (0.001, 0.01, 0.1): widen the grid upwards",
                     "l2=0.0001 is the largest value tried (0, 0.0001): widen the grid upwards"]
    assert grid_edge_notes(grid, {"lr": 1e-3, "l2": 0.0}) == [
        "lr=0.001 is the smallest value tried (0.001, 0.01, 0.1): widen the grid downwards"]
    assert grid_edge_notes([{"lr": 1e-3}], {"lr": 1e-3}) == []  # one value: no axis to speak of


def test_run_once_holds_the_marker_only_while_training(tmp_path):
    """``run_once`` reads a saved result back without training; otherwise it trains with the marker held and
    releases it afterwards, also when training fails; without a marker it just finds or trains."""
    from jaxrec.results import run_once

    marker = tmp_path / "run.running"
    seen = []

    def train():
        seen.append(marker.exists())
        return "trained"

    assert run_once(lambda: "saved", train, marker) == "saved" and seen == []
    assert run_once(lambda: None, train, marker) == "trained" and seen == [True] and not marker.exists()

    def fail():
        assert marker.exists()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_once(lambda: None, fail, marker)
    assert not marker.exists()
    assert run_once(lambda: None, train) == "trained" and seen == [True, False]  # no marker: none written


def test_static_in_batches_picks_the_step_variant_per_epoch():
    """``jaxrec.method.Static`` rides through the jitted scan as a Python value: the step branches on it, and
    an epoch whose value differs compiles its own variant (here: the even epochs add 1, the odd ones 10)."""
    traced = []

    def step(state, batch, key):
        traced.append(batch["odd"].value)  # a Python bool at trace time, not a tracer
        inc = 10.0 if batch["odd"].value else 1.0
        return state + inc * batch["x"].sum(), {"loss": state}

    m = protocol.Method(init=lambda key: jnp.zeros(()),
                        batches=lambda seed, epoch: {"x": jnp.ones((2, 1)), "odd": protocol.Static(epoch % 2 == 1)},
                        step=step, evaluate=lambda state, part: {"score": float(state)})
    res = protocol.train(m, seed=0, epochs=3, metric="score", log=None)
    assert float(res.state) == 2 * 1 + 2 * 10 + 2 * 1  # epochs 0, 1, 2
    assert sorted(set(traced)) == [False, True]
