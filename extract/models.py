"""Loading models (Hub id, directory, PEFT adapter, fresh init) and the per-family architecture map.

The architecture map is the only place that knows parameter names. Adding a family (Llama, Qwen,
GPT-NeoX) means adding one `ArchFamily` entry: which tensors are sparsified, and along which axis
a tensor's "units" (neurons, q/k/v channels, value channels) lie for the per-unit minimum.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from extract.paths import DENSE_MODEL_DIR, TOKENIZER_DIR
from extract.recipe import ModelConfig


class ModelLoadError(RuntimeError):
    """A model or tokenizer named by a recipe could not be loaded."""


@dataclass(frozen=True)
class SparseTensor:
    """A sparsified parameter. `unit_axis` indexes the units that keep `min_per_unit` nonzeros
    each (the minimum is taken over the other axis); None means no per-unit minimum."""

    name: str
    param: torch.nn.Parameter
    unit_axis: int | None


@dataclass(frozen=True)
class ArchFamily:
    model_types: tuple[str, ...]
    # (regex on the parameter name, unit axis). GPT-2's Conv1D stores weights as (in, out).
    matrices: tuple[tuple[str, int], ...]
    embeddings: tuple[str, ...]


GPT2_FAMILY = ArchFamily(
    model_types=("gpt2",),
    matrices=(
        (r"transformer\.h\.\d+\.attn\.c_attn\.weight", 1),  # per q/k/v channel, over its inputs
        (r"transformer\.h\.\d+\.attn\.c_proj\.weight", 0),  # per value channel, over its outputs
        (r"transformer\.h\.\d+\.mlp\.c_fc\.weight", 1),  # per neuron, over its inputs
        (r"transformer\.h\.\d+\.mlp\.c_proj\.weight", 0),  # per neuron, over its outputs
    ),
    embeddings=(r"transformer\.wte\.weight", r"transformer\.wpe\.weight"),
)

FAMILIES = (GPT2_FAMILY,)


def family_of(model) -> ArchFamily:
    model_type = getattr(model.config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES for t in f.model_types)
    raise ModelLoadError(f"model_type {model_type!r} has no architecture mapping yet (supported: {known})")


def sparse_tensors(model, embeddings: bool = True) -> list[SparseTensor]:
    """The tensors the projection acts on. A tied unembedding shares the token embedding's
    Parameter, so it follows it without being listed twice."""
    family = family_of(model)
    rules = [(re.compile(p), axis) for p, axis in family.matrices]
    if embeddings:
        rules += [(re.compile(p), None) for p in family.embeddings]
    found = []
    for name, param in model.named_parameters():
        for pattern, axis in rules:
            if pattern.fullmatch(name):
                found.append(SparseTensor(name, param, axis))
                break
    if not found:
        raise ModelLoadError(f"no sparsifiable tensors matched in {type(model).__name__}")
    return found


def _resolve(name_or_path: str) -> str:
    return str(DENSE_MODEL_DIR) if name_or_path == "embedded" else name_or_path


def _why_missing(source: str, what: str) -> str:
    """A human reason for a failed load: a missing path reads very differently from a Hub error."""
    if Path(source).is_dir():
        return f"{source!r} holds no loadable {what}"
    if source.startswith((".", "/", "~")):
        return f"{source!r} does not exist"
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    return (f"{source!r} is not a local directory and could not be fetched from the Hub"
            + (" (HF_HUB_OFFLINE is set: only models already in the cache load)" if offline else ""))


def load_tokenizer(cfg: ModelConfig):
    key = "model.tokenizer" if cfg.tokenizer else "model.name_or_path"
    source = cfg.tokenizer or (str(TOKENIZER_DIR) if cfg.init_config is not None else _resolve(cfg.name_or_path))
    adapter = Path(source) / "adapter_config.json"
    if adapter.is_file() and not (Path(source) / "tokenizer_config.json").is_file():
        source = json.loads(adapter.read_text())["base_model_name_or_path"]
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=cfg.revision,
                                                  trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as error:
        reason = _why_missing(source, "tokenizer")
        raise ModelLoadError(f"{key}: cannot load a tokenizer: {reason}\n  ({error})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _from_pretrained(source: str, cfg: ModelConfig):
    try:
        return AutoModelForCausalLM.from_pretrained(
            source,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=True,  # never unpickle weights
            dtype=torch.float32,
        )
    except (OSError, ValueError) as error:
        reason = _why_missing(source, "safetensors model")
        raise ModelLoadError(f"model.name_or_path: cannot load the model: {reason}\n  ({error})") from None


def load_model(cfg: ModelConfig, vocab_size: int | None = None):
    """Load the dense model a recipe names, in float32 and eval mode.

    A directory holding `adapter_config.json` is a PEFT adapter: its base model is loaded and the
    adapter merged into it, so everything downstream sees one plain dense model.
    """
    if cfg.init_config is not None:
        config = GPT2Config(**{"vocab_size": vocab_size, **cfg.init_config})
        return GPT2LMHeadModel(config)
    source = _resolve(cfg.name_or_path)
    if (Path(source) / "adapter_config.json").is_file():
        from peft import PeftConfig, PeftModel

        base_name = PeftConfig.from_pretrained(source).base_model_name_or_path
        base = _from_pretrained(base_name, cfg)
        model = PeftModel.from_pretrained(base, source).merge_and_unload()
    else:
        model = _from_pretrained(source, cfg)
    family_of(model)  # fail now, not after an hour of data preparation
    return model.eval()


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
