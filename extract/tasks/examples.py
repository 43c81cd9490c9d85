"""A task example is a prompt with a correct and an alternative next token; a model is scored by
the two-way cross-entropy at the last position (METHOD.md section 3)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SPLITS = ("train", "validation", "test")  # the mask, the circuit size, every reported figure


def split_of(text: str) -> str:
    """The split a string (an identifier, a prompt) belongs to, by a hash: 3/5 train, 1/5 validation,
    1/5 test. Stable across runs and machines, so a string never changes split."""
    bucket = hashlib.sha1(text.encode()).digest()[0] % 5
    return "train" if bucket < 3 else SPLITS[bucket - 2]


@dataclass(frozen=True)
class TaskExample:
    prompt_ids: tuple[int, ...]
    target_id: int
    alternative_id: int


def first_token_id(tokenizer, text: str) -> int | None:
    """The first token of `text` on its own (how targets and alternatives are compared); None if empty."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if ids else None


def answer_token(tokenizer, prompt_ids, prompt: str, continuation: str) -> int | None:
    """The token that follows the prompt when `prompt + continuation` is tokenised as one text, or None
    when that text does not start with the prompt's own tokens: the prompt would end inside a token real
    text never splits there (for example `{'key'` + `:` where the corpus has the single token `':`), and
    a two-way choice there asks the model about a token sequence it never saw."""
    ids = tokenizer(prompt + continuation, add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    if tuple(ids[:n]) != tuple(prompt_ids) or len(ids) <= n:
        return None
    return ids[n]


def padded_prompts(prompts, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids) of token lists left-padded to the longest, with positions
    that start at 0 on each prompt's first real token, so absolute positions are unchanged and the
    last column is every prompt's last token."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        attention[row, width - len(prompt):] = 1
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return ids, attention, positions


def last_position_logits(model, examples: list[TaskExample], pad_id: int = 0) -> torch.Tensor:
    """Logits at each prompt's last token. Prompts are left-padded, with an attention mask and
    position ids that start at 0 on the first real token, so absolute positions are unchanged."""
    device = next(model.parameters()).device
    ids, attention, positions = padded_prompts([e.prompt_ids for e in examples], pad_id)
    output = model(input_ids=ids.to(device), attention_mask=attention.to(device), position_ids=positions.to(device),
                   logits_to_keep=1)  # only the last position is scored: skip the unembedding elsewhere
    last = output.logits[:, -1]
    return last.to(torch.promote_types(last.dtype, torch.float32))  # half up to float32; float64 kept


def two_way_loss(model, examples: list[TaskExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-example loss, per-example correct) of the two-way choice; differentiable."""
    last = last_position_logits(model, examples)
    rows = torch.arange(len(examples), device=last.device)
    target = torch.tensor([e.target_id for e in examples], device=last.device)
    alternative = torch.tensor([e.alternative_id for e in examples], device=last.device)
    logp = F.log_softmax(torch.stack([last[rows, target], last[rows, alternative]], dim=1), dim=1)
    return -logp[:, 0], logp[:, 0] > logp[:, 1]


@torch.no_grad()
def two_way_scores(model, examples: list[TaskExample], batch_size: int = 64) -> dict[str, float]:
    """Mean two-way loss, its standard error over the examples, and accuracy."""
    if not examples:
        raise ValueError("no task examples to score")
    losses, correct = [], 0.0
    for start in range(0, len(examples), batch_size):
        loss, right = two_way_loss(model, examples[start : start + batch_size])
        losses.append(loss.double().cpu())
        correct += float(right.sum())
    losses = torch.cat(losses)
    spread = float(losses.std()) if len(losses) > 1 else 0.0
    return {"loss": float(losses.mean()), "loss_se": spread / len(losses) ** 0.5, "accuracy": correct / len(examples)}


def last_tokens(examples: list[TaskExample], n: int) -> list[TaskExample]:
    """The examples with prompts cut to their last `n` tokens: what a model can answer from the
    prompt's end alone (a task it solves from there is a short-range task)."""
    return [TaskExample(e.prompt_ids[-n:], e.target_id, e.alternative_id) for e in examples]
