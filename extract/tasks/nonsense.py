"""The nonsense-task control (METHOD.md section 4): the same prompts with labels that do not follow
the deciding detail. Pruning with mean ablation can fit labels by itself; if it reaches the target
on such a twin, the real task's circuit proves little.

Built-in tasks come in pairs whose two prompts differ only in the deciding detail, with answers
swapped. The twin gives both prompts of a pair the same answer, so the label is exactly independent
of the detail; half the pairs (chosen by the seed) answer one way, half the other. Examples without
that pairing (a task file) get their answers shuffled, balanced within each answer pair.
"""
from __future__ import annotations

import random

from extract.tasks.examples import TaskExample


def _is_paired(examples: list[TaskExample]) -> bool:
    pairs = list(zip(examples[::2], examples[1::2]))
    return len(examples) % 2 == 0 and all(
        (a.target_id, a.alternative_id) == (b.alternative_id, b.target_id) for a, b in pairs)


def _labelled(example: TaskExample, answer: int) -> TaskExample:
    other = example.alternative_id if answer == example.target_id else example.target_id
    return TaskExample(example.prompt_ids, answer, other)


def _balanced_flags(n: int, rng: random.Random) -> list[bool]:
    flags = [i < n // 2 for i in range(n)]
    rng.shuffle(flags)
    return flags


def nonsense_twin(examples: list[TaskExample], seed: int = 0) -> list[TaskExample]:
    """The examples in the same order, relabelled so that the answer ignores the deciding detail."""
    rng = random.Random(f"nonsense/{seed}")
    if _is_paired(examples):
        out, pairs = [], list(zip(examples[::2], examples[1::2]))
        for (first, second), keep_first in zip(pairs, _balanced_flags(len(pairs), rng)):
            answer = first.target_id if keep_first else second.target_id
            out += [_labelled(first, answer), _labelled(second, answer)]
        return out
    groups: dict[frozenset, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(frozenset((e.target_id, e.alternative_id)), []).append(i)
    out = list(examples)
    for indices in groups.values():
        low, high = sorted({examples[indices[0]].target_id, examples[indices[0]].alternative_id})
        for i, first in zip(indices, _balanced_flags(len(indices), rng)):
            out[i] = _labelled(examples[i], low if first else high)
    return out
