"""Held-out evaluation: next-token loss (and KL to the frozen dense model) on held-out blocks, shared by
training, pruning and the report."""
from __future__ import annotations

import math

import torch
from accelerate import Accelerator

from extract import fsdp
from extract.losses import token_losses

EVAL_LOGITS_BUDGET = 2**25  # floats of held-out logits per batch (128 MB)


def eval_batch_size(sequence_length: int, vocab_size: int) -> int:
    """Sequences per held-out batch: 16, or fewer where their logits would pass EVAL_LOGITS_BUDGET
    floats (16 x 256 x 50257 would be 823 MB per copy, and the losses make several)."""
    return max(1, min(16, EVAL_LOGITS_BUDGET // (sequence_length * vocab_size)))


@torch.no_grad()
def heldout_metrics(model, heldout: torch.Tensor, teacher=None, batch_size: int | None = None,
                    accelerator: Accelerator | None = None) -> dict[str, float]:
    """Held-out loss (and KL to the teacher), sharded over processes when an accelerator is given."""
    batch_size = batch_size or eval_batch_size(heldout.shape[1], model.config.vocab_size)
    was_training = model.training
    model.eval()
    rows, world = heldout, 1
    if accelerator is not None and accelerator.num_processes > 1:
        world = accelerator.num_processes
        rows = heldout[accelerator.process_index :: world]
    device = next(model.parameters()).device
    sums = torch.zeros(3, device=device)  # ce*n, kl*n, n
    # every process runs as many forwards as the one with the most rows: under FSDP each forward
    # gathers the weights from all of them; a process out of rows runs one row and counts nothing
    for start in range(0, math.ceil(len(heldout) / world), batch_size):
        batch = rows[start : start + batch_size]
        n = len(batch)
        ce, kl = token_losses(model, (batch if n else heldout[:1]).to(device), teacher)
        sums += torch.tensor([float(ce) * n, float(kl or 0.0) * n, n], device=device)
    fsdp.reshard(model)
    if world > 1:
        sums = accelerator.reduce(sums, reduction="sum")
    model.train(was_training)
    result = {"loss": float(sums[0] / sums[2])}
    if teacher is not None:
        result["kl_to_dense"] = float(sums[1] / sums[2])
    return result
