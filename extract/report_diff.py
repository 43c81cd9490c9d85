"""Whether two runs' reports agree: apart from wall times, and floats to a relative tolerance.

Two runs of the same jobs differ in their clocks, and, on another number of processes, in the last
digits of their losses: each process gets its share of the cores as threads, so its sums run in
another order (4.099120 against 4.099135 on the test suite's quote model).
"""
from __future__ import annotations

import math


def without_times(data):
    """`data` without the entries whose keys name seconds."""
    if isinstance(data, dict):
        return {k: without_times(v) for k, v in data.items() if "seconds" not in k}
    return [without_times(v) for v in data] if isinstance(data, list) else data


def differences(a, b, rel_tol: float = 1e-4, where: str = "") -> list[str]:
    """Where `a` and `b` differ, as paths (`tasks.quotes.dense.circuit.nodes`): in structure, in any
    value, or in a float by more than `rel_tol`. Empty: they agree."""
    if isinstance(a, float) or isinstance(b, float):
        numbers = all(isinstance(v, (int, float)) for v in (a, b))
        return [] if numbers and math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-7) else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where} (keys)".lstrip()]
        return [d for key in a for d in differences(a[key], b[key], rel_tol, f"{where}.{key}".lstrip("."))]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where} (length)".lstrip()]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, rel_tol, f"{where}[{i}]")]
    return [] if a == b else [where]
