"""Closing-quote examples from code, and the two-way task loss."""
import math

import pytest
import torch
from transformers import AutoTokenizer

from extract.paths import TOKENIZER_DIR
from extract.tasks import TaskExample, two_way_scores
from extract.tasks.quotes import closing_quote_examples

SOURCE = '''\
import os

def describe(path, mode):
    """A docstring with 'quotes' inside that is not a one-line literal."""
    # a comment with "quotes" is not a string either
    label = "directory" if os.path.isdir(path) else 'file'
    print('opening', path, "with mode", mode)
    return {"label": label, 'mode': mode, "name": os.path.basename(path)}
'''


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def test_quote_examples_are_real_closing_quotes_and_balanced(tokenizer):
    examples = closing_quote_examples([SOURCE] * 3, tokenizer, n_examples=100, prompt_tokens=8)
    single, double = (tokenizer.convert_tokens_to_ids(tokenizer.tokenize(q))[0] for q in ("'", '"'))
    targets = [e.target_id for e in examples]
    assert targets.count(single) == targets.count(double) > 0
    for example in examples:
        assert len(example.prompt_ids) == 8
        assert {example.target_id, example.alternative_id} == {single, double}
        prompt = tokenizer.decode(list(example.prompt_ids))
        quote = tokenizer.decode([example.target_id])
        # the prompt is code that really continues with this closing quote
        assert prompt + quote in SOURCE
        assert "docstring" not in prompt and "comment" not in prompt


def test_quote_examples_ignore_comments_and_docstrings(tokenizer):
    source = '# it\'s "here"\n"""doc \'string\' text"""\nx = 1\n' * 20
    assert closing_quote_examples([source], tokenizer, n_examples=10, prompt_tokens=4) == []


def test_quote_examples_skip_nested_quotes_and_far_openings(tokenizer):
    nested = 'x = "it is \'fine\' here"\ny = \'say "hi" now\'\n' * 20
    assert closing_quote_examples([nested], tokenizer, n_examples=10, prompt_tokens=8) == []
    long_literal = "x = 'a b c d e f g h i j k l m n o p q r s t u v w'\n" * 10
    assert closing_quote_examples([long_literal * 2], tokenizer, n_examples=10, prompt_tokens=8) == []


class FixedLogits(torch.nn.Module):
    """A stand-in model whose last-position logits are given."""

    def __init__(self, last_logits):
        super().__init__()
        self.last = torch.nn.Parameter(torch.tensor(last_logits))

    def forward(self, input_ids, **kwargs):
        logits = self.last.expand(input_ids.shape[0], input_ids.shape[1], -1)
        return type("Output", (), {"logits": logits})()


def test_two_way_loss_and_accuracy():
    model = FixedLogits([0.0, 2.0, 0.0, 5.0])
    examples = [TaskExample((7, 7), 1, 3), TaskExample((7, 7, 7), 3, 1)]  # one wrong, one right
    scores = two_way_scores(model, examples)
    wrong = -math.log(1 / (1 + math.exp(3.0)))
    right = -math.log(1 / (1 + math.exp(-3.0)))
    assert scores["accuracy"] == 0.5
    assert scores["loss"] == pytest.approx((wrong + right) / 2)


BUILTIN = sorted(__import__("extract.tasks.builtin", fromlist=["TASKS"]).TASKS)


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_task_is_balanced_deterministic_and_split_three_ways(tokenizer, name):
    from extract.tasks.builtin import builtin_task

    splits = {split: builtin_task(name, tokenizer, split, 100) for split in ("train", "validation", "test")}
    train = splits["train"]
    assert len(train) == 200 and len(splits["validation"]) == len(splits["test"]) == 200
    for first, second in zip(train[::2], train[1::2]):  # each pair swaps its answers
        assert (first.target_id, first.alternative_id) == (second.alternative_id, second.target_id)
    assert train == builtin_task(name, tokenizer, "train", 100)
    prompts = {split: {e.prompt_ids for e in examples} for split, examples in splits.items()}
    assert not prompts["train"] & prompts["validation"] and not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]
    assert len(prompts["train"]) > 150  # varied, not one template repeated
    for example in splits["test"][:50]:  # prompt + answer tokenises as the prompt's tokens, then the answer's
        for answer in (example.target_id, example.alternative_id):
            text = tokenizer.decode(list(example.prompt_ids) + [answer])
            assert tokenizer(text, add_special_tokens=False)["input_ids"][: len(example.prompt_ids) + 1] == [
                *example.prompt_ids, answer]


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_pairs_differ_only_in_the_deciding_detail(tokenizer, name):
    """The two prompts of a pair share everything but one contiguous stretch (the deciding detail),
    and their answers are swapped."""
    import random

    from extract.tasks.builtin import TASKS, _Names, _pool

    rng = random.Random(0)
    names = _Names(rng, _pool("train"))
    for _ in range(50):
        (first, answer, other), (second, second_answer, second_other) = TASKS[name](names, rng)
        assert (answer, other) == (second_other, second_answer) and answer != other
        assert first != second and _one_detail(first, second), (first, second)


