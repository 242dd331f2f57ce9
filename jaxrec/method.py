"""The method protocol: what every method in jaxrec provides, and the one loop that trains any of them.

In the spirit of ``optax.GradientTransformation``, a method is a small NamedTuple of pure functions, built
by the method module from its config and its prepared data (``jaxrec.methods.<m>.method(config, data)``)::

    Method(init, batches, step, evaluate, summary=None)

    init(key)                      -> state       # a pytree (NamedTuple / flax struct) of arrays
    batches(seed, epoch)           -> batches     # host side: one epoch's batches stacked on a leading axis
    step(state, batch, key)        -> (state, metrics)   # pure; jitted whole, scanned over the epoch
    evaluate(state, part)          -> dict        # part "val" or "test": metric name -> float
    summary(state)                 -> dict        # optional: what a results file keeps besides metrics

:func:`train` drives any ``Method`` through :func:`jaxrec.train.fit`: ``state = init(PRNGKey(seed))``;
per epoch, ``lax.scan`` of ``step`` over ``batches(seed, epoch)`` in one jitted call with per-step keys
``split(fold_in(fold_in(PRNGKey(seed), 1), epoch), n_steps)``; validation every ``eval_every`` epochs,
early stopping on ``metric``, checkpoint/resume, the NaN check and the history; then ``evaluate`` of the
best state on ``val`` and ``test``. It returns a :class:`RunResult`, the one result shape of every method.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import weakref
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from jaxrec.train import fit

__all__ = ["Method", "RunResult", "Static", "train", "epoch_function", "heartbeat"]


class Method(NamedTuple):
    """See the module docstring."""

    init: Callable[[jax.Array], Any]
    batches: Callable[[int, int], Any]
    step: Callable[[Any, Any, jax.Array], tuple[Any, dict]]
    evaluate: Callable[[Any, str], dict]
    summary: Callable[[Any], dict] | None = None


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Static:
    """A host-side fact carried inside ``batches`` that selects a compiled variant of ``step``.

    It has no array leaves, so ``jit`` and ``lax.scan`` keep ``value`` in the tree structure: ``step``
    reads it as a Python value (``batch["flag"].value``), and an epoch whose value differs compiles its
    own variant instead of branching on the device. Example: MCLRec's ragged encoding, checked on the
    host for the whole epoch, runs without a ``lax.cond`` (see ``jaxrec.methods.mclrec.epoch_batches``)."""

    value: Any


@dataclasses.dataclass
class RunResult:
    """One trained run: validation and test metrics of the best state, its epoch, the per-epoch history,
    timings (``wall_time_s`` summed over resumes, ``train_time_s`` inside the jitted epochs,
    ``compile_s`` the first epoch's compilation), the best ``state`` and the method's ``summary``."""

    val: dict
    test: dict
    best_epoch: int | None
    epochs_run: int
    history: list
    wall_time_s: float
    train_time_s: float
    compile_s: float
    state: Any = None
    summary: dict = dataclasses.field(default_factory=dict)

    def record(self) -> dict:
        """The JSON-able part (everything but the state) for a results file."""
        return {"val": self.val, "test": self.test, "best_epoch": self.best_epoch, "epochs_run": self.epochs_run,
                "wall_time_s": self.wall_time_s, "train_time_s": self.train_time_s, "compile_s": self.compile_s,
                "history": self.history, "summary": self.summary}


_EPOCHS: "weakref.WeakKeyDictionary[Callable, Callable]" = weakref.WeakKeyDictionary()


def epoch_function(step: Callable) -> Callable:
    """Jitted ``epoch(state, batches, key) -> (state, mean metrics)``: ``lax.scan`` of ``step`` over the
    leading axis of ``batches``, one key per step split from ``key``. One per ``step`` function (kept while
    the step lives), so training the same ``Method`` again (seeds, resumes) compiles once."""
    if step in _EPOCHS:
        return _EPOCHS[step]

    @jax.jit
    def epoch(state, batches, key):
        n = jax.tree_util.tree_leaves(batches)[0].shape[0]
        state, logs = jax.lax.scan(lambda s, xs: step(s, xs[0], xs[1]), state, (batches, jax.random.split(key, n)))
        return state, jax.tree_util.tree_map(lambda v: v.mean(), logs)

    _EPOCHS[step] = epoch
    return epoch


def train(method: Method, *, seed: int, epochs: int, metric: str, patience: int | None = None,
          eval_every: int = 1, mode: str = "max", ckpt_dir=None, log: Callable[[str], Any] | None = print,
          desc: str = "epochs", epoch_fn: Callable | None = None, log_every: int | None = None) -> RunResult:
    """Train ``method`` for up to ``epochs`` epochs (see the module docstring) and evaluate its best state.

    ``epoch_fn`` replaces the jitted scan of :func:`epoch_function` (same signature) for a method whose
    epoch cannot be one scan. ``log`` gets the per-evaluation lines and the compilation message."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    epoch_jit = epoch_fn or epoch_function(method.step)
    base_key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    timer = {"train_s": 0.0, "compile_s": 0.0, "first": True}

    def run_epoch(state, epoch):
        batches = method.batches(seed, epoch)
        first = timer["first"]
        if first and log is not None:
            log("compiling the step ...")
        t0 = time.perf_counter()
        with heartbeat(log, "compiling the step" if first else f"training epoch {epoch}"):
            state, logs = epoch_jit(state, batches, jax.random.fold_in(base_key, epoch))
            jax.block_until_ready(state)
        dt = time.perf_counter() - t0
        if first:
            timer["first"], timer["compile_s"] = False, dt
            if log is not None:
                log(f"compiled and ran the first epoch in {dt:.1f}s")
        timer["train_s"] += dt
        return state, logs

    def evaluate_val(s):
        with heartbeat(log, "evaluating"):
            return method.evaluate(s, "val")

    state = method.init(jax.random.PRNGKey(seed))
    best, history = fit(state, run_epoch, evaluate_val, epochs=epochs, patience=patience,
                        metric=metric, mode=mode, eval_every=eval_every, ckpt_dir=ckpt_dir, log=log,
                        log_every=log_every or eval_every, desc=desc)
    summary = method.summary(best) if method.summary is not None else {}
    # the best epoch's validation metrics were computed by fit; evaluate again only if no epoch was scored
    val = dict(history.best_metrics) if history.best_metrics is not None else method.evaluate(best, "val")
    return RunResult(val=val, test=method.evaluate(best, "test"),
                     best_epoch=history.best_epoch, epochs_run=len(history), history=list(history),
                     wall_time_s=history.elapsed_s, train_time_s=timer["train_s"], compile_s=timer["compile_s"],
                     state=best, summary={k: _plain(v) for k, v in summary.items()})


@contextlib.contextmanager
def heartbeat(log: Callable[[str], Any] | None, what: str, every: float = 10.0):
    """While the ``with`` body runs, ``log(f"still {what} ({t:.0f}s)")`` every ``every`` seconds from a
    background thread (XLA compiles without the GIL), so that a long compilation is not silent; ``log=None``
    does nothing."""
    if log is None:
        yield
        return
    stop, t0 = threading.Event(), time.perf_counter()

    def beat():
        while not stop.wait(every):
            log(f"still {what} ({time.perf_counter() - t0:.0f}s)")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _plain(v):
    return np.asarray(v).tolist() if hasattr(v, "shape") else v
