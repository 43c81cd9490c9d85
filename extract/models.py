"""Loading models: Hub id, directory, PEFT adapter, or a fresh init; float32, weights from safetensors only.

What the project knows about each layout lives in extract/arch; here a model's family is checked
from its config, before any weights load, so an unsupported model fails at once.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from extract.arch import ArchitectureError, family_of
from extract.errors import UserError
from extract.hub import hub_file, is_hub_id
from extract.paths import DENSE_MODEL_DIR, TOKENIZER_DIR
from extract.recipe import ModelConfig

DEFAULT_INIT_MODEL_TYPE = "gpt2"  # what `model.init_config` builds unless it names a model_type


class ModelLoadError(UserError, RuntimeError):
    """A model or tokenizer named by a recipe could not be loaded."""


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
    """The tokenizer of the recipe's model (an adapter without one of its own: its base model's)."""
    key = "model.tokenizer" if cfg.tokenizer else "model.name_or_path"
    source = cfg.tokenizer or (str(TOKENIZER_DIR) if cfg.init_config is not None else _resolve(cfg.name_or_path))
    sources = [(source, cfg.revision)]
    if not cfg.tokenizer and cfg.init_config is None and (base := adapter_base(cfg)) is not None:
        sources.append((base, None))
    for i, (name, revision) in enumerate(sources):
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=cfg.trust_remote_code)
            if not tokenizer("def f(x): return x", add_special_tokens=False)["input_ids"]:
                # transformers 5 builds an empty tokenizer from a config alone rather than failing
                raise OSError(f"{name} has no tokenizer files (the tokenizer built from its config has "
                              f"{len(tokenizer)} token(s))")
            break
        except (OSError, ValueError) as error:
            if i == len(sources) - 1:
                reason = _why_missing(name, "tokenizer")
                raise ModelLoadError(f"{key}: cannot load a tokenizer: {reason}\n  ({error})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


ADAPTER_CONFIG = "adapter_config.json"  # what makes a folder or Hub repo a PEFT adapter


def adapter_base(cfg: ModelConfig) -> str | None:
    """The base model a PEFT adapter (a local folder or a Hub repo) names, or None when the model is
    no adapter."""
    return None if cfg.init_config is not None else _adapter_base(_resolve(cfg.name_or_path), cfg.revision)


@functools.lru_cache(maxsize=None)  # config, tokenizer and weights each ask; a Hub repo is asked once
def _adapter_base(source: str, revision: str | None) -> str | None:
    path = Path(source) / ADAPTER_CONFIG
    if not path.is_file():
        path = hub_file(source, ADAPTER_CONFIG, revision) if is_hub_id(source) else None
    return json.loads(path.read_text())["base_model_name_or_path"] if path is not None else None


def model_config(cfg: ModelConfig, vocab_size: int | None = None):
    """The transformers config of the model a recipe names, without loading any weights."""
    if cfg.init_config is not None:
        shape = {"vocab_size": vocab_size, **cfg.init_config}
        model_type = shape.pop("model_type", DEFAULT_INIT_MODEL_TYPE)
        try:
            return AutoConfig.for_model(model_type, **shape)
        except ValueError as error:
            raise ModelLoadError(f"model.init_config.model_type: {error}") from None
    base = adapter_base(cfg)
    source, revision = (base, None) if base is not None else (_resolve(cfg.name_or_path), cfg.revision)
    try:
        return AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as error:
        reason = _why_missing(source, "model config")
        raise ModelLoadError(f"model.name_or_path: cannot load the model: {reason}\n  ({error})") from None


def check_family(cfg: ModelConfig, vocab_size: int | None = None):
    """The model's config, after checking that a family maps its layout: an unsupported model
    fails here, before any weights or data load."""
    config = model_config(cfg, vocab_size)
    try:
        family_of(config)
    except ArchitectureError as error:
        where = "model.init_config" if cfg.init_config is not None else f"model.name_or_path: {cfg.name_or_path}"
        raise ModelLoadError(f"{where}: {error}") from None
    return config


def _from_pretrained(source: str, cfg: ModelConfig, revision: str | None):
    try:
        return AutoModelForCausalLM.from_pretrained(
            source,
            revision=revision,
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=True,  # never unpickle weights
            dtype=torch.float32,
        )
    except (OSError, ValueError) as error:
        reason = _why_missing(source, "safetensors model")
        raise ModelLoadError(f"model.name_or_path: cannot load the model: {reason}\n  ({error})") from None
    except SafetensorError as error:  # a weights file cut short or corrupted on disk
        raise ModelLoadError(f"{source}: a safetensors file is damaged ({error}); if this is a run's model folder, "
                             "delete it and rerun the command: training resumes from the newest checkpoint") from None


def load_model(cfg: ModelConfig, vocab_size: int | None = None):
    """Load the dense model a recipe names, in float32 and eval mode.

    A folder or Hub repo holding `adapter_config.json` is a PEFT adapter: its base model is loaded and
    the adapter merged into it, so everything downstream sees one plain dense model.
    """
    config = check_family(cfg, vocab_size)
    if cfg.init_config is not None:
        return AutoModelForCausalLM.from_config(config)
    source = _resolve(cfg.name_or_path)
    base_name = adapter_base(cfg)
    if base_name is not None:
        from peft import PeftModel

        base = _from_pretrained(base_name, cfg, None)
        model = PeftModel.from_pretrained(base, source, revision=cfg.revision).merge_and_unload()
        model.requires_grad_(True)  # PEFT froze the base weights; merged, they are the model to sparsify
    else:
        model = _from_pretrained(source, cfg, cfg.revision)
    return model.eval()


def random_like(model):
    """A freshly initialised model of `model`'s config (drawn from torch's generator), in train mode."""
    return AutoModelForCausalLM.from_config(model.config, dtype=torch.float32).train()


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def weights_fingerprint(model) -> str:
    """A short hash of every weight: a circuit file names the weights it was found on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