def _one_detail(first: str, second: str) -> bool:
    """One stretch of one line differs (a quote, a bracket, a keyword), or one identifier is renamed
    (or two swapped) wherever it appears."""
    import os
    import re

    prefix = len(os.path.commonprefix([first, second]))
    suffix = len(os.path.commonprefix([first[prefix:][::-1], second[prefix:][::-1]]))
    if "\n" not in first[prefix : len(first) - suffix] + second[prefix : len(second) - suffix]:
        return True
    words = [re.findall(r"\w+|\W", text) for text in (first, second)]
    if len(words[0]) != len(words[1]):
        return False
    renamed = {(a, b) for a, b in zip(*words) if a != b}
    sources, targets = {a for a, _ in renamed}, {b for _, b in renamed}
    return len(renamed) == len(sources) == len(targets) <= 2 and (len(renamed) == 1 or sources == targets)


def test_answers_are_the_tokens_real_code_continues_with(tokenizer):
    """Where real code merges the answer with what follows, the task asks about the merged token."""
    from extract.tasks.builtin import builtin_task

    decoded = {tokenizer.decode([e.target_id]) for e in builtin_task("single_double_quote", tokenizer, "test", 100)}
    assert {"')", "']", "':"} <= decoded and {"'", '"'} <= decoded
    bracket_brace = {tokenizer.decode([e.target_id]) for e in builtin_task("bracket_brace", tokenizer, "test", 50)}
    assert bracket_brace == {"':", "',", '":', '",'}


def test_prompts_that_end_inside_a_token_are_skipped(tokenizer):
    from extract.tasks.builtin import _example

    # the tokenizer reads `{'key':` as `{'`, `key`, `':`, so a prompt ending at `'` is not real text
    assert _example(tokenizer, "x = {'key'", ": 1}", ", 1]", None) is None
    assert _example(tokenizer, "x = {'key", "': 1}", "', 1]", None) is not None
    assert _example(tokenizer, "x = {'key", "': 1}", "', 1]", 2) is None  # longer than the context


def test_identifier_pools_are_disjoint():
    from extract.tasks.builtin import _pool

    pools = [set(_pool(split)) for split in ("train", "validation", "test")]
    assert all(pools) and not pools[0] & pools[1] and not pools[0] & pools[2] and not pools[1] & pools[2]


def test_task_file_splits_are_disjoint_and_stable(tokenizer, tmp_path):
    from extract.circuits.stage import load_task
    from extract.recipe import Recipe, TaskFileRef
    from tests.conftest import quote_lines

    path = tmp_path / "quotes.jsonl"
    path.write_text("\n".join(quote_lines(200, seed=3)) + "\n")
    data = load_task(TaskFileRef(str(path)), tokenizer, 64, Recipe())
    splits = [data.train_examples(), data.validation, data.test]
    assert sum(map(len, splits)) == 400 and all(len(s) > 40 for s in splits)
    prompts = [{e.prompt_ids for e in s} for s in splits]
    assert not prompts[0] & prompts[1] and not prompts[0] & prompts[2] and not prompts[1] & prompts[2]
    again = load_task(TaskFileRef(str(path)), tokenizer, 64, Recipe())
    assert again.test == data.test


@pytest.mark.parametrize("name", ["single_double_quote", "self_attribute"])
def test_nonsense_labels_are_independent_of_the_deciding_detail(tokenizer, name):
    from collections import Counter

    from extract.tasks.builtin import builtin_task
    from extract.tasks.nonsense import nonsense_twin

    examples = builtin_task(name, tokenizer, "train", 200)
    twin = nonsense_twin(examples, seed=0)
    assert [e.prompt_ids for e in twin] == [e.prompt_ids for e in examples]
    assert twin == nonsense_twin(examples, seed=0) and twin != nonsense_twin(examples, seed=1)
    # the two prompts of a pair differ only in the deciding detail; in the twin they share one answer
    for first, second in zip(twin[::2], twin[1::2]):
        assert first.target_id == second.target_id
    # so the label ignores the detail: each side of the detail answers each way exactly half the time
    for offset in (0, 1):
        agree = sum(t.target_id == e.target_id for t, e in zip(twin[offset::2], examples[offset::2]))
        assert agree == len(examples) // 4
    # and the answers stay balanced: as many pairs answer like their first prompt as like their second
    counts = Counter(t.target_id == e.target_id for t, e in zip(twin[::2], examples[::2]))
    assert counts[True] == counts[False]


def test_nonsense_labels_of_a_task_file_are_shuffled_and_balanced():
    from extract.tasks import TaskExample
    from extract.tasks.nonsense import nonsense_twin

    examples = [TaskExample((i, 5), 1, 2) for i in range(20)] + [TaskExample((i, 6), 2, 1) for i in range(20)]
    twin = nonsense_twin(examples, seed=0)
    targets = [e.target_id for e in twin]
    assert targets.count(1) == targets.count(2) == 20
    kept = sum(t.target_id == e.target_id for t, e in zip(twin, examples))
    assert 10 <= kept <= 30  # shuffled: not the real labels, and not all flipped either


def test_unknown_builtin_task(tokenizer):
    from extract.tasks.builtin import builtin_task

    with pytest.raises(KeyError, match="built-in tasks: single_double_quote"):
        builtin_task("no_such_task", tokenizer, "train", 10)
