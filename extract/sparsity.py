"""Weight-sparsity primitives: the projection of a model's tensors, their final densities, and the
density and learning-rate schedules.

Pure functions of tensors and step numbers, so they are tested directly (tests/test_sparsity.py);
extract/sparsifier.py is what the training loop calls. The top-k mask of one tensor is in
extract/projection.py. METHOD.md section 2 is the reference.
"""
from __future__ import annotations

import math

import torch
from torch.distributed.tensor import DTensor

from extract.arch import SparseTensor
from extract.projection import kept_count, projection_mask
from extract.sharded import sharded_projection_mask


@torch.no_grad()
def project_(tensors: list[SparseTensor], densities: float | list[float], min_per_unit: int) -> None:
    """Zero all but the largest-magnitude entries of every tensor, in place, to its density
    (one for all tensors, or one per tensor). A parameter sharded by FSDP2 (a DTensor) is projected
    shard by shard to exactly the same mask (extract/sharded.py)."""
    if not isinstance(densities, (list, tuple)):
        densities = [densities] * len(tensors)
    for t, density in zip(tensors, densities, strict=True):
        if density >= 1.0:
            continue
        weight = t.param.data
        k = kept_count(weight.numel(), density)  # a DTensor's numel is the whole tensor's
        if isinstance(weight, DTensor):  # FSDP2: this process holds a block of rows
            local = weight.to_local()
            local.mul_(sharded_projection_mask(local, k, t.unit_axis, min_per_unit, _row_group(weight)))
        else:
            weight.mul_(projection_mask(weight, k, t.unit_axis, min_per_unit))


def _row_group(weight: DTensor):
    """The process group a DTensor's rows are sharded over (FSDP2 shards dim 0 on a 1-D mesh)."""
    if weight.device_mesh.ndim != 1 or not weight.placements[0].is_shard(0):
        raise NotImplementedError(f"the sharded projection handles rows sharded on a 1-D mesh, not {weight.placements}")
    return weight.device_mesh.get_group()


def final_densities(tensors: list[SparseTensor], target_density: float,
                    embedding_density: float | None) -> list[float]:
    """Each tensor's final density. With `embedding_density`, the embeddings (the tensors without
    unit axes) get it and the matrices share what is left of the overall budget, so the nonzero
    count over all tensors is still target_density of their size."""
    if embedding_density is None:
        return [target_density] * len(tensors)
    embedding_numel = sum(t.param.numel() for t in tensors if t.unit_axis is None)
    matrix_numel = sum(t.param.numel() for t in tensors if t.unit_axis is not None)
    budget = target_density * (embedding_numel + matrix_numel) - embedding_density * embedding_numel
    if matrix_numel == 0 or budget <= 0:
        raise ValueError(f"embedding_density {embedding_density} leaves no budget for the matrices "
                         f"at target_density {target_density}")
    return [embedding_density if t.unit_axis is None else min(1.0, budget / matrix_numel) for t in tensors]


def density_floor(tensors: list[SparseTensor], min_per_unit: int) -> float:
    """The density the per-unit minimum alone imposes (e.g. 4/256 = 1/64 at width 256)."""
    protected = sum(min(min_per_unit, t.param.shape[1 - t.unit_axis]) * t.param.shape[t.unit_axis]
                    for t in tensors if t.unit_axis is not None)
    return protected / sum(t.param.numel() for t in tensors)


@torch.no_grad()
def measured_density(tensors_or_weights) -> tuple[float, int, int]:
    """(nonzero fraction, nonzeros, total) over the given tensors, read from the values themselves
    (a DTensor's over every process, so every process must call this)."""
    nonzero = total = 0
    for t in tensors_or_weights:
        w = t.param if isinstance(t, SparseTensor) else t
        if isinstance(w, DTensor):  # FSDP2: count this process's rows, then every process's
            count = torch.count_nonzero(w.to_local()).reshape(1)
            torch.distributed.all_reduce(count, group=_row_group(w))
            nonzero += int(count)
        else:
            nonzero += int(torch.count_nonzero(w))
        total += w.numel()
    return nonzero / total, nonzero, total


@torch.no_grad()
def units_at_minimum(tensors: list[SparseTensor], min_per_unit: int) -> dict[str, int]:
    """How many units (MLP neurons, q/k/v channels) of the matrices keep no more nonzeros than the
    per-unit minimum: where the minimum, not the weights' magnitudes, chose what a unit keeps."""
    units = at_minimum = 0
    for t in tensors:
        if t.unit_axis is None:
            continue
        weight, other = t.param.detach(), 1 - t.unit_axis
        counts = (weight != 0).sum(dim=other)
        units += counts.numel()
        at_minimum += int((counts <= min(min_per_unit, weight.shape[other])).sum())
    return {"units": units, "at_minimum": at_minimum, "min_per_unit": min_per_unit}


def density_at(progress: float, target: float, anneal_fraction: float, shape: str) -> float:
    """Density after a step at `progress` in [0, 1] of training: 1 at the start, `target` from
    `anneal_fraction` on.

    - linear: linear in density (the paper's schedule).
    - log: linear in log-density (geometric), so each step removes the same fraction of what is
      left; a linear schedule removes most of the remaining weights in its last stretch.
    - cubic: density = target + (1 - target) * (1 - t)^3 (Zhu & Gupta 2017): prunes fast while the
      model is redundant and slowly near the target.
    """
    if target >= 1.0:
        return 1.0
    t = 1.0 if anneal_fraction == 0 else min(1.0, progress / anneal_fraction)
    if t >= 1.0:
        return target
    if shape == "linear":
        return 1.0 + (target - 1.0) * t
    if shape == "log":
        return math.exp(t * math.log(target))
    if shape == "cubic":
        return target + (1.0 - target) * (1.0 - t) ** 3
    raise ValueError(f"unknown anneal shape {shape!r}")


def base_lr_factor(progress: float, warmup_fraction: float) -> float:
    """Linear warm-up then linear decay to 0."""
    if warmup_fraction > 0 and progress < warmup_fraction:
        return progress / warmup_fraction
    return max(0.0, (1.0 - progress) / (1.0 - warmup_fraction))


def sharkfin_factor(current_density: float, target_density: float, power: float = 0.5) -> float:
    """(target / current) ** power (the paper: a square root): small while still dense, 1 once the
    target is reached."""
    return (target_density / current_density) ** power


@torch.no_grad()
def rescale_gradients_to_unit_rms(parameters) -> float:
    """Scale all gradients together so their global root-mean-square is 1; returns the old RMS.
    Gradients sharded by FSDP2 (DTensors) count every process's block."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    whole = [g for g in grads if not isinstance(g, DTensor)]
    sharded = [g for g in grads if isinstance(g, DTensor)]
    squares = torch.stack([g.float().pow(2).sum() for g in whole]).sum() if whole else torch.zeros(())
    if sharded:  # FSDP2: each process holds a block of each gradient; the sum of squares is over all
        local = torch.stack([g.to_local().float().pow(2).sum() for g in sharded]).sum()
        torch.distributed.all_reduce(local, group=_row_group(sharded[0]))
        squares = squares.to(local.device) + local
    count = sum(g.numel() for g in grads)  # a DTensor's numel is the whole tensor's
    rms = float(torch.sqrt(squares / count))
    if rms > 0 and math.isfinite(rms):
        for group in (whole, [g.to_local() for g in sharded]):
            if group:
                torch._foreach_mul_(group, 1.0 / rms)
    return rms
