"""Built-in Python tasks in the style of the paper (METHOD.md section 5), generated in balanced pairs.

Each generator returns two (prompt, target, alternative) triples whose contexts differ only in the
detail that decides the answer, with answers swapped. Contexts vary: a function header, a few
unrelated statements, and identifiers drawn at random. Train and held-out examples never share an
identifier (the pools are split by a hash of the word), so held-out loss measures the mechanism,
not memorised names.
"""
from __future__ import annotations

import hashlib
import random

from extract.tasks.examples import TaskExample, first_token_id, splits_at_prompt_end

WORDS = """
account address amount answer archive args array attempt base batch block body buffer cache callback
channel chunk client code column command config connection content context count counter cursor data
database date default delay delta depth destination device entry error event extra factor field
file flag form format frame group handler header height host index info input item items key keys
label layer length level limit line link list loader message method mode model module name node
number offset option order output owner packet page parent part path pattern payload point port
position prefix profile queue range reader record region request response result root row rule
sample scale schema score section server session settings shape size source span start state status
step store stream suffix table tag target task template text thread timeout token total tree type
unit url user value version view weight width window worker writer zone
""".split()

MODULES = ["os", "sys", "json", "re", "time", "math", "logging", "itertools", "functools", "collections"]


def _pool(split: str) -> list[str]:
    """Identifier words of one split: about 1 in 5 words is held out, by a hash of the word."""
    def heldout(word):
        return hashlib.sha1(word.encode()).digest()[0] < 52

    return [w for w in WORDS if heldout(w) == (split == "heldout")]


class _Names:
    def __init__(self, rng: random.Random, pool: list[str]):
        self.rng, self.pool = rng, pool

    def __call__(self, k: int = 1) -> list[str]:
        """k distinct identifiers, plain words or snake_case pairs."""
        out: list[str] = []
        while len(out) < k:
            word = self.rng.choice(self.pool)
            if self.rng.random() < 0.3:
                word = f"{word}_{self.rng.choice(self.pool)}"
            if word not in out:
                out.append(word)
        return out


def _filler(names: _Names, rng: random.Random, indent: str) -> str:
    """0-3 unrelated statements, so the deciding detail is not always at the same offset."""
    lines = []
    for _ in range(rng.randint(0, 3)):
        a, b, c = names(3)
        lines.append(rng.choice([
            f"{a} = {b}", f"{a} = {b}.{c}", f"{a} = {b}({c})", f"{a}.{b}({c})", f"{a} = len({b})",
            f"{a} = {b} + 1", f"# {a} {b} {c}", f"{a} = {rng.choice(MODULES)}.{b}({c})",
        ]))
    return "".join(f"{indent}{line}\n" for line in lines)


def _function(names: _Names, rng: random.Random) -> str:
    func, a, b = names(3)
    return f"def {func}({a}, {b}):\n" + _filler(names, rng, "    ")


def single_double_quote(names, rng):
    head, (v, w) = _function(names, rng), names(2)
    shape = rng.choice(["{v} = {q}{w}", "print({q}{w}", "{v}[{q}{w}", "return {q}{w}", "{v}.get({q}{w}",
                        "if {v} == {q}{w}"])
    prompt = head + "    " + shape.format(v=v, w=w, q="{q}")
    return [(prompt.format(q="'"), "'", '"'), (prompt.format(q='"'), '"', "'")]


def bracket_counting(names, rng):
    head, v = _function(names, rng), names()[0]
    items = ", ".join(rng.choice([str(rng.randint(0, 99)), *names(1)]) for _ in range(rng.randint(1, 5)))
    prompt = head + f"    {v} = {{}}{items}"
    return [(prompt.format("["), "]", "]]"), (prompt.format("[["), "]]", "]")]


