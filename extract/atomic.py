"""Outputs written whole or not at all: every file and folder is written under a temporary name in its
destination's directory and renamed into place, so a killed run never leaves one that looks complete
but is not."""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_file(final: Path):
    """Yield a scratch path beside `final`; once the block has written it, it replaces `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path, fix: str):
    """A JSON output file, or an OutputDirError naming it and saying how to remake it (`fix`) when it
    is not JSON: cut short by a full disk or an editor, since this project writes atomically."""
    from extract.errors import OutputDirError

    try:
        return json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OutputDirError(f"{path}: not valid JSON ({error}); {fix}") from None


@contextmanager
def atomic_directory(final: Path):
    """Yield a scratch directory; on success it replaces `final` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(scratch, final)
