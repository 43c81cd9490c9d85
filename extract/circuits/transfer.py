"""Bridged interventions (METHOD.md section 7): does a sparse circuit steer the dense model?

On a test pair (prompts A and B of a built-in task, the same length, answers swapped), the circuit's
node values from B are swapped into the sparse model's run on A. That changes the sparse residual
stream at each bridge site by some delta; the decoder's linear map carries the delta into the dense
model's residual stream at that one site, and the dense model runs on from there. The figure is how
far the dense model's two-way logit difference (A's answer minus A's alternative) moves toward B,
as a fraction of what patching the dense model's own residual at the same site with its value on B
moves it: the full patch, which at a residual site is the whole A-to-B change. Pairs are used both
ways round, and a fraction is the sum of the moves over the sum of the full patches.

Edits are carried one site at a time (the rest of the dense model recomputed from there). The site is
the one where the circuit moves the dense model most on the validation pairs; its figures are read
on test. The control: random node sets of the circuit's size at every node site (10 by default),
carried through the same site.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from extract.bridges import Bridges, recording, replacing, residual_sites, residual_stream
from extract.circuits.sites import hooked
from extract.tasks.examples import TaskExample, padded_prompts

RANDOM_NODE_SETS = 10


@dataclass
class PairBatch:
    """Pairs as two aligned batches: row r of `first` and of `second` are the two prompts of a pair
    (same length, so the same padding), scored on the first's answer and alternative."""

    first: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # ids, attention mask, positions
    second: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    target: torch.Tensor
    alternative: torch.Tensor

    @property
    def size(self) -> int:
        return len(self.target)


def pair_batch(examples: list[TaskExample]) -> PairBatch | None:
    """Examples 2i and 2i+1 as pairs, both ways round, keeping the pairs whose prompts have the same
    number of tokens (node values are swapped position by position). None when no pair is left."""
    pairs = [(a, b) for a, b in zip(examples[::2], examples[1::2]) if len(a.prompt_ids) == len(b.prompt_ids)
             and (a.target_id, a.alternative_id) == (b.alternative_id, b.target_id)]
    if not pairs:
        return None
    ordered = [(a, b) for a, b in pairs] + [(b, a) for a, b in pairs]
    prompts = padded_prompts([a.prompt_ids for a, _ in ordered] + [b.prompt_ids for _, b in ordered])
    half = len(ordered)
    first, second = tuple(t[:half] for t in prompts), tuple(t[half:] for t in prompts)
    return PairBatch(first, second, torch.tensor([a.target_id for a, _ in ordered]),
                     torch.tensor([a.alternative_id for a, _ in ordered]))


def _logit_difference(model, prompts, batch: PairBatch) -> torch.Tensor:
    device = next(model.parameters()).device
    ids, attention, positions = (t.to(device) for t in prompts)
    output = model(input_ids=ids, attention_mask=attention, position_ids=positions, logits_to_keep=1)
    last = output.logits[:, -1].float()
    rows = torch.arange(batch.size, device=device)
    return last[rows, batch.target.to(device)] - last[rows, batch.alternative.to(device)]


def _record_nodes(model, sites, prompts, batch) -> dict[str, torch.Tensor]:
    values = {}

    def record(site, x):
        values[site.key] = x
        return x

    with hooked(model, sites, record):
        _logit_difference(model, prompts, batch)
    return values


def sparse_deltas(sparse, node_sites, gates: dict[str, torch.Tensor], batch: PairBatch) -> dict[str, torch.Tensor]:
    """The change of the sparse residual at every bridge site when the gated nodes take their values
    on the second prompts in the run on the first."""
    chosen = [s for s in node_sites if gates[s.key].any()]
    donor = _record_nodes(sparse, chosen, batch.second, batch)
    bridge_sites = residual_sites(sparse)
    clean, patched = {}, {}
    with residual_stream(sparse, bridge_sites, recording(clean)):
        _logit_difference(sparse, batch.first, batch)

    def swap(site, x):
        on = gates[site.key].to(x.device).bool()
        return torch.where(on, donor[site.key], x)

    with hooked(sparse, chosen, swap), residual_stream(sparse, bridge_sites, recording(patched)):
        _logit_difference(sparse, batch.first, batch)
    return {key: patched[key] - clean[key] for key in clean}