def set_or_string(names, rng):
    func, v, x, xs = names(4)
    between = _filler(names, rng, "    ")
    prompt = f"def {func}({xs}):\n    {v} = {{}}\n{between}    for {x} in {xs}:\n        {v}"
    return [(prompt.format("set()"), ".", " +="), (prompt.format('""'), " +=", ".")]


def bracket_brace(names, rng):
    # The prompt stops before the closing quote: the tokenizer merges it with what follows (`':`, `',`).
    head, v, key = _function(names, rng), *names(2)
    q = rng.choice(["'", '"'])
    prompt = head + f"    {v} = {{}}{q}{key}"
    return [(prompt.format("{"), q + ":", q + ","), (prompt.format("["), q + ",", q + ":")]


def with_open(names, rng):
    head = _function(names, rng)
    reading = rng.choice(["input_path", "src_path", "infile", "source_file", "read_path", "in_file"])
    writing = rng.choice(["output_path", "dst_path", "outfile", "target_file", "write_path", "out_file"])
    prompt = head + "    with open({}, '"
    return [(prompt.format(reading), "r", "w"), (prompt.format(writing), "w", "r")]


def while_return_true(names, rng):
    head = _function(names, rng)
    return [(head + "    while True", ":", "\n"), (head + "    return True", "\n", ":")]


def var_swap(names, rng):
    head, (a, b) = _function(names, rng), names(2)
    return [(head + f"    {a}, {b} = {b},", f" {a}", f" {b}"), (head + f"    {b}, {a} = {a},", f" {b}", f" {a}")]


def class_init(names, rng):
    cls = "".join(part.capitalize() for part in names()[0].split("_"))
    a, b = names(2)
    body = "class {c}:\n    def __init__(self, {x}, {y}):\n        self.{x} = {x}\n        self."
    return [(body.format(c=cls, x=a, y=b), b, a), (body.format(c=cls, x=b, y=a), a, b)]


def if_ternary(names, rng):
    head, (v, a, c) = _function(names, rng), names(3)
    return [(head + f"    {v} = {a} if {c}", " else", ":"), (head + f"    if {c}", ":", " else")]


TASKS = {f.__name__: f for f in (single_double_quote, bracket_counting, set_or_string, bracket_brace, with_open,
                                 while_return_true, var_swap, class_init, if_ternary)}


def builtin_task(name: str, tokenizer, split: str, n_pairs: int, seed: int = 0,
                 max_len: int | None = None) -> list[TaskExample]:
    """`n_pairs` balanced pairs of task `name` for `split` ("train" or "heldout"), as token ids.

    A pair is skipped when, under this tokenizer, target and alternative share a first token, a
    prompt is longer than `max_len` tokens (the model's context), a prompt does not end on a token
    boundary (see `splits_at_prompt_end`), or an answer that is not blank starts with a blank token
    (` queue_x` split as ` ` + `queue`: the choice would be about a space).
    """
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r} (built-in tasks: {', '.join(TASKS)})")
    rng = random.Random(f"{name}/{split}/{seed}")
    names = _Names(rng, _pool(split))
    examples: list[TaskExample] = []
    attempts = 0
    while len(examples) < 2 * n_pairs and attempts < 4 * n_pairs:
        attempts += 1
        pair = [_example(tokenizer, *triple, max_len) for triple in TASKS[name](names, rng)]
        if all(pair):
            examples += pair
    return examples


def _example(tokenizer, prompt: str, target: str, alternative: str, max_len: int | None) -> TaskExample | None:
    """The example as token ids, or None when it fails one of `builtin_task`'s rules."""
    ids = tuple(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    t, a = first_token_id(tokenizer, target), first_token_id(tokenizer, alternative)
    if t == a or (max_len is not None and len(ids) > max_len):
        return None
    for answer, token in ((target, t), (alternative, a)):
        if not splits_at_prompt_end(tokenizer, prompt, ids, answer):
            return None
        if answer.strip() and not tokenizer.decode([token]).strip():
            return None
    return TaskExample(ids, t, a)
