"""Where a run's time goes: wall seconds per part (set-up, sparsify, means, each task on each model with
its controls, describing its circuit, report), printed at the end of a run and kept in report.json.

The parts live in OUTPUT_DIR/timings.json (one file per process: timings-rank1.json, ...), updated as
each part ends, so a run resumed after an interruption still shows the parts an earlier session did.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from extract import atomic

TIMINGS_FILE = "timings.json"


def _file(out: Path, rank: int) -> Path:
    return Path(out) / (TIMINGS_FILE if rank == 0 else f"timings-rank{rank}.json")


class Timings:
    """Wall seconds per named part, saved after every part this process times."""

    def __init__(self, out: Path, rank: int = 0):
        self.path = _file(out, rank)
        self.parts: dict[str, float] = _read(self.path)

    def record(self, name: str, seconds: float) -> None:
        self.parts[name] = round(seconds, 1)
        atomic.write_json_atomic(self.path, self.parts)

    @contextmanager
    def part(self, name: str):
        start = time.time()
        yield
        self.record(name, time.time() - start)


def all_parts(out: Path) -> dict[str, float]:
    """Every process's parts, the main process's first."""
    parts: dict[str, float] = {}
    for path in [_file(out, 0), *sorted(Path(out).glob("timings-rank*.json"))]:
        parts.update(_read(path))
    return parts


def _read(path: Path) -> dict[str, float]:
    """A timings file's parts; none for a missing or damaged one (that costs earlier times, nothing else)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def timing_table(parts: dict[str, float]) -> str:
    """The parts as aligned lines, longest first, with each one's share and the total."""
    total = sum(parts.values())
    width = max((len(name) for name in parts), default=0)
    lines = [f"  {name:<{width}}  {seconds:8.1f} s  {seconds / total:6.1%}" if total else f"  {name}"
             for name, seconds in sorted(parts.items(), key=lambda item: -item[1])]
    return "\n".join(["where the time went (wall seconds; parts run in other processes overlap):", *lines,
                      f"  {'total':<{width}}  {total:8.1f} s"])
