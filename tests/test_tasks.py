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


@pytest.mark.parametrize("name", sorted(__import__("extract.tasks.builtin", fromlist=["TASKS"]).TASKS))
def test_builtin_task_is_balanced_deterministic_and_split_by_source(tokenizer, name):
    from extract.tasks.builtin import builtin_task

    train = builtin_task(name, tokenizer, "train", 200)
    assert len(train) == 400
    for first, second in zip(train[::2], train[1::2]):  # each pair swaps its answers
        assert (first.target_id, first.alternative_id) == (second.alternative_id, second.target_id)
    assert train == builtin_task(name, tokenizer, "train", 200)
    heldout = builtin_task(name, tokenizer, "heldout", 200)
    assert not {e.prompt_ids for e in train} & {e.prompt_ids for e in heldout}
    assert len({e.prompt_ids for e in train}) > 300  # varied, not one template repeated
    for example in heldout[:50]:  # prompt + answer tokenises as the prompt's tokens, then the answer's
        for answer in (example.target_id, example.alternative_id):
            text = tokenizer.decode(list(example.prompt_ids) + [answer])
            assert tokenizer(text, add_special_tokens=False)["input_ids"][: len(example.prompt_ids) + 1] == [
                *example.prompt_ids, answer]


def test_prompts_that_end_inside_a_token_are_skipped(tokenizer):
    from extract.tasks.builtin import _example

    # the tokenizer reads `{'key':` as `{'`, `key`, `':`, so a prompt ending at `'` is not real text
    assert _example(tokenizer, "x = {'key'", ":", ",", None) is None
    assert _example(tokenizer, "x = {'key", "':", "',", None) is not None
    assert _example(tokenizer, "x = {'key", "':", "',", 2) is None  # longer than the context


def test_identifier_pools_are_disjoint():
    from extract.tasks.builtin import _pool

    train, heldout = set(_pool("train")), set(_pool("heldout"))
    assert train and heldout and not train & heldout


def test_unknown_builtin_task(tokenizer):
    from extract.tasks.builtin import builtin_task

    with pytest.raises(KeyError, match="built-in tasks: single_double_quote"):
        builtin_task("no_such_task", tokenizer, "train", 10)
