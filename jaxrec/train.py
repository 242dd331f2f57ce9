"""Training utilities shared by every experiment: PRNG keys, progress bars, early stopping,
checkpoint/resume and the generic epoch loop :func:`fit`.

Typical use (see ``experiments/mf_bpr.py``)::

    state = TrainState.create(params, tx, jax.random.PRNGKey(seed))

    def epoch_fn(state, epoch):                 # one pass over the data, jitted steps inside
        batches = ...                           # host-side sampling with a seeded numpy Generator
        state, loss = train_epoch(state, batches)   # a jitted step / lax.scan over batches
        return state, {"loss": loss}

    def eval_fn(state):                         # validation metrics as a dict of floats
        return evaluate_topk(lambda u: score_all(state.params, u), val_users, train_csr, val_csr)

    best_state, history = fit(state, epoch_fn, eval_fn, epochs=200, patience=10,
                              metric="ndcg@20", ckpt_dir="results/mf_bpr/ckpt/seed0")

With ``ckpt_dir`` set, the loop saves ``{state, best_state, early-stopping state, history}`` after every
epoch (msgpack via ``flax.serialization``, written to a temp file and renamed atomically); calling
``fit`` again with the same arguments resumes after the last completed epoch, so an interrupted run
loses at most the epoch in progress. Determinism across a resume requires that ``epoch_fn`` derives its
randomness from ``state`` (e.g. ``state.key``) or from ``epoch`` (e.g. ``np.random.default_rng((seed,
epoch))``), never from a generator that lives outside ``state``.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import flax.serialization
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

__all__ = ["TrainState", "split_key", "progress", "quiet", "EarlyStopping", "Checkpointer", "History", "fit"]


# --------------------------------------------------------------------------------------------- keys / state
def split_key(key: jax.Array, num: int = 2):
    """``(new_key, sub_1, ..., sub_{num-1})`` from ``jax.random.split``; thread ``new_key`` on, use the subs."""
    return tuple(jax.random.split(key, num))


@flax.struct.dataclass
class TrainState:
    """Minimal pure training state: ``params``, optax ``opt_state``, PRNG ``key`` and ``step`` counter.

    The optax transformation is *not* stored (keep it in the closure of your jitted step), so the state
    is a plain pytree that :class:`Checkpointer` can save.
    """

    params: Any
    opt_state: Any
    key: jax.Array
    step: jax.Array

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation, key: jax.Array) -> "TrainState":
        """State at step 0 with ``opt_state = tx.init(params)``."""
        return cls(params=params, opt_state=tx.init(params), key=key, step=jnp.zeros((), jnp.int32))

    def apply_gradients(self, grads, tx: optax.GradientTransformation) -> "TrainState":
        """One optimiser update ``params <- params + tx.update(grads)``; ``step += 1``."""
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        return self.replace(params=optax.apply_updates(self.params, updates), opt_state=opt_state,
                            step=self.step + 1)


# ------------------------------------------------------------------------------------------------ progress
def quiet() -> bool:
    """True when ``JAXREC_QUIET`` is set to a non-empty value other than ``0``."""
    return os.environ.get("JAXREC_QUIET", "") not in ("", "0")


def progress(iterable: Iterable, desc: str | None = None, total: int | None = None, **kwargs):
    """``tqdm`` progress bar over ``iterable``; disabled when ``JAXREC_QUIET=1`` or stderr is not a TTY."""

    disable = quiet() or not sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=False, dynamic_ncols=True, **kwargs)


# ------------------------------------------------------------------------------------------ early stopping
class EarlyStopping:
    """Stop when a validation metric has not improved for ``patience`` evaluations.

    ``mode="max"``: improvement means ``value > best + min_delta`` (``"min"``: ``value < best - min_delta``).
    Non-finite values never improve. ``patience=None`` never stops.
    """

    def __init__(self, patience: int | None, mode: str = "max", min_delta: float = 0.0):
        if mode not in ("max", "min"):
            raise ValueError(f"EarlyStopping mode must be 'max' or 'min', got {mode!r}")
        if patience is not None and patience < 1:
            raise ValueError(f"EarlyStopping patience must be >= 1 or None, got {patience}")
        self.patience, self.mode, self.min_delta = patience, mode, float(min_delta)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad = 0

    def update(self, value: float, epoch: int | None = None) -> bool:
        """Record one evaluation; return True when it is a new best."""
        value = float(value)
        better = math.isfinite(value) and (
            self.best is None
            or (value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta))
        if better:
            self.best, self.best_epoch, self.bad = value, epoch, 0
        else:
            self.bad += 1
        return better

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` consecutive evaluations brought no improvement."""
        return self.patience is not None and self.bad >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad": self.bad}

    def load_state_dict(self, d: Mapping) -> None:
        self.best, self.best_epoch, self.bad = d["best"], d["best_epoch"], int(d["bad"])