@dataclass
class DensePatch:
    """The dense model's side of a pair batch, computed once: its logit difference on the first prompts,
    and per residual site the summed move of the full patch (that site's value on the second prompts)."""

    sites: list
    clean: torch.Tensor
    full: dict[str, torch.Tensor]


def dense_patch(dense, batch: PairBatch) -> DensePatch:
    sites = residual_sites(dense)
    clean = _logit_difference(dense, batch.first, batch)
    donor = {}
    with residual_stream(dense, sites, recording(donor)):
        _logit_difference(dense, batch.second, batch)
    full = {}
    for site in sites:
        with residual_stream(dense, [site], replacing(site.key, lambda h: donor[site.key])):
            full[site.key] = (_logit_difference(dense, batch.first, batch) - clean).sum()
    return DensePatch(sites, clean, full)


def dense_moves(dense, bridges: Bridges, deltas: dict[str, torch.Tensor], batch: PairBatch,
                patch: DensePatch, keys: list[str] | None = None) -> dict[str, float]:
    """Per bridge site (those in `keys`, or all): the dense model's summed logit-difference move when that
    site's sparse delta is decoded into its residual stream, over the full patch's summed move there."""
    out = {}
    for site in [s for s in patch.sites if keys is None or s.key in keys]:
        weight = bridges.decoders[site.key.replace(".", "_")].weight
        with residual_stream(dense, [site], replacing(site.key, lambda h: h + deltas[site.key] @ weight.T)):
            moved = (_logit_difference(dense, batch.first, batch) - patch.clean).sum()
        full = patch.full[site.key]
        out[site.key] = float(moved / full) if float(full) != 0 else 0.0
    return out


def random_gates_of_size(gates: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """As many nodes at every node site as `gates` has there, drawn at random."""
    out = {}
    for key, gate in gates.items():
        fresh = torch.zeros_like(gate)
        fresh[torch.randperm(len(gate), generator=generator)[: int(gate.sum())]] = 1.0
        out[key] = fresh
    return out


@torch.no_grad()
def bridged_transfer(dense, sparse, bridges: Bridges, node_sites, gates: dict[str, torch.Tensor],
                     validation: list[TaskExample], test: list[TaskExample], draws: int = RANDOM_NODE_SETS,
                     seed: int = 0, site: str | None = None) -> dict | None:
    """The circuit's transfer figure and its random control (module docstring); `site` given skips the
    choice on validation. None when the task has no same-length pairs."""
    test_batch = pair_batch(test)
    if test_batch is None:
        return None
    if site is None:
        val_batch = pair_batch(validation)
        if val_batch is None:
            return None
        on_validation = dense_moves(dense, bridges, sparse_deltas(sparse, node_sites, gates, val_batch), val_batch,
                                    dense_patch(dense, val_batch))
        site = max(on_validation, key=on_validation.get)
    patch = dense_patch(dense, test_batch)
    per_site = dense_moves(dense, bridges, sparse_deltas(sparse, node_sites, gates, test_batch), test_batch, patch)
    generator = torch.Generator().manual_seed(seed)
    controls = []
    for _ in range(draws):
        random_gates = random_gates_of_size(gates, generator)
        deltas = sparse_deltas(sparse, node_sites, random_gates, test_batch)
        controls.append(dense_moves(dense, bridges, deltas, test_batch, patch, [site])[site])
    return {"site": site, "fraction": per_site[site], "per_site": per_site, "test_pairs": test_batch.size // 2,
            "random_mean": sum(controls) / len(controls) if controls else None,
            "random_max": max(controls) if controls else None, "random_draws": draws}
