"""Shared pytest fixtures.

Real-data tests ask for the ``data_dir`` fixture; it resolves ``$JAXREC_DATA`` and skips the test with a
clear reason when the variable is unset (CI sets it to ``../shared/data``).
"""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("JAXREC_QUIET", "1")


def _compilation_cache() -> None:
    """A persistent XLA compilation cache for this test run, one folder per xdist worker (JAX writes its entries
    without a lock, so two processes never share one). Many tests and the CLI subprocesses they start compile the
    same steps again in new closures; with the cache the identical programs load instead of compiling. Set through
    the environment before jax is imported, so subprocesses inherit it. ``JAXREC_TEST_CACHE=0`` turns it off."""
    if os.environ.get("JAXREC_TEST_CACHE", "1") == "0" or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    path = tempfile.mkdtemp(prefix=f"jaxrec-xla-cache-{worker}-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"


_compilation_cache()


def _fast_compiles() -> None:
    """Tests run tiny shapes, so nearly all their time is XLA compiling, not running. ``jax_disable_most_optimizations``
    skips the expensive backend passes (XLA's optimisation level 0): on this project's slowest tests it cut the wall
    time by about a third (100 s -> 66 s, 93 s -> 65 s, measured side by side). The results are the same
    programs, compiled with less effort; tolerances in the tests are unchanged. Set through the environment so CLI
    subprocesses inherit it. ``JAXREC_TEST_FAST_COMPILE=0`` (or setting the JAX variable yourself) turns it off."""
    if os.environ.get("JAXREC_TEST_FAST_COMPILE", "1") == "0":
        return
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")


_fast_compiles()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = os.environ.get("JAXREC_DATA")
    if not root:
        pytest.skip("real-data test: set JAXREC_DATA to the datasets folder (e.g. ../shared/data)")
    path = Path(root)
    if not path.is_dir():
        pytest.fail(f"JAXREC_DATA={root!r} is not a directory; point it at the datasets folder")
    return path


@pytest.fixture(scope="module")
def x64():
    """float64 for one test module (``pytestmark = pytest.mark.usefixtures("x64")``); the previous
    ``jax_enable_x64`` setting is restored afterwards so other modules are unaffected."""
    import jax

    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", prev)
