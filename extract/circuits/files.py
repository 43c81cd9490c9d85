"""Circuit files: one JSON per (task, model) with the kept nodes by site and index, every edge with
its weight, the checks and the loss-vs-size curve, so a circuit can be read, drawn and re-checked
without the run that found it."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from extract import checkpoints
from extract.circuits.edges import list_edges

# 2: calibrated_loss and calibration; 3: k_coef and attempts; 4: train/validation/test splits and controls;
# 5: the size margin covers the test sample's noise too (validation_bound)
FORMAT_VERSION = 5


def circuit_record(model, task: str, role: str, model_path: str, found, target_loss: float) -> dict:
    record = {"format": FORMAT_VERSION, "task": task, "model": role, "model_path": model_path,
              "target_loss": target_loss, **found.result, "curve": found.curve, "nodes": None, "edges": None}
    if found.gates is not None:
        kept = {key: gate.bool() for key, gate in found.gates.items()}
        record["nodes"] = {key: torch.nonzero(mask).flatten().tolist() for key, mask in kept.items() if mask.any()}
        record["edges"] = list_edges(model, kept)
    return record


def write_circuit(path: Path, record: dict) -> None:
    checkpoints.write_json_atomic(path, record)


def load_circuit(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def gates_from_record(record: dict, site_widths: dict[str, int]) -> dict[str, torch.Tensor]:
    """0/1 gates for every site from a circuit file's node lists (sites it omits are all off)."""
    gates = {key: torch.zeros(width) for key, width in site_widths.items()}
    for key, indices in (record.get("nodes") or {}).items():
        if key not in gates:
            raise KeyError(f"circuit names site {key!r}, which this model does not have")
        gates[key][indices] = 1.0
    return gates
