"""Recipes: a typed schema, YAML loading, dotted key=value overrides, and validation errors.

A recipe is plain YAML whose shape is the dataclasses below. Loading checks every key and type
before any work starts, and every error names the file and the dotted key, e.g.
`recipes/x.yaml: sparsity.target_density: must be in (0, 1], got 1.5`.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from extract.errors import UserError
from extract.paths import RECIPES_DIR

HUB_REPO_ID = r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}"  # what the Hub accepts as namespace/name


class RecipeError(UserError, ValueError):
    """A recipe that cannot run, with the file and the key that is wrong."""


@dataclass
class ModelConfig:
    # "embedded" is the shipped dense default; otherwise a Hub id, a local directory, or a PEFT
    # (LoRA) adapter directory whose base model is loaded and merged.
    name_or_path: str = "embedded"
    revision: str | None = None
    tokenizer: str | None = None  # default: the model's own
    trust_remote_code: bool = False
    # Set to train a fresh GPT-2 of this shape instead of loading weights (dense pretraining).
    init_config: dict[str, Any] | None = None


@dataclass
class DataConfig:
    dataset: str = "embedded"  # "embedded", a local file/directory, or a Hub dataset id
    config: str | None = None
    text_column: str = "text"
    key_column: str | None = None
    train_split: str = "train"
    heldout_split: str | None = None
    heldout_fraction: float = 0.05
    streaming: bool = False
    block_size: int = 256
    heldout_blocks: int = 64


@dataclass
class SparsityConfig:
    enabled: bool = True
    target_density: float = 1 / 32
    min_per_unit: int = 4  # the paper's j: nonzeros kept per neuron / q,k,v channel / value channel
    anneal_fraction: float = 0.5
    anneal_shape: Literal["linear", "log", "cubic"] = "cubic"  # measured best on the shipped model (docs/results.md)
    sharkfin: bool = True  # lr *= (target_density / current_density) ** sharkfin_power
    # The paper's 0.5 (a square root). Larger keeps the lr lower while the model is still dense,
    # where a fine-tuned checkpoint has nothing to relearn.
    sharkfin_power: float = 0.5
    embeddings: bool = True  # sparsify token and position embeddings too
    # Density of the token and position embeddings; the matrices then share the rest of the budget,
    # so the density over all sparsified tensors is still target_density. None: every tensor alike.
    embedding_density: float | None = None


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 0.1
    weight_decay: float = 0.1
    warmup_fraction: float = 0.01
    grad_rescale_rms: bool = True  # rescale gradients to global RMS 1 every step
    clip_grad_norm: float | None = None


@dataclass
class LossConfig:
    ce_weight: float = 1.0
    kl_weight: float = 1.0  # distillation to the frozen dense model


@dataclass
class TrainConfig:
    steps: int = 600
    batch_size: int = 16  # per process, per micro-step
    gradient_accumulation_steps: int = 1
    # auto: bf16 on GPUs that have it and on CPUs with native bf16, else float32 (fp16 on old GPUs)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    compile: bool = False  # torch.compile through Accelerate (inductor); ~1 min to compile
    # Keep only each layer's input for the backward pass and recompute the rest: activations shrink to
    # almost nothing for one more forward pass per step. For large models or batches (bench/README.md).
    gradient_checkpointing: bool = False
    eval_every: int = 100
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0


@dataclass
class EvalConfig:
    quote_examples: int = 1000  # balanced closing-quote examples from held-out code; 0 turns it off


@dataclass
class TaskFileRef:
    file: str  # a JSONL task file: {"prompt", "target", "alternative"} per line


@dataclass
class PruneConfig:
    """Circuit pruning (METHOD.md section 3). The defaults are meant to work on every task without
    a search: one setting, and the same short list of fallback penalties, for every task and model."""

    target_loss: float = 0.15  # a circuit is sufficient when its test-split task loss is at most this
    steps: int = 100  # measured as good as 200 x 64 on the embedded model's quote task, at a quarter of the cost
    batch_size: int = 32  # examples per mask step
    lr: float = 3e-2
    k_coef: float = 1e-3  # penalty per kept node
    # Tried in order when the mask trained at k_coef misses the target on a task the model solves: a
    # high penalty can switch off a node the task needs early, before the task loss feels it.
    k_coef_fallbacks: list[float] = field(default_factory=lambda: [3e-4, 1e-4])
    # The penalty rises linearly from 0 over this fraction of the steps, so nodes leave in order of
    # importance instead of all at once on a task the model solves almost perfectly (docs/circuits.md)
    k_coef_ramp: float = 0.5
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    # Three disjoint splits per task: the mask learns on train, bisection picks the size on validation,
    # and every reported figure (full model, circuit, checks, controls) is read on test.
    train_pairs: int = 1000  # balanced pairs per built-in task
    validation_pairs: int = 100
    test_pairs: int = 100
    # Bisection keeps the smallest circuit whose validation loss plus this many standard errors of the
    # predicted test loss (validation and test noise together) is at most the target, so that the
    # circuit stays sufficient on test (docs/circuits.md: measured).
    validation_margin_se: float = 2.0
    random_draws: int = 10  # random circuits with the same nodes per site, per circuit: none should be sufficient
    nonsense_control: bool = True  # prune each task's twin with labels that ignore the deciding detail
    attribution_baseline: bool = True  # attribution patching's top-k nodes, the baseline learned masks must beat
    local_tokens: int = 4  # a task solved from the prompt's last this-many tokens is short-range
    mean_blocks: int = 64  # held-out pretraining sequences for the mean-ablation values
    # "dense" (model.name_or_path), "sparse" (OUTPUT_DIR/model), or any saved model's path or Hub id
    models: list[str] = field(default_factory=lambda: ["dense", "sparse"])
    random_model_control: bool = False  # also prune a randomly initialised model of the same shape
    seed: int = 0


@dataclass
class HubConfig:
    """Publishing a finished run to the Hugging Face Hub (docs/publishing.md). The token comes from
    huggingface_hub's usual sources (HF_TOKEN, `hf auth login`) and is never printed or saved."""

    repo_id: str | None = None  # "name/repo": push when the run finishes; None: never push
    private: bool = False  # only when the push creates the repository
    revision: str | None = None  # a branch, made from main when missing; None: main
    license: str | None = None  # the model card's license (the base model's); None: "other"


