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
