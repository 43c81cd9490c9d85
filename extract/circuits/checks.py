"""Checks on a discrete circuit, with the same code for dense and sparse models (METHOD.md section 4).

All read on the task's test split, which neither the mask nor the circuit size has seen.
- sufficient: with everything outside the circuit mean-ablated, test loss <= the target
- necessary: with only the circuit mean-ablated, test loss >= half of ln 2
- control: random circuits with the same number of nodes at every site (several draws) should not be
  sufficient
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


def circuit_scores(model, mask: NodeMask, gates: dict[str, torch.Tensor], examples, target: float) -> dict:
    """Size and sufficiency of a circuit: its nodes and edges, and its loss with everything else
    mean-ablated on `examples`."""
    alone = scores_with_gates(model, mask, gates, examples)
    return {"nodes": int(sum(g.sum() for g in gates.values())),
            "edges": count_edges(model, {key: gate.bool() for key, gate in gates.items()}),
            "loss": alone["loss"], "loss_se": alone["loss_se"], "accuracy": alone["accuracy"],
            "sufficient": alone["loss"] <= target}


def check_circuit(model, mask: NodeMask, gates: dict[str, torch.Tensor], test, target: float,
                  random_draws: int = 10, seed: int = 0) -> dict:
    """The circuit's size and checks on the `test` examples, with `random_draws` random circuits of
    the same nodes per site: their mean and lowest loss and how many reach the target (none should)."""
    result = circuit_scores(model, mask, gates, test, target)
    removed = scores_with_gates(model, mask, {k: 1 - g for k, g in gates.items()}, test)
    randoms = [scores_with_gates(model, mask, random_gates_like(gates, seed + draw), test)["loss"]
               for draw in range(random_draws)]
    result.update(ablated_loss=removed["loss"], necessary=removed["loss"] >= NECESSARY_LOSS, random_draws=random_draws)
    if randoms:
        result.update(random_loss=sum(randoms) / len(randoms), random_loss_min=min(randoms),
                      random_reached=sum(loss <= target for loss in randoms))
    return result
