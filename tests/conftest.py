"""Shared pytest fixtures.

Real-data tests ask for the ``data_dir`` fixture; it resolves ``$JAXREC_DATA`` and skips the test with a
clear reason when the variable is unset (CI sets it to ``../shared/data``).
"""
import os
from pathlib import Path

import pytest

os.environ.setdefault("JAXREC_QUIET", "1")


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
