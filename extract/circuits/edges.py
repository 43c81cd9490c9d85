"""Circuit edges counted from the actual weights (METHOD.md section 3).

An edge is a nonzero weight whose two end nodes are both kept, in any of a family's edge matrices
(GPT-2: residual read -> MLP neuron, neuron -> MLP write, attention read -> q/k/v, v -> attention
write; extract/arch has each family's list). The same rule scores a dense model, where every kept
pair across a matrix is an edge. Everything runs on the device the weights are on.
"""
from __future__ import annotations

import torch

from extract.arch import EdgeMatrix, family_of


def _axis_kept(matrix_keys: tuple[str, ...], nodes: tuple[int, ...] | None, kept: dict[str, torch.Tensor],
               device) -> torch.Tensor:
    """Kept flags along one axis of a matrix: its sites' flags in order, mapped through `nodes`."""
    flags = torch.cat([kept[k].to(device) for k in matrix_keys]).bool()
    return flags if nodes is None else flags[torch.tensor(nodes, device=device)]


def in_out_weight(matrix: EdgeMatrix, params: dict[str, torch.nn.Parameter]) -> torch.Tensor:
    """An edge matrix's weight as (input nodes, output nodes), whichever way its module stores it."""
    weight = params[matrix.weight].detach()
    return weight if matrix.stored == "in_out" else weight.t()


def _live_edges(model, kept: dict[str, torch.Tensor]):
    """(matrix, weight as (in, out), live) per edge matrix, where `live` marks the nonzero weights
    whose two end nodes are both kept: the one rule both count_edges and list_edges apply."""
    params = dict(model.named_parameters())
    for matrix in family_of(model).edge_matrices(model):
        weight = in_out_weight(matrix, params)
        rows = _axis_kept(matrix.inputs, matrix.input_nodes, kept, weight.device)
        cols = _axis_kept(matrix.outputs, matrix.output_nodes, kept, weight.device)
        yield matrix, weight, (weight != 0) & rows[:, None] & cols[None, :]


@torch.no_grad()
def count_edges(model, kept: dict[str, torch.Tensor]) -> int:
    """Edges among the kept nodes; `kept` maps site keys to boolean vectors."""
    return sum(int(live.sum()) for _, _, live in _live_edges(model, kept))


def _node(position: int, matrix_keys: tuple[str, ...], nodes: tuple[int, ...] | None,
          widths: dict[str, int]) -> list:
    """[site key, index] of the node at one position of a matrix axis."""
    flat = position if nodes is None else nodes[position]
    for key in matrix_keys:
        if flat < widths[key]:
            return [key, flat]
        flat -= widths[key]
    raise IndexError(position)


def _edge(matrix: EdgeMatrix, i: int, j: int, weight: float, widths: dict[str, int]) -> dict:
    edge = {"from": _node(i, matrix.inputs, matrix.input_nodes, widths),
            "to": _node(j, matrix.outputs, matrix.output_nodes, widths), "weight": weight}
    if matrix.head_dim is not None:  # one value channel, several query heads: say which one
        edge["head"] = i // matrix.head_dim
    return edge


@torch.no_grad()
def list_edges(model, kept: dict[str, torch.Tensor]) -> list[dict]:
    """Every edge among the kept nodes with its weight: {"from": [site, index], "to": [site, index],
    "weight": w} (plus "head", the query head, where query heads share value channels), for circuit
    files and drawings."""
    widths = {key: int(mask.numel()) for key, mask in kept.items()}
    edges = []
    for matrix, weight, live in _live_edges(model, kept):
        where = torch.nonzero(live)
        values = weight[where[:, 0], where[:, 1]].tolist()
        edges += [_edge(matrix, i, j, w, widths) for (i, j), w in zip(where.tolist(), values)]
    return edges
