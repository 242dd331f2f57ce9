"""Loud NaN/inf detection and hypergradient accuracy diagnostics."""
from __future__ import annotations

import functools

import jax
from jax.experimental import checkify
import jax.numpy as jnp
import numpy as np

from ._tree import tree_norm, tree_sub, tree_vdot

__all__ = [
    "NonFiniteError", "all_finite", "check_finite", "checkify_finite", "with_finite_check",
    "hypergrad_error",
]


class NonFiniteError(FloatingPointError):
    """A hypergradient (or other pytree) contains NaN or inf."""


def all_finite(tree):
    """Jit-friendly flag: a boolean scalar array, True iff every element of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _host_check(what, paths, *leaves):
    bad = []
    for path, leaf in zip(paths, leaves):
        arr = np.asarray(leaf)
        n_bad = int(arr.size - np.isfinite(arr).sum())
        if n_bad:
            kinds = []
            if np.isnan(arr).any():
                kinds.append("NaN")
            if np.isinf(arr).any():
                kinds.append("inf")
            bad.append(f"{path or '<root>'}: {n_bad}/{arr.size} non-finite ({'/'.join(kinds)})")
    if bad:
        raise NonFiniteError(
            f"{what} is not finite: " + "; ".join(bad)
            + ". Check the learning rate / damping (an unstable inner loop or an indefinite Hessian makes "
              "hypergradients blow up), and the inputs for NaNs."
        )


def check_finite(tree, what: str = "hypergradient"):
    """Raise :class:`NonFiniteError` naming every leaf of ``tree`` that holds NaN or inf; return ``tree``.

    Outside ``jit`` the check runs immediately (synchronising with the device). Inside a traced function
    it inserts a ``jax.debug.callback`` that raises at run time: the error then surfaces wrapped in a
    ``JaxRuntimeError`` whose message contains this one. For a pure, no-callback alternative use
    :func:`all_finite` (returns a flag) or :func:`checkify_finite` (``jax.experimental.checkify``).
    """
    path_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    paths = [jax.tree_util.keystr(p) for p, _ in path_leaves]
    leaves = [x for _, x in path_leaves]
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        jax.debug.callback(functools.partial(_host_check, what, paths), *leaves)
    else:
        _host_check(what, paths, *leaves)
    return tree


def checkify_finite(tree, what: str = "hypergradient"):
    """``checkify.check`` that every leaf is finite, for functions wrapped in ``checkify.checkify``.

    Example: ``err, out = checkify.checkify(f)(x); err.throw()`` where ``f`` calls ``checkify_finite``.
    """

    checkify.check(all_finite(tree), f"{what} contains NaN or inf")
    return tree


def with_finite_check(hypergrad, what: str = "hypergradient"):
    """Wrap a ``hypergrad`` so that its outputs (value and every gradient) go through :func:`check_finite`."""

    names = ("outer_value", "d_lam", "d_theta")

    @functools.wraps(hypergrad)
    def checked(*args, **kwargs):
        out = hypergrad(*args, **kwargs)
        if isinstance(out, tuple) and len(out) <= len(names):
            check_finite(dict(zip(names, out)), what)
        else:
            check_finite(out, what)
        return out

    return checked


def hypergrad_error(hypergrad, reference, theta, lam, inner_batch, outer_batch):
    """Accuracy of a hypergradient mode against a reference on one problem instance.

    ``reference`` is either a pytree ``d_lam`` (e.g. a closed form) or another ``hypergrad`` function (e.g.
    ``implicit(..., solver="dense")`` evaluated at the exact inner solution). Returns a dict of python floats:
    ``rel_error = |g - g_ref| / |g_ref|``, ``abs_error = |g - g_ref|``, ``cosine = <g, g_ref> / (|g| |g_ref|)``
    and ``ref_norm = |g_ref|`` (Euclidean norms over all leaves).
    """
    g = hypergrad(theta, lam, inner_batch, outer_batch)[1]
    ref = reference(theta, lam, inner_batch, outer_batch)[1] if callable(reference) else reference
    diff = tree_norm(tree_sub(g, ref))
    ref_norm = tree_norm(ref)
    cos = tree_vdot(g, ref) / (tree_norm(g) * ref_norm)
    return {
        "rel_error": float(diff / ref_norm),
        "abs_error": float(diff),
        "cosine": float(cos),
        "ref_norm": float(ref_norm),
    }
