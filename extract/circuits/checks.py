"""Checks on a discrete circuit, with the same code for dense and sparse models (METHOD.md section 4).

- sufficient: with everything outside the circuit mean-ablated, held-out loss <= the target
- necessary: with only the circuit mean-ablated, held-out loss >= half of ln 2
- control: a random circuit with the same number of nodes at every site should not be sufficient
"""
from __future__ import annotations

import math

import torch

from extract.circuits.edges import count_edges
from extract.circuits.masks import NodeMask
from extract.circuits.prune import scores_with_gates

NECESSARY_LOSS = math.log(2) / 2


def random_gates_like(gates: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Gates keeping as many nodes at every site as `gates` does, at random positions."""
    generator = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same circuit on every device
    out = {}
    for key, gate in gates.items():
        picked = torch.randperm(gate.numel(), generator=generator)[: int(gate.sum())]
        out[key] = torch.zeros(gate.numel(), dtype=gate.dtype).index_fill_(0, picked, 1.0).to(gate.device)
    return out


def check_circuit(model, mask: NodeMask, gates: dict[str, torch.Tensor], heldout, target: float,
                  alone: dict[str, float] | None = None) -> dict:
    """`alone`: the circuit's own held-out scores when the caller already has them (bisection does)."""
    kept = {key: gate.bool() for key, gate in gates.items()}
    alone = alone or scores_with_gates(model, mask, gates, heldout)
    removed = scores_with_gates(model, mask, {k: 1 - g for k, g in gates.items()}, heldout)
    random = scores_with_gates(model, mask, random_gates_like(gates), heldout)
    return {
        "nodes": int(sum(g.sum() for g in gates.values())),
        "edges": count_edges(model, kept),
        "loss": alone["loss"],
        "accuracy": alone["accuracy"],
        "ablated_loss": removed["loss"],
        "random_loss": random["loss"],
        "sufficient": alone["loss"] <= target,
        "necessary": removed["loss"] >= NECESSARY_LOSS,
    }
