"""The errors a user can fix from their message alone.

`run.py` prints a `UserError` as one line and exits 1; any other exception is a bug in this project
and keeps its traceback. Each class also derives from the builtin a caller would expect
(`ValueError` for bad input, `FileNotFoundError` for a missing file), so `except ValueError` still
catches what it did.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input or an unusable file: the message names the file, the key or the line to fix."""


class DataError(UserError, ValueError):
    """A corpus that cannot be loaded or that yields no complete block."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder a stage needs is not there (e.g. pruning a sparse model not yet trained)."""


class OutputDirError(UserError, RuntimeError):
    """The output folder is in use by another run, or a file in it is unreadable."""
