"""Text corpora -> deterministic train/held-out splits -> packed token blocks.

Every source goes through `datasets`: the shipped snapshot and local files with the `json`/`text`
builders, Hub datasets by id (streamed when the recipe asks). Held-out documents are chosen by a
hash of a stable key (the file path for the shipped corpus, else the text), so the split never
depends on file order, shuffling or the number of processes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from extract.errors import DataError
from extract.paths import CORPUS_FILE
from extract.recipe import DataConfig, Recipe

EMBEDDED = "embedded"


@dataclass(frozen=True)
class CorpusSpec:
    """Where text comes from; mirrors the recipe's `data` section."""

    dataset: str = EMBEDDED
    config: str | None = None
    text_column: str = "text"
    key_column: str | None = None  # column hashed for the split; None hashes the text itself
    train_split: str = "train"
    heldout_split: str | None = None  # None: carve held-out documents out of train_split by hash
    heldout_fraction: float = 0.05
    streaming: bool = False


EMBEDDED_CORPUS = CorpusSpec(dataset=EMBEDDED, key_column="path", heldout_fraction=0.1)


def is_heldout(key: str, fraction: float) -> bool:
    """Deterministic document-level split: the same key lands on the same side on every machine."""
    bucket = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return bucket < fraction


def _load(spec: CorpusSpec, split: str):
    if spec.dataset == EMBEDDED:
        return datasets.load_dataset("json", data_files=str(CORPUS_FILE), split=split)
    path = Path(spec.dataset)
    if path.exists():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file()) if path.is_dir() else [str(path)]
        if not files:
            raise DataError(f"data.dataset: directory {path} holds no files")
        if all(Path(f).stat().st_size == 0 for f in files):
            raise DataError(f"data.dataset: {path} is empty")
        builder = "json" if all(".json" in Path(f).name for f in files) else "text"
        try:
            return datasets.load_dataset(builder, data_files=files, split=split, streaming=spec.streaming)
        # the user's own files: whatever datasets raises on them (a JSON syntax error, a column that
        # changes type) is theirs to fix, so it is named rather than shown as a traceback
        except Exception as error:  # noqa: BLE001
            raise DataError(f"data.dataset: cannot read {path} as {builder}: {type(error).__name__}: "
                            f"{str(error)[:500]}") from None
    return datasets.load_dataset(spec.dataset, spec.config, split=split, streaming=spec.streaming)


def load_text_splits(spec: CorpusSpec) -> dict:
    """Return {"train": ds, "heldout": ds}, each with the text in `spec.text_column`."""
    train = _load(spec, spec.train_split)
    columns = train.column_names
    if columns is not None and spec.text_column not in columns:
        raise DataError(f"data.text_column: column {spec.text_column!r} not in {spec.dataset} (has {columns})")
    if spec.heldout_split is not None:
        return {"train": train, "heldout": _load(spec, spec.heldout_split)}
    key = spec.key_column or spec.text_column

    def heldout(row):
        return is_heldout(str(row[key]), spec.heldout_fraction)

    return {"train": train.filter(lambda row: not heldout(row)), "heldout": train.filter(heldout)}


def pack_blocks(texts, tokenizer, block_size: int, text_column: str = "text"):
    """Tokenise, join documents with EOS and cut into non-overlapping blocks of `block_size` tokens.

    Works on map-style and streaming datasets alike (the standard `run_clm` grouping).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos_token; documents cannot be separated when packing")

    def tokenize_and_group(batch):
        ids: list[int] = []
        for text in batch[text_column]:
            ids.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
            ids.append(eos)
        usable = len(ids) - len(ids) % block_size
        return {"input_ids": [ids[i : i + block_size] for i in range(0, usable, block_size)]}

    columns = texts.column_names
    kwargs = {}
    if not isinstance(texts, datasets.IterableDataset):
        # datasets cannot hash a tokenizer reliably, so name the cache entry by what decides it.
        key = "|".join([texts._fingerprint, tokenizer.backend_tokenizer.to_str(), str(block_size), text_column])
        kwargs = {"desc": "tokenising and packing", "new_fingerprint": hashlib.sha1(key.encode()).hexdigest()}
    return texts.map(tokenize_and_group, batched=True, batch_size=256, remove_columns=columns, **kwargs)


def heldout_tensor(blocks, n_blocks: int) -> torch.Tensor:
    """`n_blocks` held-out blocks as one LongTensor, the same ones at every evaluation.

    Blocks are spread evenly over the whole held-out split (sorted by source), so the estimate
    covers many files rather than the first two or three; a stream gives its first blocks.
    """
    if isinstance(blocks, datasets.IterableDataset):
        rows = [row["input_ids"] for _, row in zip(range(n_blocks), blocks)]
    else:
        take = min(n_blocks, len(blocks))
        rows = blocks.select([i * len(blocks) // take for i in range(take)])["input_ids"] if take else []
    if len(rows) == 0:
        raise DataError("the held-out split produced no complete block; lower data.block_size or add text")
    return torch.tensor(rows, dtype=torch.long)


def corpus_spec(data: DataConfig) -> CorpusSpec:
    """The recipe's `data` section as a corpus; the embedded corpus is split by each file's path."""
    key = data.key_column or ("path" if data.dataset == EMBEDDED else None)
    return CorpusSpec(data.dataset, data.config, data.text_column, key, data.train_split, data.heldout_split,
                      data.heldout_fraction, data.streaming)


def prepare_heldout(recipe: Recipe, tokenizer, splits=None):
    """(held-out LongTensor of `data.heldout_blocks` blocks, held-out text dataset)."""
    splits = splits or load_text_splits(corpus_spec(recipe.data))
    blocks = pack_blocks(splits["heldout"], tokenizer, recipe.data.block_size, recipe.data.text_column)
    return heldout_tensor(blocks, recipe.data.heldout_blocks), splits["heldout"]


def prepare_data(recipe: Recipe, tokenizer):
    """(packed training blocks, held-out LongTensor, held-out texts)."""
    splits = load_text_splits(corpus_spec(recipe.data))
    train = pack_blocks(splits["train"], tokenizer, recipe.data.block_size, recipe.data.text_column)
    heldout, heldout_texts = prepare_heldout(recipe, tokenizer, splits)
    return train, heldout, heldout_texts
