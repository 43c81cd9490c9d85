"""User tasks from a JSONL file: one {"prompt", "target", "alternative"} object per line.

Target and alternative are compared by their first token under the model's tokenizer. Every
error names the file and line. A task file must be balanced: each (target, alternative) token pair
appears as often as its swap, as in the paper's paired tasks, so a circuit cannot score by always
answering one token.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from extract.errors import UserError
from extract.tasks.examples import TaskExample, answer_token, first_token_id

log = logging.getLogger(__name__)

FIELDS = ("prompt", "target", "alternative")
MIN_EXAMPLES = 20


class TaskFileError(UserError, ValueError):
    """A task file that cannot be used, with the file and line."""


def _first_token(tokenizer, text: str, where: str, field: str) -> int:
    token = first_token_id(tokenizer, text)
    if token is None:
        raise TaskFileError(f"{where}: {field} {text!r} is empty after tokenisation")
    return token


def load_task_file(path: str | Path, tokenizer, max_context: int, min_examples: int = MIN_EXAMPLES):
    """Read and validate a task file; returns a list of TaskExample in file order."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: task file not found")
    examples = []
    mid_token: list[int] = []  # lines whose prompt ends inside a token of prompt + answer
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise TaskFileError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(row, dict):
            raise TaskFileError(f"{where}: expected a JSON object with {', '.join(FIELDS)}")
        missing = [f for f in FIELDS if not isinstance(row.get(f), str)]
        if missing:
            raise TaskFileError(f"{where}: missing or non-string field(s): {', '.join(missing)}")
        unknown = sorted(set(row) - set(FIELDS))
        if unknown:
            raise TaskFileError(f"{where}: unknown field(s): {', '.join(unknown)} (expected {', '.join(FIELDS)})")
        target = _first_token(tokenizer, row["target"], where, "target")
        alternative = _first_token(tokenizer, row["alternative"], where, "alternative")
        if target == alternative:
            raise TaskFileError(f"{where}: target {row['target']!r} and alternative {row['alternative']!r} share "
                                f"their first token {tokenizer.convert_ids_to_tokens(target)!r}")
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        if not prompt:
            raise TaskFileError(f"{where}: empty prompt")
        if len(prompt) > max_context:
            raise TaskFileError(f"{where}: prompt is {len(prompt)} tokens, longer than the model's context "
                                f"of {max_context}")
        if (answer_token(tokenizer, prompt, row["prompt"], row["target"]) != target
                or answer_token(tokenizer, prompt, row["prompt"], row["alternative"]) != alternative):
            mid_token.append(number)
        examples.append(TaskExample(tuple(prompt), target, alternative))
    if len(examples) < min_examples:
        raise TaskFileError(f"{path}: {len(examples)} examples; at least {min_examples} are needed to hold some out")
    pairs = Counter((e.target_id, e.alternative_id) for e in examples)
    for (a, b), count in pairs.items():
        if pairs.get((b, a), 0) != count:
            names = tokenizer.convert_ids_to_tokens([a, b])
            raise TaskFileError(f"{path}: unbalanced: {count} examples answer {names[0]!r} over {names[1]!r} but "
                                f"{pairs.get((b, a), 0)} answer {names[1]!r} over {names[0]!r}")
    if mid_token:
        # A warning, not an error: the comparison is still defined, but the model is asked about a
        # token split it never sees in real text, which usually makes the task look harder than it is.
        log.warning("%s: %d of %d prompts end inside a token (first: line %d): the tokenizer merges the "
                    "prompt's end with the target or alternative, e.g. `{'key'` + `:` is read as `':`. "
                    "End the prompt earlier and move those characters into target and alternative.",
                    path, len(mid_token), len(examples), mid_token[0])
    return examples