# --------------------------------------------------------------------------------------------- checkpoints
def _is_typed_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_raw(tree):
    """Replace typed PRNG key arrays (``jax.random.key``) by their raw ``uint32`` data for msgpack."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_typed_key(x) else x, tree)


def _from_raw(template, tree):
    return jax.tree.map(lambda t, x: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t))
                        if _is_typed_key(t) else x, template, tree)


class Checkpointer:
    """Atomic msgpack checkpoints of a pytree in ``directory/checkpoint.msgpack``.

    ``save(epoch, pytree, meta=None)`` serialises ``pytree`` with ``flax.serialization`` (typed PRNG keys
    are stored as raw key data) plus a JSON-able ``meta`` dict, writes a temp file, fsyncs it and renames
    it over the previous checkpoint, so a crash mid-write leaves the previous checkpoint intact.
    ``restore(template)`` returns ``(epoch, pytree)`` with the structure/dtypes of ``template``, or
    ``None`` when there is no checkpoint.
    """

    FILENAME = "checkpoint.msgpack"

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / self.FILENAME

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, epoch: int, pytree: Any, meta: Mapping | None = None) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {
            "epoch": int(epoch),
            "meta": json.dumps(meta or {}),
            "tree": flax.serialization.to_state_dict(jax.device_get(_to_raw(pytree))),
        }
        data = flax.serialization.msgpack_serialize(payload)
        tmp = self.path.with_name(self.FILENAME + f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return self.path

    def restore(self, template: Any, with_meta: bool = False):
        """``(epoch, pytree)`` (or ``(epoch, pytree, meta)`` with ``with_meta``) or ``None``."""
        if not self.exists():
            return None
        try:
            payload = flax.serialization.msgpack_restore(self.path.read_bytes())
            tree = flax.serialization.from_state_dict(jax.device_get(_to_raw(template)), payload["tree"])
        except Exception as e:  # noqa: BLE001 - re-raise with the file and the fix
            raise RuntimeError(f"checkpoint {self.path} cannot be restored into the given template "
                               f"({type(e).__name__}: {e}); delete it to start from scratch") from e
        tree = jax.tree.map(jnp.asarray, tree)
        tree = _from_raw(template, tree)
        epoch = int(payload["epoch"])
        if with_meta:
            return epoch, tree, json.loads(payload["meta"])
        return epoch, tree

    def clear(self) -> None:
        """Delete the checkpoint (if any)."""
        if self.exists():
            self.path.unlink()


# ------------------------------------------------------------------------------------------------ fit loop
class History(list):
    """Per-epoch records ``{"epoch", "train": {...}, "val": {...} | None, "time_s", "improved"}`` plus
    ``best_epoch``, ``best_metrics`` (validation dict of the best epoch), ``stopped_early`` and
    ``resumed_from`` (the epoch a resumed run restarted at, else ``None``)."""

    best_epoch: int | None = None
    best_metrics: dict | None = None
    stopped_early: bool = False
    resumed_from: int | None = None
    elapsed_s: float = 0.0  # wall time of the loop, summed over every process that ran part of it

    def summary(self) -> dict:
        return {"epochs_run": len(self), "best_epoch": self.best_epoch, "best_metrics": self.best_metrics,
                "stopped_early": self.stopped_early, "resumed_from": self.resumed_from,
                "elapsed_s": self.elapsed_s}


def _floats(d: Mapping | None) -> dict | None:
    if d is None:
        return None
    out = {}
    for k, v in dict(d).items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def fit(state: Any, epoch_fn: Callable[[Any, int], tuple[Any, Mapping]],
        eval_fn: Callable[[Any], Mapping] | None, *, epochs: int, patience: int | None = None,
        metric: str | None = None, mode: str = "max", min_delta: float = 0.0, eval_every: int = 1,
        ckpt_dir: str | os.PathLike | None = None, log: Callable[[str], Any] | None = print,
        log_every: int = 1, desc: str = "epochs") -> tuple[Any, History]:
    """Generic epoch loop with validation, early stopping, best-state tracking and checkpoint/resume.

    For ``epoch = 0 .. epochs-1``: ``state, train_logs = epoch_fn(state, epoch)``; every ``eval_every``
    epochs (and at the last one) ``val = eval_fn(state)`` and ``val[metric]`` feeds
    :class:`EarlyStopping` (``mode`` "max"/"min", ``patience`` evaluations, ``None`` = never stop); the
    state with the best value is kept. Without ``eval_fn`` the final state is returned as best.

    ``train_logs`` and ``val`` are dicts of scalars (device arrays are fine; they are converted once per
    epoch). A non-finite training log (``loss`` or any other) raises ``FloatingPointError`` naming it and the
    epoch.
    ``epoch_fn`` must not donate its input buffers (the best state may still reference them).

    With ``ckpt_dir`` the loop checkpoints after every epoch and resumes from an existing checkpoint
    (a finished run returns its stored result immediately). ``log`` receives one line every
    ``log_every`` epochs, and after any stretch of more than 10 s without one (``None`` = silent); a tqdm
    bar over epochs is shown unless ``JAXREC_QUIET=1``.

    Returns ``(best_state, history)``; see :class:`History`.
    """
    if eval_fn is not None and metric is None:
        raise ValueError("fit: pass metric=... (the validation key to early-stop on) when eval_fn is given")
    stopper = EarlyStopping(patience if eval_fn is not None else None, mode=mode, min_delta=min_delta)
    history = History()
    best_state = state
    start = 0
    ckpt = Checkpointer(ckpt_dir) if ckpt_dir is not None else None
    t_start = time.perf_counter()
    elapsed_before = 0.0
    if ckpt is not None:
        restored = ckpt.restore({"state": state, "best_state": state}, with_meta=True)
        if restored is not None:
            last_epoch, tree, meta = restored
            state, best_state = tree["state"], tree["best_state"]
            stopper.load_state_dict(meta["stopper"])
            history.extend(meta["history"])
            history.best_epoch, history.best_metrics = meta["best_epoch"], meta["best_metrics"]
            start = last_epoch + 1
            history.resumed_from = start
            elapsed_before = float(meta.get("elapsed_s", 0.0))
            history.elapsed_s = elapsed_before
            if meta.get("done"):
                history.stopped_early = meta.get("stopped_early", False)
                return best_state, history
            if log is not None:
                log(f"resuming from {ckpt.path} after epoch {last_epoch}")

    bar = progress(range(start, epochs), desc=desc, total=epochs - start)
    emit = log
    if log is print and not bar.disable:
        emit = bar.write
    done = False
    epoch = start - 1
    last_line = time.perf_counter()
    for epoch in bar:
        t0 = time.perf_counter()
        state, train_logs = epoch_fn(state, epoch)
        train_logs = _floats(train_logs) or {}
        bad = [k for k, v in train_logs.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"training {bad[0]} is {train_logs[bad[0]]} at epoch {epoch}; lower the "
                                     "learning rate or check the inputs")
        val, improved = None, False
        last = epoch == epochs - 1
        if eval_fn is not None and ((epoch + 1) % eval_every == 0 or last):
            val = _floats(eval_fn(state))
            if metric not in val:
                raise KeyError(f"fit: metric {metric!r} not in eval_fn output keys {sorted(val)}")
            improved = stopper.update(val[metric], epoch)
            if improved:
                best_state = state
                history.best_epoch, history.best_metrics = epoch, val
        elif eval_fn is None:
            best_state = state
            history.best_epoch = epoch
        rec = {"epoch": epoch, "train": train_logs, "val": val, "time_s": time.perf_counter() - t0,
               "improved": improved}
        history.append(rec)
        done = stopper.should_stop or last
        history.stopped_early = stopper.should_stop
        history.elapsed_s = elapsed_before + time.perf_counter() - t_start
        if ckpt is not None:
            ckpt.save(epoch, {"state": state, "best_state": best_state},
                      meta={"stopper": stopper.state_dict(), "history": list(history),
                            "best_epoch": history.best_epoch, "best_metrics": history.best_metrics,
                            "done": done, "stopped_early": history.stopped_early,
                            "elapsed_s": history.elapsed_s})
        if val is not None:
            bar.set_postfix({metric: f"{val[metric]:.4f}", "best": f"{stopper.best or float('nan'):.4f}"})
        quiet_for = time.perf_counter() - last_line
        if emit is not None and ((epoch + 1) % log_every == 0 or done or quiet_for > 10.0):
            last_line = time.perf_counter()
            parts = [f"epoch {epoch:4d}"] + [f"{k}={v:.4f}" for k, v in train_logs.items()]
            if val is not None:
                parts.append(f"val {metric}={val[metric]:.4f}" + (" *" if improved else ""))
            parts.append(f"({rec['time_s']:.2f}s)")
            emit("  ".join(parts))
        if stopper.should_stop:
            if emit is not None:
                emit(f"early stop at epoch {epoch}: no improvement of {metric} for {patience} evaluations "
                     f"(best {stopper.best:.4f} at epoch {stopper.best_epoch})")
            break
    bar.close()
    return best_state, history
