"""Built-in Python tasks in the style of the paper (METHOD.md section 5), generated in balanced pairs.

Each generator returns two (prompt, continuation, other continuation) triples whose prompts differ
only in the detail that decides the answer, with answers swapped. A continuation is the rest of the
line as real code writes it (`')` + newline, not a bare `'`), and the answer is the token the
tokenizer makes of it *after the prompt*: so where real code merges the answer with what follows
(`')`, `],`, `':`), the task asks about the merged token the model actually saw in training.

Contexts vary: a function header, a few unrelated statements, identifiers drawn at random. The
three splits never share an identifier: the words are split by a hash into train (3/5), validation
(1/5) and test (1/5) pools, and each split draws only from its own, so validation and test measure
the mechanism, not memorised names.
"""
from __future__ import annotations

import random

from extract.tasks.examples import SPLITS, TaskExample, answer_token, split_of

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


def _pool(split: str, words: list[str] = WORDS) -> list[str]:
    return [w for w in words if split_of(w) == split]


class _Names:
    def __init__(self, rng: random.Random, pool: list[str]):
        self.rng, self.pool = rng, pool

    def __call__(self, k: int = 1, exclude: tuple[str, ...] = ()) -> list[str]:
        """k distinct identifiers, plain words or snake_case pairs, none of them in `exclude`."""
        out: list[str] = []
        while len(out) < k:
            word = self.rng.choice(self.pool)
            if self.rng.random() < 0.3:
                word = f"{word}_{self.rng.choice(self.pool)}"
            if word not in out and word not in exclude:
                out.append(word)
        return out


def _filler(names: _Names, rng: random.Random, indent: str, exclude: tuple[str, ...] = ()) -> str:
    """0-3 unrelated statements, so the deciding detail is not always at the same offset. They never
    name a word in `exclude` (a task's deciding variable must not be reassigned in between)."""
    lines = []
    for _ in range(rng.randint(0, 3)):
        a, b, c = names(3, exclude)
        lines.append(rng.choice([
            f"{a} = {b}", f"{a} = {b}.{c}", f"{a} = {b}({c})", f"{a}.{b}({c})", f"{a} = len({b})",
            f"{a} = {b} + 1", f"# {a} {b} {c}", f"{a} = {rng.choice(MODULES)}.{b}({c})",
        ]))
    return "".join(f"{indent}{line}\n" for line in lines)


def _function(names: _Names, rng: random.Random, exclude: tuple[str, ...] = ()) -> str:
    func, a, b = names(3, exclude)
    return f"def {func}({a}, {b}):\n" + _filler(names, rng, "    ", exclude)


def _items(names: _Names, rng: random.Random, low: int = 2, high: int = 5) -> str:
    return ", ".join(rng.choice([str(rng.randint(0, 99)), *names(1)]) for _ in range(rng.randint(low, high)))


def _pair(prompt: str, continuation: str, other_prompt: str, other_continuation: str):
    """Two prompts that differ in the deciding detail, each answered by the other's alternative."""
    return [(prompt, continuation, other_continuation), (other_prompt, other_continuation, continuation)]


def single_double_quote(names, rng):
    # Several words in the string, so the opening quote lies beyond the prompt's last few tokens.
    head, (v, k) = _function(names, rng), names(2)
    text = " ".join(rng.choice(names.pool) for _ in range(rng.randint(2, 4)))
    prompt, rest = rng.choice([("{v} = {q}{t}", "\n"), ("print({q}{t}", ")\n"), ("{v}[{q}{t}", "] = {k}\n"),
                               ("return {q}{t}", "\n"), ("{v}.get({q}{t}", ")\n"), ("if {v} == {q}{t}", ":\n")])
    prompt, rest = head + "    " + prompt.format(v=v, t=text, q="{q}"), rest.format(k=k)
    return _pair(prompt.format(q="'"), "'" + rest, prompt.format(q='"'), '"' + rest)


def fstring_brace(names, rng):
    # Inside an f-string, a name after `{` closes with `}`; the same name without the brace ends the string.
    head, (v, a) = _function(names, rng), names(2)
    text = " ".join(rng.choice(names.pool) for _ in range(rng.randint(1, 3)))
    start, end = rng.choice([("print(f'", "')\n"), (f'{v} = f"', '"\n')])
    prompt = head + f"    {start}{text} "
    return _pair(prompt + "{" + a, "}" + end, prompt + a, end)


def self_attribute(names, rng):
    # A method returns the attribute its class's __init__ set: the name is copied from lines back.
    cls = "".join(part.capitalize() for part in names()[0].split("_"))
    a, b, method = names(3)
    body = ("class {c}:\n    def __init__(self, {x}):\n        self.{x} = {x}\n\n"
            "    def {m}(self):\n        return self.")
    return _pair(body.format(c=cls, x=a, m=method), f"{a}\n", body.format(c=cls, x=b, m=method), f"{b}\n")


def else_elif(names, rng):
    head, (c, v) = _function(names, rng), names(2)
    prompt = head + f"    if {c}:\n        {v} = None\n    "
    return _pair(prompt + "else", ":\n", prompt + "elif", f" {c}:\n")


def while_return_true(names, rng):
    head = _function(names, rng)
    return _pair(head + "    while True", ":\n", head + "    return True", "\n")


