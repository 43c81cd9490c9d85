"""Circuit edges counted from the actual weights (METHOD.md section 3).

An edge is a nonzero weight whose two end nodes are both kept: residual read -> MLP neuron
(`c_fc`), neuron -> MLP write (`c_proj`), attention read -> q/k/v (`c_attn`), v -> attention write
(attention `c_proj`). The same rule scores a dense model, where every kept pair across a matrix is
an edge.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EdgeMatrix:
    weight: str  # parameter path; stored (in, out) as GPT-2's Conv1D does
    inputs: tuple[str, ...]  # site keys covering the rows, in order
    outputs: tuple[str, ...]  # site keys covering the columns, in order


def gpt2_edge_matrices(model) -> list[EdgeMatrix]:
    matrices = []
    for layer in range(model.config.n_layer):
        block, key = f"transformer.h.{layer}", f"{layer}."
        matrices += [
            EdgeMatrix(f"{block}.attn.c_attn.weight", (key + "attn_in",), (key + "q", key + "k", key + "v")),
            EdgeMatrix(f"{block}.attn.c_proj.weight", (key + "v",), (key + "attn_out",)),
            EdgeMatrix(f"{block}.mlp.c_fc.weight", (key + "mlp_in",), (key + "mlp",)),
            EdgeMatrix(f"{block}.mlp.c_proj.weight", (key + "mlp",), (key + "mlp_out",)),
        ]
    return matrices


EDGE_MAPS = {"gpt2": gpt2_edge_matrices}


def _live_edges(model, kept: dict[str, torch.Tensor]):
    """(matrix, weight, live) per edge matrix, where `live` marks the nonzero weights whose two end
    nodes are both kept: the one rule both count_edges and list_edges apply."""
    params = dict(model.named_parameters())
    for matrix in EDGE_MAPS[model.config.model_type](model):
        rows = torch.cat([kept[k] for k in matrix.inputs]).bool()
        cols = torch.cat([kept[k] for k in matrix.outputs]).bool()
        weight = params[matrix.weight].detach()
        yield matrix, weight, (weight != 0) & rows[:, None] & cols[None, :]


@torch.no_grad()
def count_edges(model, kept: dict[str, torch.Tensor]) -> int:
    """Edges among the kept nodes; `kept` maps site keys to boolean vectors."""
    return sum(int(live.sum()) for _, _, live in _live_edges(model, kept))


def _split(flat_index: int, keys: tuple[str, ...], widths: dict[str, int]) -> tuple[str, int]:
    for key in keys:
        if flat_index < widths[key]:
            return key, flat_index
        flat_index -= widths[key]
    raise IndexError(flat_index)


@torch.no_grad()
def list_edges(model, kept: dict[str, torch.Tensor]) -> list[dict]:
    """Every edge among the kept nodes with its weight: {"from": [site, index], "to": [site, index],
    "weight": w}, for circuit files and drawings."""
    widths = {key: int(mask.numel()) for key, mask in kept.items()}
    edges = []
    for matrix, weight, live in _live_edges(model, kept):
        for i, j in torch.nonzero(live).tolist():
            edges.append({"from": list(_split(i, matrix.inputs, widths)), "to": list(_split(j, matrix.outputs, widths)),
                          "weight": float(weight[i, j])})
    return edges
