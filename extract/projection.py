"""The magnitude projection's maths on one tensor: how many entries a density keeps, and the mask of
the largest magnitudes with each unit's minimum protected (METHOD.md section 2). extract/sparsity.py
applies it to a model's tensors; extract/sharded.py computes the same mask from row shards."""
from __future__ import annotations

import math

import torch


def kept_count(numel: int, density: float) -> int:
    # the small tolerance keeps float round-off (exp(log(1/8)) = 0.12500000000000003) from adding one
    return min(numel, max(1, math.ceil(density * numel - 1e-6)))


@torch.no_grad()
def projection_mask(weight: torch.Tensor, k: int, unit_axis: int | None, min_per_unit: int) -> torch.Tensor:
    """Boolean mask of exactly max(k, protected) entries: each unit's `min_per_unit` largest
    magnitudes are protected, the rest of the budget goes to the largest remaining magnitudes;
    among equal magnitudes at either cut, the first in storage order.

    The mask is everything above the k-th largest magnitude rather than a top-k's indices: on a CPU,
    topk holds a (value, index) pair for every entry, so for GPT-2's 38.6M-entry embedding it
    measured twice the memory (1.2 GiB) and 2.7x the time (bench/README.md)."""
    scores = weight.detach().abs().float()  # a copy, so it can be written to
    if unit_axis is not None and min_per_unit > 0:
        other = 1 - unit_axis
        j = min(min_per_unit, scores.shape[other])
        protect_largest_per_unit_(scores, other, j, scores.topk(j, dim=other).values.narrow(other, j - 1, 1))
        k = max(k, j * scores.shape[unit_axis])
    flat = scores.view(-1)
    if k >= flat.numel():
        return torch.ones_like(weight, dtype=torch.bool)
    cut = kth_largest(flat, k)
    mask = flat > cut
    missing = k - int(mask.sum())
    if missing > 0:  # ties at the cut: take the first ones
        mask[(flat == cut).nonzero().flatten()[:missing]] = True
    return mask.view_as(weight)


def protect_largest_per_unit_(scores: torch.Tensor, along: int, j: int, threshold: torch.Tensor,
                              ties_before: torch.Tensor | int = 0) -> None:
    """Set each unit's `j` largest scores along `along` to inf, in place. `threshold` is each unit's
    j-th largest (kept as a size-1 axis); among scores equal to it, the first in storage order are
    taken, after `ties_before` equal ones that precede this block (the sharded projection's rows of
    other processes), so one process and several protect the same entries."""
    above = scores > threshold
    ties = scores == threshold
    missing = j - above.sum(along, keepdim=True)
    order = ties.to(torch.int64).cumsum(along) - 1 + ties_before  # each tie's place among its unit's ties
    scores[above | (ties & (order < missing))] = math.inf


def kth_largest(flat: torch.Tensor, k: int, by_topk: bool | None = None) -> torch.Tensor:
    """The k-th largest value of a 1-D tensor. kthvalue on a CPU; on a GPU, where kthvalue gives
    each slice a single thread block (one SM for a 38.6M-entry embedding), topk of the smaller side
    of the cut, which holds at most half the entries."""
    n = flat.numel()
    if not (flat.is_cuda if by_topk is None else by_topk):
        return flat.kthvalue(n - k + 1).values
    if k <= n - k:
        return flat.topk(k, sorted=False).values.min()
    return flat.topk(n - k + 1, largest=False, sorted=False).values.max()
