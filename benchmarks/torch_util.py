"""Shared by the PyTorch comparison benchmarks (PyTorch is not a jaxrec dependency)."""
from __future__ import annotations

import sys


def import_torch(script: str, threads: int):
    """``torch`` with ``threads`` intra-op threads, or exit with what to install."""
    try:
        import torch
    except ImportError:
        sys.exit(f"{script} compares against PyTorch, which is not a jaxrec dependency: pip install torch")
    torch.set_num_threads(threads)
    return torch
