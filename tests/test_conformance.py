"""Every registered method obeys the method protocol (jaxrec.method): init / step / evaluate shapes, the same
seed gives the same metrics, a run resumed after an interruption equals an uninterrupted one, and a NaN in
the step stops training with a clear error.

A method is registered by its experiment (``experiments.<name>.SPEC``) plus config overrides on top of the
experiment's ``--quick`` settings; the data is the experiment's own synthetic set.
"""
import dataclasses
import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import method as protocol

# (id, experiment module, overrides of the --quick config)
METHODS = [
    ("mf_bpr", "mf_bpr", {}),
    ("sif", "sif", {}),
    ("mal", "mal", {"eval_every": 1}),
    ("autocross", "autocross", {}),  # AC+LR on the --quick synthetic set (the search runs in load)
    ("meta_wrapper", "meta_wrapper", {"batch_size": 512, "track_train_loss": False}),  # M4, the default variant
    ("meta_wrapper_M3", "meta_wrapper", {"variant": "M3", "batch_size": 512, "track_train_loss": False}),
    ("mclrec", "mclrec", {"ragged_width": 0}),  # MCLRec two-stage, --quick config (5 batches of 64 an epoch)
    ("lambda_opt_dui", "lambda_opt", {}),  # lambda-Opt-DUI, --quick config
    ("paml_at", "paml", {"name": "at_paml"}),  # AT-PAML (memory, warm-up schedule), --quick config
]
EPOCHS = 3


class Interrupted(Exception):
    pass


def _setup(experiment, overrides):
    spec = importlib.import_module(f"experiments.{experiment}").SPEC
    fields = {f.name for f in dataclasses.fields(spec.config)}
    kw = {**{k: v for k, v in spec.quick.items() if k in fields}, **overrides}
    config = spec.config(**kw)
    module = importlib.import_module(spec.method)
    data = module.load(config, "synthetic", None, 0)
    return spec, config, module, data, module.method(config, data)


def _train(spec, method, **kw):
    return protocol.train(method, seed=0, epochs=EPOCHS, metric=spec.metric, log=None, **kw)


@pytest.fixture(scope="module", params=METHODS, ids=[m[0] for m in METHODS])
def setup(request):
    _, experiment, overrides = request.param
    return _setup(experiment, overrides)


def test_init_step_evaluate_shapes(setup):
    spec, config, module, data, m = setup
    assert isinstance(m, protocol.Method)
    state = m.init(jax.random.PRNGKey(0))
    batches = m.batches(0, 0)
    first = jax.tree_util.tree_map(lambda x: x[0], batches)
    new, metrics = jax.jit(m.step)(state, first, jax.random.PRNGKey(1))
    chex.assert_trees_all_equal_shapes_and_dtypes(state, new)
    assert isinstance(metrics, dict) and metrics
    for k, v in metrics.items():
        assert jnp.ndim(v) == 0 and bool(jnp.isfinite(v)), k
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), state, new)
    assert any(jax.tree_util.tree_leaves(changed)), "the step changed nothing"
    val, test = m.evaluate(new, "val"), m.evaluate(new, "test")
    assert set(val) == set(test) and spec.metric in val
    assert all(np.isfinite(float(v)) for v in val.values())


def test_same_seed_same_metrics(setup):
    spec, config, module, data, m = setup  # one Method: its epoch compiles once for every run below
    a = _train(spec, m)
    b = _train(spec, m)
    assert a.val == b.val and a.test == b.test and a.best_epoch == b.best_epoch
    assert [h["train"] for h in a.history] == [h["train"] for h in b.history]
    # RunResult.val is the best epoch's validation (taken from fit, not recomputed): it is the best state's
    val = m.evaluate(a.state, "val")
    assert set(a.val) == set(val) and all(a.val[k] == pytest.approx(val[k], rel=1e-6, abs=1e-9) for k in val)


def test_resume_equals_uninterrupted(setup, tmp_path):
    spec, config, module, data, m = setup
    full = _train(spec, m)

    def failing_batches(seed, epoch):
        if epoch == EPOCHS - 1:
            raise Interrupted
        return m.batches(seed, epoch)

    with pytest.raises(Interrupted):
        _train(spec, m._replace(batches=failing_batches), ckpt_dir=tmp_path)
    assert (tmp_path / "checkpoint.msgpack").exists()  # the interrupted run left its checkpoint
    resumed = _train(spec, m, ckpt_dir=tmp_path)
    assert resumed.val == full.val and resumed.test == full.test and resumed.best_epoch == full.best_epoch
    assert [h["train"] for h in resumed.history] == [h["train"] for h in full.history]


def test_nan_in_step_is_caught(setup):
    spec, config, module, data, m = setup

    def poisoned(key):  # every float parameter NaN: the step's loss is NaN
        return jax.tree_util.tree_map(
            lambda x: x * jnp.nan if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, m.init(key))

    with pytest.raises(FloatingPointError, match=r"training \w+ is nan at epoch 0"):
        _train(spec, m._replace(init=poisoned))
