"""Circuit files: one JSON per (task, model) with the kept nodes by site and index, every edge with
its weight, the checks and the loss-vs-size curve, so a circuit can be read, drawn and re-checked
without the run that found it."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from extract import atomic
from extract.arch import SITE_NAMES
from extract.circuits.edges import list_edges
from extract.errors import UserError
from extract.recipe import PruneConfig
from extract.tasks.examples import TaskExample

# 2: calibrated_loss and calibration; 3: k_coef and attempts; 4: train/validation/test splits and controls;
# 5: the size margin covers the test sample's noise too (validation_bound); 6: the weights' fingerprint, the
# means file and the test examples, so that a published circuit re-checks on its own (extract.load_circuit)
FORMAT_VERSION = 6
# A circuit with more edges keeps its nodes and its edge count (circuit.edges) but lists no edges: a dense
# model's circuit on a real checkpoint has millions (54,796 nodes of SmolLM2-135M ran out of 24 GiB listing
# them), which no drawing or reader uses.
MAX_LISTED_EDGES = 100_000
# A circuit file may also carry "descriptions" (extract/circuits/describe.py): what each node does. They do not
# change any result, so a version-6 file without them gets them on the next prune run, without pruning again.


def circuit_file(task: str, role: str, suffix: str = ".json") -> str:
    """The name of a (task, model) circuit file in the circuits folder: TASK.MODEL.json, where a model
    named by a path or Hub id has every other character replaced by "_"."""
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in role.strip("./"))
    return f"{task}.{slug}{suffix}"


def circuit_record(model, task: str, role: str, model_path: str, found, cfg: PruneConfig, *,
                   weights: str, means_file: str, test: list[TaskExample]) -> dict:
    """`cfg`: the pruning settings; `weights`: the model's fingerprint; `means_file`: the ablation means,
    relative to the circuits folder; `test`: the examples every reported figure was read on."""
    record = {"format": FORMAT_VERSION, "task": task, "model": role, "model_path": model_path, "weights": weights,
              "means_file": means_file, "target_loss": cfg.target_loss, "prune": asdict(cfg), **found.result.to_dict(),
              "curve": found.curve,
              "test_examples": [[list(e.prompt_ids), e.target_id, e.alternative_id] for e in test],
              "nodes": None, "edges": None}
    if found.gates is not None:
        kept = {key: gate.bool() for key, gate in found.gates.items()}
        record["nodes"] = {key: torch.nonzero(mask).flatten().tolist() for key, mask in kept.items() if mask.any()}
        record["edges"] = listed_edges(model, kept, found.result.circuit.edges)
    return record


def listed_edges(model, kept: dict[str, torch.Tensor], count: int) -> list[dict] | None:
    """Every edge among the `kept` nodes with its weight, or None past MAX_LISTED_EDGES (`count`: how many)."""
    return list_edges(model, kept) if count <= MAX_LISTED_EDGES else None


def write_circuit(path: Path, record: dict) -> None:
    atomic.write_json_atomic(path, record)


def read_circuit(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def test_examples(record: dict) -> list[TaskExample]:
    return [TaskExample(tuple(prompt), target, alternative) for prompt, target, alternative in record["test_examples"]]


class CircuitFileError(UserError, ValueError):
    """A circuit file whose nodes the model it is applied to does not have."""


def gates_from_record(record: dict, site_widths: dict[str, int], source: str) -> dict[str, torch.Tensor]:
    """0/1 gates for every site from a circuit file's node lists (sites it omits are all off).
    `source` names the file in errors."""
    gates = {key: torch.zeros(width) for key, width in site_widths.items()}
    for key, indices in (record.get("nodes") or {}).items():
        if key not in gates:
            layers = sorted({int(k.split(".")[0]) for k in site_widths})
            raise CircuitFileError(f"{source}: nodes: site {key!r} is not in this model, whose sites are "
                                   f"layers {layers[0]}-{layers[-1]} of {', '.join(SITE_NAMES)} (was the circuit "
                                   "found on another model?)")
        outside = [i for i in indices if not 0 <= i < site_widths[key]]
        if outside:
            raise CircuitFileError(f"{source}: nodes: site {key!r} has {site_widths[key]} nodes in this model; "
                                   f"the file names node {outside[0]}")
        gates[key][indices] = 1.0
    return gates
