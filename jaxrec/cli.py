"""Command-line helpers shared by every ``experiments/<method>.py``."""
from __future__ import annotations

import argparse

__all__ = ["common_parser", "seed_list", "live_output", "add_reverse_flag", "work_order"]


def common_parser(description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the flags every experiment accepts.

    * ``--dataset`` (default ``synthetic``: offline generated data, no download)
    * ``--data-dir`` (datasets folder; default ``$JAXREC_DATA``, see ``jaxrec.data.resolve_data_dir``)
    * ``--seeds N`` (run seeds ``0..N-1``; default 1) or ``--seed-list 3 7`` (explicit seeds)
    * ``--epochs`` (default ``None``: the method's own default)
    * ``--out`` (results root, default ``results``), ``--no-save`` (write no result files)
    * ``--quick`` (tiny smoke-test settings, for CI)

    Add method-specific flags to the returned parser; read seeds with :func:`seed_list`.
    """
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="synthetic", help="dataset name (folder in the data dir) or 'synthetic'")
    p.add_argument("--data-dir", default=None, help="datasets folder (default: $JAXREC_DATA)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds: runs seeds 0..N-1")
    p.add_argument("--seed-list", type=int, nargs="+", default=None,
                   help="explicit seeds (overrides --seeds)")
    p.add_argument("--epochs", type=int, default=None, help="max training epochs (default: method default)")
    p.add_argument("--out", default="results", help="results root folder")
    p.add_argument("--quick", action="store_true", help="tiny smoke-test settings")
    p.add_argument("--no-save", action="store_true", help="do not write result files")
    return p


def live_output() -> None:
    """Flush ``print`` output line by line also when stdout is a file or a pipe (``nohup ... > log``), so a
    long run's log shows its progress as it happens. Call it at the start of an experiment's ``main``."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # absent on replaced streams (e.g. pytest capture)
        if reconfigure is not None:
            reconfigure(line_buffering=True)


def seed_list(args: argparse.Namespace) -> list[int]:
    """Seeds to run: ``--seed-list`` if given, else ``0..--seeds-1``."""
    if getattr(args, "seed_list", None):
        return list(args.seed_list)
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {args.seeds}")
    return list(range(args.seeds))


def add_reverse_flag(p: argparse.ArgumentParser) -> None:
    """Add ``--reverse``: a table command walks its grids and seeds backwards, so that a second process
    running the same command into the same ``--out`` starts at the other end. Runs are cached by config and
    seed, and a run another process is training is waited for, not repeated
    (:func:`jaxrec.results.run_once`); the table both print is the same."""
    p.add_argument("--reverse", action="store_true",
                   help="--table: work through grids and seeds in reverse order, so a second process running the "
                        "same command (same --out) shares the work; runs in progress are not duplicated")


def work_order(items, args: argparse.Namespace) -> list:
    """``items`` in the order this process works through them: reversed with ``--reverse``."""
    items = list(items)
    return items[::-1] if getattr(args, "reverse", False) else items
