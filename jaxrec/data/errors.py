"""The single error type of the data layer.

Every problem with input data (a missing file, a malformed line, a checksum mismatch, an empty split, a
request the data cannot satisfy) raises :class:`DataError`, whose message names the file (and line, where
there is one) and says what to do about it.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["DataError", "data_error"]


class DataError(ValueError):
    """Bad or missing input data. A ``ValueError`` so generic handlers still catch it.

    Attributes ``path`` and ``line`` (1-based, or ``None``) locate the problem when it comes from a file.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.line = line


def data_error(problem: str, *, path: str | Path | None = None, line: int | None = None,
               fix: str | None = None) -> DataError:
    """Build a :class:`DataError` with the standard message ``"<path>:<line>: <problem>. <fix>"``.

    The location prefix is ``<path>:<line>: `` (or ``<path>: `` without a line, nothing without a path).
    """
    where = ""
    if path is not None:
        where = f"{path}:{line}: " if line is not None else f"{path}: "
    msg = where + problem.rstrip(".") + "."
    if fix:
        fix = fix.rstrip(".")
        msg += " " + fix[:1].upper() + fix[1:] + "."
    return DataError(msg, path=path, line=line)
