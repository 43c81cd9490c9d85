"""The magnitude projection on a tensor sharded across processes, without gathering it.

FSDP keeps each process's contiguous block of a parameter's rows (dim 0). The projection
(extract/sparsity.py `projection_mask`) needs two things that look global: each unit's
`min_per_unit` largest magnitudes, and the k-th largest magnitude of the whole tensor. Here both
come from collectives on counts and a few values, never on the tensor:

- the k-th largest magnitude is found digit by digit (radix select on the float's bits, which order
  like the floats for magnitudes): four all-reduces of a 256-bin histogram of this shard's entries;
- ties at that value are kept in storage order, as the single-process projection keeps them: each
  process learns how many ties the processes before it hold (one all-gather of one count each);
- a unit along dim 0 (a row) lies whole in one shard, so its minimum is local; a unit along dim 1
  (a column) straddles the shards, so each process contributes its `min_per_unit` largest
  magnitudes per column (an all-gather of min_per_unit x columns values), and the column's
  threshold is their `min_per_unit`-th largest.

The result is the single-process mask, restricted to this process's rows
(`tests/test_sharded.py` checks it with two gloo processes).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from extract.projection import protect_largest_per_unit_

DIGITS = (24, 16, 8, 0)  # radix select on float32 bits, 8 bits at a time, highest first


def _all_reduce(tensor: torch.Tensor, group) -> torch.Tensor:
    dist.all_reduce(tensor, group=group)
    return tensor


def _all_gather(tensor: torch.Tensor, group) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return parts


def _ranks_before(counts: torch.Tensor, group) -> torch.Tensor:
    """How many of something the processes of lower rank hold: the sum of their `counts` (int64, any
    shape, e.g. one count per column)."""
    gathered = _all_gather(counts, group)[: dist.get_rank(group)]
    return torch.stack(gathered).sum(0) if gathered else torch.zeros_like(counts)


@torch.no_grad()
def kth_largest_sharded(scores: torch.Tensor, k: int, group=None) -> torch.Tensor:
    """The k-th largest of the non-negative float32 values held across the group (each process its
    own `scores`), as a 0-dim float32 tensor; every process gets the same value."""
    bits = scores.reshape(-1).float().view(torch.int32)  # non-negative floats order like their bits
    candidates = torch.ones_like(bits, dtype=torch.bool)
    prefix, remaining = 0, k
    for shift in DIGITS:
        digits = (bits >> shift) & 0xFF
        histogram = _all_reduce(torch.bincount(digits[candidates], minlength=256).to(torch.int64), group)
        at_or_above = histogram.flip(0).cumsum(0)  # [i]: how many candidates have digit >= 255 - i
        digit = 255 - int(torch.nonzero(at_or_above >= remaining)[0])
        remaining -= int(histogram[digit + 1:].sum())
        prefix |= digit << shift
        candidates &= digits == digit
    return torch.tensor([prefix], dtype=torch.int32).view(torch.float32)[0]


def _take_first_ties(mask: torch.Tensor, ties: torch.Tensor, wanted: int, group) -> None:
    """Add to `mask` the first `wanted` True entries of `ties` in the global storage order (this
    process's entries come after those of every lower rank)."""
    local = ties.reshape(-1).nonzero().flatten()
    start = int(_ranks_before(torch.tensor([len(local)]), group))
    take = max(0, min(len(local), wanted - start))
    mask.view(-1)[local[:take]] = True


def _protect_columns(scores: torch.Tensor, j: int, group) -> None:
    """Units along dim 1 straddle the shards: a column's threshold is the j-th largest of every
    process's own j largest in it, and its ties are taken in row order across processes."""
    local_j = min(j, scores.shape[0])
    top = scores.topk(local_j, dim=0).values
    if local_j < j:  # a shard with fewer rows than j: pad with values below any magnitude
        top = torch.cat([top, top.new_full((j - local_j, scores.shape[1]), -1.0)])
    threshold = torch.cat(_all_gather(top, group)).topk(j, dim=0).values[-1:]  # (1, columns)
    local_above = (scores > threshold).sum(0, keepdim=True)
    above = _all_reduce(local_above.clone(), group)
    before = _ranks_before((scores == threshold).sum(0, keepdim=True), group)
    # protect_largest_per_unit_ counts this block's `above` only: give it the others' through `j`
    protect_largest_per_unit_(scores, 0, j - (above - local_above), threshold, before)


@torch.no_grad()
def sharded_projection_mask(shard: torch.Tensor, k: int, unit_axis: int | None, min_per_unit: int,
                            group=None) -> torch.Tensor:
    """The single-process `projection_mask` of the whole tensor, for this process's rows of it.
    `shard` is this process's contiguous block of rows (dim 0; processes in rank order) and `k` the
    number of entries to keep in the whole tensor."""
    scores = shard.detach().abs().float()
    rows = int(_all_reduce(torch.tensor([scores.shape[0]], dtype=torch.int64), group))
    total = rows * (scores.shape[1] if scores.dim() == 2 else 1)
    if unit_axis is not None and min_per_unit > 0:
        other_size = scores.shape[1] if unit_axis == 0 else rows
        j = min(min_per_unit, other_size)
        if unit_axis == 0:  # every row is whole here: the single-process rule, locally
            if scores.shape[0]:
                protect_largest_per_unit_(scores, 1, j, scores.topk(j, dim=1).values[:, -1:])
        else:
            _protect_columns(scores, j, group)
        k = max(k, j * (rows if unit_axis == 0 else scores.shape[1]))
    if k >= total:
        return torch.ones_like(shard, dtype=torch.bool)
    cut = kth_largest_sharded(scores, k, group)
    mask = scores > cut
    missing = k - int(_all_reduce(mask.sum().reshape(1).to(torch.int64), group))
    if missing > 0:  # ties at the cut: the first ones in storage order, as in one process
        _take_first_ties(mask, scores == cut, missing, group)
    return mask