def bracket_type(names, rng):
    # `)` against `]`: which bracket the sequence opened with, a few items back.
    head, v = _function(names, rng), names()[0]
    prompt = head + f"    {v} = {{}}{_items(names, rng)}"
    return _pair(prompt.format("("), ")\n", prompt.format("["), "]\n")


def bracket_counting(names, rng):
    # The paper's task with this tokenizer's tokens: a nested call closes with `))`, a plain one with `)`.
    head, (v, f, g) = _function(names, rng), names(3)
    items = _items(names, rng, 1, 4)
    return _pair(head + f"    {v} = {f}({g}({items}", "))\n", head + f"    {v} = {f}({g}, {items}", ")\n")


def bracket_brace(names, rng):
    head, (v, key, value) = _function(names, rng), names(3)
    q = rng.choice(["'", '"'])
    prompt = head + f"    {v} = {{}}{q}{key}"
    return _pair(prompt.format("{"), f"{q}: {value}}}\n", prompt.format("["), f"{q}, {value}]\n")


def set_or_string(names, rng):
    func, v, x, xs = names(4)
    between = _filler(names, rng, "    ", exclude=(v,))
    prompt = f"def {func}({xs}):\n    {v} = {{}}\n{between}    for {x} in {xs}:\n        {v}"
    return _pair(prompt.format("set()"), f".add({x})\n", prompt.format('""'), f" += {x}\n")


# File names that say which way a file goes, one list per split so test names are never trained on.
READ_NAMES = {"train": ["input_path", "src_path", "infile", "source_file"], "validation": ["read_path", "in_path"],
              "test": ["in_file", "input_file"]}
WRITE_NAMES = {"train": ["output_path", "dst_path", "outfile", "target_file"], "validation": ["write_path", "out_path"],
               "test": ["out_file", "output_file"]}


def with_open(names, rng, split="train"):
    prompt = _function(names, rng) + "    with open({}, '"
    reading, writing = rng.choice(READ_NAMES[split]), rng.choice(WRITE_NAMES[split])
    return _pair(prompt.format(reading), "r') as f:\n", prompt.format(writing), "w') as f:\n")


def var_swap(names, rng):
    head, (a, b) = _function(names, rng), names(2)
    return _pair(head + f"    {a}, {b} = {b},", f" {a}\n", head + f"    {b}, {a} = {a},", f" {b}\n")


def class_init(names, rng):
    cls = "".join(part.capitalize() for part in names()[0].split("_"))
    a, b = names(2)
    body = "class {c}:\n    def __init__(self, {x}, {y}):\n        self.{x} = {x}\n        self."
    return _pair(body.format(c=cls, x=a, y=b), f"{b} = {b}\n", body.format(c=cls, x=b, y=a), f"{a} = {a}\n")


def if_ternary(names, rng):
    # The condition ends on a keyword, never inside an identifier that could go on.
    head, (v, a, c) = _function(names, rng), names(3)
    return _pair(head + f"    {v} = {a} if {c} is not None", " else None\n", head + f"    if {c} is not None", ":\n")


TASKS = {f.__name__: f for f in (single_double_quote, fstring_brace, self_attribute, else_elif, while_return_true,
                                 bracket_type, bracket_counting, bracket_brace, set_or_string, with_open, var_swap,
                                 class_init, if_ternary)}


def task_pairs(name: str, split: str, seed: int = 0):
    """Yield the pairs of (prompt, continuation, other continuation) triples of task `name` for
    `split`, as text, without end (the caller takes what it needs)."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r} (built-in tasks: {', '.join(TASKS)})")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (one of {', '.join(SPLITS)})")
    rng = random.Random(f"{name}/{split}/{seed}")
    names = _Names(rng, _pool(split))
    generate = TASKS[name]
    while True:
        yield generate(names, rng, split) if generate is with_open else generate(names, rng)


def builtin_task(name: str, tokenizer, split: str, n_pairs: int, seed: int = 0,
                 max_len: int | None = None) -> list[TaskExample]:
    """`n_pairs` balanced pairs of task `name` for `split` ("train", "validation" or "test"), as
    token ids, in pair order (examples 2i and 2i+1 are a pair).

    A pair is skipped when, under this tokenizer, a prompt is longer than `max_len` tokens (the
    model's context), a prompt does not end on a token boundary of prompt + continuation (see
    `answer_token`), the two continuations start with the same token, or an answer that is not blank
    starts with a blank token.
    """
    examples: list[TaskExample] = []
    pairs = task_pairs(name, split, seed)
    for _ in range(4 * n_pairs):
        if len(examples) >= 2 * n_pairs:
            break
        pair = [_example(tokenizer, *triple, max_len) for triple in next(pairs)]
        if all(pair):
            examples += pair
    return examples


def _example(tokenizer, prompt: str, continuation: str, other: str, max_len: int | None) -> TaskExample | None:
    """The example as token ids, or None when it fails one of `builtin_task`'s rules."""
    ids = tuple(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if max_len is not None and len(ids) > max_len:
        return None
    target, alternative = (answer_token(tokenizer, ids, prompt, text) for text in (continuation, other))
    if target is None or alternative is None or target == alternative:
        return None
    for text, token in ((continuation, target), (other, alternative)):
        if text.strip() and not tokenizer.decode([token]).strip():
            return None  # ` queue_x` read as ` ` + `queue`: the choice would be about a space
    return TaskExample(ids, target, alternative)
