"""The vocabulary every architecture family speaks: node sites, edge matrices, sparsified tensors.

A family module (gpt2.py, llama.py, gpt_neox.py) describes one model layout with these types and
nothing else in the project reads a parameter or module name. METHOD.md section 3 defines the
eight sites and the edges; docs/architectures.md says what they mean on each layout.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from extract.errors import UserError

SITE_NAMES = ("attn_in", "q", "k", "v", "attn_out", "mlp_in", "mlp", "mlp_out")
# Sites on the residual stream. Every edge matrix joins one of these to a unit site (q, k, v, mlp):
# that unit side is the one the per-unit minimum of the projection counts along.
RESIDUAL_SITES = frozenset({"attn_in", "attn_out", "mlp_in", "mlp_out"})


class ArchitectureError(UserError, ValueError):
    """A model whose layout no family describes."""


@dataclass(frozen=True)
class Site:
    """A set of channels at one place in a layer, reached by a hook on an unmodified module.

    The channels are a slice of the hooked tensor's last axis, or explicit positions where a site is
    not one slice (GPT-NeoX lays q, k and v out head by head in one fused output)."""

    layer: int
    name: str  # one of SITE_NAMES
    module: str  # dotted path from the model root
    width: int
    start: int = 0  # the channels are [start, start + width) ...
    positions: tuple[int, ...] | None = None  # ... or these, in node order
    on_input: bool = False  # hook the module's input rather than its output (Llama's neurons feed down_proj)

    @property
    def key(self) -> str:
        return f"{self.layer}.{self.name}"

    @property
    def is_slice(self) -> bool:
        return self.positions is None


@dataclass(frozen=True, eq=False)
class EdgeMatrix:
    """A weight joining two groups of sites: every nonzero entry between two kept nodes is an edge.

    Each axis covers its sites' nodes concatenated in the order listed. Where an axis is not that
    order one to one, `input_nodes` / `output_nodes` give each position's node: GPT-NeoX's fused
    q|k|v rows interleave heads, and under grouped-query attention the output projection reads every
    value channel once per query head of its group."""

    weight: str  # parameter name
    inputs: tuple[str, ...]  # site keys along the input axis
    outputs: tuple[str, ...]  # site keys along the output axis
    stored: Literal["in_out", "out_in"]  # GPT-2's Conv1D stores (in, out); nn.Linear stores (out, in)
    input_nodes: tuple[int, ...] | None = None
    output_nodes: tuple[int, ...] | None = None
    # Set where query heads share value channels: input position p belongs to query head p // head_dim,
    # and listed edges name it (the same two nodes can be joined once per head).
    head_dim: int | None = None

    @property
    def unit_axis(self) -> int:
        """The stored axis that indexes units (neurons, q/k/v channels, value channels): the side
        that is not the residual stream. The per-unit minimum keeps j nonzeros along the other axis."""
        units_are_outputs = all(key.split(".", 1)[1] in RESIDUAL_SITES for key in self.inputs)
        return int(units_are_outputs) if self.stored == "in_out" else int(not units_are_outputs)


@dataclass(frozen=True)
class SparseTensor:
    """A sparsified parameter. `unit_axis` indexes the units that keep `min_per_unit` nonzeros
    each (the minimum is taken over the other axis); None means no per-unit minimum."""

    name: str
    param: torch.nn.Parameter
    unit_axis: int | None


@dataclass(frozen=True)
class Family:
    """One layout, shared by every `model_type` built the same way."""

    name: str
    model_types: tuple[str, ...]
    sites: Callable[[torch.nn.Module], list[Site]]
    edge_matrices: Callable[[torch.nn.Module], list[EdgeMatrix]]
    final_norm: str  # the norm between the last residual stream and the unembedding
    # Sparsified like the token embedding (no per-unit minimum), beside the input and output
    # embeddings that every family has: GPT-2's learned position embedding.
    extra_embeddings: tuple[str, ...] = ()
    # Whether attention and MLP read the same residual stream side by side (then the residual before the
    # MLP is the block's input, and bridges sit before attention only)
    parallel_residual: Callable[[object], bool] = lambda config: False
