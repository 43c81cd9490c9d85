"""A task example is a prompt with a correct and an alternative next token; a model is scored by
the two-way cross-entropy at the last position (METHOD.md section 3)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TaskExample:
    prompt_ids: tuple[int, ...]
    target_id: int
    alternative_id: int


@torch.no_grad()
def two_way_scores(model, examples: list[TaskExample], batch_size: int = 64) -> dict[str, float]:
    """Mean two-way loss and accuracy. Prompts are batched by length, so no padding is needed
    and absolute position embeddings stay exact."""
    if not examples:
        raise ValueError("no task examples to score")
    device = next(model.parameters()).device
    by_length = defaultdict(list)
    for example in examples:
        by_length[len(example.prompt_ids)].append(example)
    total_loss = correct = 0.0
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            ids = torch.tensor([e.prompt_ids for e in chunk], device=device)
            last = model(input_ids=ids).logits[:, -1].float()
            pair = torch.stack([last[torch.arange(len(chunk)), [e.target_id for e in chunk]],
                                last[torch.arange(len(chunk)), [e.alternative_id for e in chunk]]], dim=1)
            logp = F.log_softmax(pair, dim=1)
            total_loss += float(-logp[:, 0].sum())
            correct += float((logp[:, 0] > logp[:, 1]).sum())
    return {"loss": total_loss / len(examples), "accuracy": correct / len(examples)}