@dataclass
class Recipe:
    name: str = "unnamed"
    output_dir: str = "outputs/unnamed"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tasks: list[str | TaskFileRef] = field(default_factory=list)  # built-in task names and task files
    prune: PruneConfig = field(default_factory=PruneConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    env: dict[str, str] = field(default_factory=dict)  # environment set before anything loads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- typed construction from YAML


def _describe(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, where: str):
    """Check `value` against the annotation `tp`, converting only where YAML cannot say it (tuples)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except RecipeError as error:
                errors.append(str(error))
        mappings = [o for o in options if dataclasses.is_dataclass(o)]
        if isinstance(value, dict) and len(mappings) == 1:  # a mapping meant that option: say what is wrong in it
            _coerce(value, mappings[0], where)
        raise RecipeError(errors[0] if len(errors) == 1 else f"{where}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value is False and "no" in typing.get_args(tp):  # YAML reads an unquoted `no` as false
            return "no"
        if value not in typing.get_args(tp):
            raise RecipeError(f"{where}: must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping of fields, got {value!r}")
        return _build(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise RecipeError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp)
        return [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(tp)
        return {_coerce(k, key_type, where): _coerce(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 3e-3 (no dot) as a string: YAML 1.1's float syntax
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise RecipeError(f"{where}: expected {_describe(tp)}, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp} at {where}")


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            raise RecipeError(f"{where}: unknown key (valid keys here: {', '.join(sorted(known))})")
        kwargs[key] = _coerce(value, hints[key], where)
    return cls(**kwargs)


# ---------------------------------------------------------------- value checks


def _check(condition: bool, where: str, message: str, value) -> None:
    if not condition:
        raise RecipeError(f"{where}: {message}, got {value!r}")


def validate(recipe: Recipe) -> None:
    """Reject values that type-check but cannot run, before any work starts."""
    s, o, t, d, lo = recipe.sparsity, recipe.optim, recipe.train, recipe.data, recipe.loss
    _check(0 < s.target_density <= 1, "sparsity.target_density", "must be in (0, 1]", s.target_density)
    _check(s.embedding_density is None or 0 < s.embedding_density <= 1, "sparsity.embedding_density",
           "must be in (0, 1] or null", s.embedding_density)
    _check(s.embedding_density is None or s.embeddings, "sparsity.embedding_density",
           "needs sparsity.embeddings: true", s.embedding_density)
    _check(s.min_per_unit >= 0, "sparsity.min_per_unit", "must be >= 0", s.min_per_unit)
    _check(0 <= s.anneal_fraction <= 1, "sparsity.anneal_fraction", "must be in [0, 1]", s.anneal_fraction)
    _check(s.sharkfin_power >= 0, "sparsity.sharkfin_power", "must be >= 0", s.sharkfin_power)
    _check(o.lr > 0 and math.isfinite(o.lr), "optim.lr", "must be a positive number", o.lr)
    _check(all(0 <= b < 1 for b in o.betas), "optim.betas", "each must be in [0, 1)", o.betas)
    _check(o.eps > 0, "optim.eps", "must be > 0", o.eps)
    _check(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0", o.weight_decay)
    _check(0 <= o.warmup_fraction < 1, "optim.warmup_fraction", "must be in [0, 1)", o.warmup_fraction)
    _check(o.clip_grad_norm is None or o.clip_grad_norm > 0, "optim.clip_grad_norm", "must be > 0", o.clip_grad_norm)
    _check(lo.ce_weight >= 0, "loss.ce_weight", "must be >= 0", lo.ce_weight)
    _check(lo.kl_weight >= 0, "loss.kl_weight", "must be >= 0", lo.kl_weight)
    _check(lo.ce_weight + lo.kl_weight > 0, "loss", "at least one weight must be > 0", (lo.ce_weight, lo.kl_weight))
    for key in ("steps", "batch_size", "gradient_accumulation_steps", "eval_every", "checkpoint_every", "log_every"):
        _check(getattr(t, key) > 0, f"train.{key}", "must be a positive integer", getattr(t, key))
    _check(d.block_size > 1, "data.block_size", "must be > 1", d.block_size)
    _check(d.heldout_blocks > 0, "data.heldout_blocks", "must be > 0", d.heldout_blocks)
    _check(0 < d.heldout_fraction < 1, "data.heldout_fraction", "must be in (0, 1)", d.heldout_fraction)
    _check(recipe.eval.quote_examples >= 0, "eval.quote_examples", "must be >= 0", recipe.eval.quote_examples)
    p = recipe.prune
    _check(0 < p.target_loss < math.log(2), "prune.target_loss", "must be in (0, ln 2)", p.target_loss)
    for key in ("steps", "batch_size", "train_pairs", "validation_pairs", "test_pairs", "mean_blocks",
                "local_tokens"):
        _check(getattr(p, key) > 0, f"prune.{key}", "must be a positive integer", getattr(p, key))
    _check(p.lr > 0 and math.isfinite(p.lr), "prune.lr", "must be a positive number", p.lr)
    _check(p.k_coef >= 0, "prune.k_coef", "must be >= 0", p.k_coef)
    _check(0 <= p.k_coef_ramp <= 1, "prune.k_coef_ramp", "must be in [0, 1]", p.k_coef_ramp)
    _check(p.weight_decay >= 0, "prune.weight_decay", "must be >= 0", p.weight_decay)
    _check(p.random_draws >= 0, "prune.random_draws", "must be >= 0", p.random_draws)
    _check(p.validation_margin_se >= 0 and math.isfinite(p.validation_margin_se), "prune.validation_margin_se",
           "must be a number >= 0", p.validation_margin_se)
    _check(all(k >= 0 for k in p.k_coef_fallbacks), "prune.k_coef_fallbacks", "every value must be >= 0",
           p.k_coef_fallbacks)
    _check_tasks(recipe.tasks)
    _check(recipe.hub.repo_id is None or re.fullmatch(HUB_REPO_ID, recipe.hub.repo_id) is not None, "hub.repo_id",
           "must be a Hub repository id, 'namespace/name'", recipe.hub.repo_id)
    if recipe.model.init_config is not None and recipe.loss.kl_weight > 0:
        raise RecipeError("loss.kl_weight: a model trained from model.init_config has no dense teacher; set it to 0")


def _check_tasks(tasks: list) -> None:
    from extract.tasks.builtin import TASKS  # light: no torch

    seen = set()
    for i, task in enumerate(tasks):
        where = f"tasks[{i}]"
        if isinstance(task, str):
            _check(task in TASKS, where, f"unknown built-in task (built-in: {', '.join(TASKS)})", task)
        name = task if isinstance(task, str) else task.file
        _check(name not in seen, where, "listed twice", name)
        seen.add(name)


# ---------------------------------------------------------------- files and overrides


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def resolve_recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise RecipeError(f"{name_or_path}: recipe file not found")
        return path
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise RecipeError(f"{name_or_path}: no such recipe (available: {', '.join(available_recipes())})")
    return candidate


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.steps=200` -> (["train", "steps"], 200); the value is parsed as YAML."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected key=value, e.g. train.steps=200")
    key, raw = text.split("=", 1)
    if not key:
        raise RecipeError(f"override {text!r}: empty key")
    return key.split("."), yaml.safe_load(raw) if raw else ""


def apply_override(data: dict, keys: list[str], value) -> None:
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {'.'.join(keys)}: {key} is not a section")
    node[keys[-1]] = value


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> tuple[Recipe, Path]:
    """Read, override, type-check and validate a recipe; errors are prefixed with the file."""
    path = resolve_recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    try:
        for text in overrides:
            apply_override(data, *parse_override(text))
        recipe = _build(Recipe, data)
        validate(recipe)
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None
    return recipe, path
