"""Closing-quote examples mined from real code: predict `'` or `"` to close a string literal.

Literals are found with Python's own `tokenize`, so comments and docstrings never pose as strings.
The task is the paper's: close a string with the quote that opened it. So a literal is kept only if
- its text holds no quote character (with `'` inside `"..."` the question becomes one of nesting),
- its opening quote lies inside the prompt (otherwise the answer cannot be known), and
- the tokenizer emits its closing quote as a token of its own, so the two-way comparison asks about
  exactly the token the model saw in training.
The set is balanced (as many `'` as `"` answers) and every prompt is exactly `prompt_tokens` long.
"""
from __future__ import annotations

import io
import random
import tokenize

from extract.tasks.examples import TaskExample, first_token_id

QUOTES = ("'", '"')


def _closing_quote_offsets(source: str):
    """(opening offset, closing offset, quote) of each one-line string literal whose text holds no
    quote character and ends in an alphanumeric (so the quote does not merge with the text before it)."""
    line_starts = [0]
    for line in source.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            text = tok.string
            if tok.type != tokenize.STRING or tok.start[0] != tok.end[0] or len(text) < 3:
                continue
            quote = text[-1]
            if quote not in QUOTES or text.endswith(quote * 3) or not text[-2].isalnum():
                continue
            opening = text.index(quote)  # after any prefix such as f, r or b
            if "'" in text[opening + 1 : -1] or '"' in text[opening + 1 : -1]:
                continue
            line_start = line_starts[tok.start[0] - 1]
            yield line_start + tok.start[1] + opening, line_start + tok.end[1] - 1, quote
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return


def closing_quote_examples(texts, tokenizer, n_examples: int, prompt_tokens: int = 40, seed: int = 0,
                           per_file: int = 25):
    """A balanced list of `n_examples` TaskExamples (fewer if the texts hold too few)."""
    quote_ids = {q: first_token_id(tokenizer, q) for q in QUOTES}
    found = {q: [] for q in QUOTES}
    rng = random.Random(seed)
    for source in texts:
        in_file = {q: [] for q in QUOTES}
        for opening, offset, quote in _closing_quote_offsets(source):
            window_start = max(0, offset - 8 * prompt_tokens)  # enough characters for the prompt
            ids = tokenizer(source[window_start : offset + 8], add_special_tokens=False)["input_ids"]
            prefix = tokenizer(source[window_start:offset], add_special_tokens=False)["input_ids"]
            # keep only literals whose closing quote is its own token in the natural tokenization
            if len(prefix) < prompt_tokens or ids[: len(prefix) + 1] != prefix + [quote_ids[quote]]:
                continue
            literal = tokenizer(source[opening:offset], add_special_tokens=False)["input_ids"]
            if len(literal) >= prompt_tokens:  # the opening quote would fall outside the prompt
                continue
            other = QUOTES[1 - QUOTES.index(quote)]
            in_file[quote].append(TaskExample(tuple(prefix[-prompt_tokens:]), quote_ids[quote], quote_ids[other]))
        # a cap per file, so one table-like file (a codec map, say) cannot dominate the set
        for quote, examples in in_file.items():
            found[quote] += rng.sample(examples, min(per_file, len(examples)))
    per_side = min(n_examples // 2, *(len(v) for v in found.values()))
    chosen = []
    for quote in QUOTES:
        chosen += rng.sample(found[quote], per_side)
    rng.shuffle(chosen)
    return chosen
