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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from extract.errors import UserError
from extract.paths import RECIPES_DIR

HUB_REPO_ID = r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}"  # what the Hub accepts as namespace/name


class RecipeError(UserError, ValueError):
    """A recipe that cannot run, with the file and the key that is wrong."""


# ---------------------------------------------------------------- value ranges, beside their fields


def _rule(test: Callable[[Any], bool], message: str) -> dict:
    """Field metadata: the check `validate` applies to the field's value, and what it says when it fails."""
    return {"check": (test, message)}


def interval(low: float, high: float, bounds: str = "[]", null: bool = False, high_text: str | None = None) -> dict:
    """A number between `low` and `high`, each end closed or open as `bounds` says: "[]", "(]", "[)", "()"."""
    def inside(value) -> bool:
        above = value > low if bounds[0] == "(" else value >= low
        below = value < high if bounds[1] == ")" else value <= high
        return above and below

    text = f"must be in {bounds[0]}{low:g}, {high_text or format(high, 'g')}{bounds[1]}" + (" or null" if null else "")
    return _rule(lambda value: (null and value is None) or inside(value), text)


def at_least(low: float, message: str | None = None) -> dict:
    return _rule(lambda value: math.isfinite(value) and value >= low, message or f"must be >= {low:g}")


def above(low: float, null: bool = False) -> dict:
    return _rule(lambda value: (null and value is None) or value > low, f"must be > {low:g}")


POSITIVE_INT = _rule(lambda value: value > 0, "must be a positive integer")
POSITIVE_NUMBER = _rule(lambda value: value > 0 and math.isfinite(value), "must be a positive number")


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
    # A control (bench/bench_init.py): sparsify a freshly initialised model of the checkpoint's shape,
    # still distilled from the checkpoint, to measure what starting from its weights is worth.
    random_start: bool = False
    # Sparsify a copy this many times wider (residual stream, attention and MLP) that computes the dense
    # model's function at step 0 (extract/widen.py; GPT-2 only). Lower the densities to keep the nonzeros.
    width_multiplier: int = field(default=1, metadata=POSITIVE_INT)


@dataclass
class DataConfig:
    dataset: str = "embedded"  # "embedded", a local file/directory, or a Hub dataset id
    config: str | None = None
    text_column: str = "text"
    key_column: str | None = None
    train_split: str = "train"
    heldout_split: str | None = None
    heldout_fraction: float = field(default=0.05, metadata=interval(0, 1, "()"))
    streaming: bool = False
    block_size: int = field(default=256, metadata=above(1))
    heldout_blocks: int = field(default=64, metadata=above(0))


@dataclass
class SparsityConfig:
    enabled: bool = True
    target_density: float = field(default=1 / 32, metadata=interval(0, 1, "(]"))
    # the paper's j: nonzeros kept per neuron / q,k,v channel / value channel
    min_per_unit: int = field(default=4, metadata=at_least(0))
    anneal_fraction: float = field(default=0.5, metadata=interval(0, 1))
    anneal_shape: Literal["linear", "log", "cubic"] = "cubic"  # measured best on the shipped model (docs/results.md)
    sharkfin: bool = True  # lr *= (target_density / current_density) ** sharkfin_power
    # The paper's 0.5 (a square root). Larger keeps the lr lower while the model is still dense,
    # where a fine-tuned checkpoint has nothing to relearn.
    sharkfin_power: float = field(default=0.5, metadata=at_least(0))
    embeddings: bool = True  # sparsify token and position embeddings too
    # Density of the token and position embeddings; the matrices then share the rest of the budget,
    # so the density over all sparsified tensors is still target_density. None: every tensor alike.
    embedding_density: float | None = field(default=None, metadata=interval(0, 1, "(]", null=True))
    # Every this many steps while annealing, and at the step that reaches the target, re-solve each
    # matrix's kept weights by least squares to the dense model's outputs on `refit_blocks` training
    # blocks (extract/refit.py; the pattern stays the top-k). 0: never.
    refit_every: int = field(default=0, metadata=at_least(0))
    refit_blocks: int = field(default=16, metadata=above(0))


@dataclass
class OptimConfig:
    lr: float = field(default=1e-3, metadata=POSITIVE_NUMBER)
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata=_rule(lambda betas: all(0 <= b < 1 for b in betas),
                                                                         "each must be in [0, 1)"))
    eps: float = field(default=0.1, metadata=above(0))
    weight_decay: float = field(default=0.1, metadata=at_least(0))
    warmup_fraction: float = field(default=0.01, metadata=interval(0, 1, "[)"))
    grad_rescale_rms: bool = True  # rescale gradients to global RMS 1 every step
    clip_grad_norm: float | None = field(default=None, metadata=above(0, null=True))


@dataclass
class LossConfig:
    ce_weight: float = field(default=1.0, metadata=at_least(0))
    kl_weight: float = field(default=1.0, metadata=at_least(0))  # distillation to the frozen dense model
    # SquareHead: match each block's output to the dense model's too (normalised squared error), with
    # this weight at the first step, decaying linearly to 0 at the end of the anneal.
    hidden_weight: float = field(default=0.0, metadata=at_least(0))


@dataclass
class BridgesConfig:
    """Bridges to the frozen dense model (METHOD.md section 7, extract/bridges.py): at the residual stream
    before every attention and every MLP, an encoder dense -> sparse (linear, then AbsTopK) and a
    decoder sparse -> dense (linear), trained with the sparse model so that its circuits can be carried
    back into the dense model (the prune stage's bridged interventions)."""

    enabled: bool = False
    # Their own learning rate (the run's warm-up and decay, no sharkfin): the sparsifying lr makes them noise
    lr: float = field(default=1e-3, metadata=POSITIVE_NUMBER)
    nmse_weight: float = field(default=1.0, metadata=at_least(0))  # encoder and decoder reconstruction, summed
    hybrid_kl_weight: float = field(default=1.0, metadata=at_least(0))  # each of the two hybrid passes' KL
    # "sampled": one site per direction per step, drawn by (seed, step), an unbiased estimate of the mean
    # over sites at two extra passes; "all": every site every step (2 x sites extra passes)
    hybrid_sites: Literal["sampled", "all"] = "sampled"
    # AbsTopK: the encoder keeps the k largest-magnitude channels per token; null keeps them all
    topk: int | None = field(default=None, metadata=above(0, null=True))
    # "identity": encoder and decoder start as the identity (the sparse model starts as the dense one);
    # "random": nn.Linear's own initialisation
    init: Literal["identity", "random"] = "identity"


@dataclass
class TrainConfig:
    steps: int = field(default=600, metadata=POSITIVE_INT)
    batch_size: int = field(default=16, metadata=POSITIVE_INT)  # per process, per micro-step
    gradient_accumulation_steps: int = field(default=1, metadata=POSITIVE_INT)
    # auto: bf16 on GPUs that have it and on CPUs with native bf16, else float32 (fp16 on old GPUs)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    compile: bool = False  # torch.compile through Accelerate (inductor); ~1 min to compile
    # Keep only each layer's input for the backward pass and recompute the rest: activations shrink to
    # almost nothing for one more forward pass per step. For large models or batches (bench/README.md).
    gradient_checkpointing: bool = False
    eval_every: int = field(default=100, metadata=POSITIVE_INT)
    checkpoint_every: int = field(default=100, metadata=POSITIVE_INT)
    log_every: int = field(default=10, metadata=POSITIVE_INT)
    seed: int = 0


@dataclass
class EvalConfig:
    # balanced closing-quote examples from held-out code; 0 turns it off
    quote_examples: int = field(default=1000, metadata=at_least(0))


@dataclass
class TaskFileRef:
    file: str  # a JSONL task file: {"prompt", "target", "alternative"} per line


@dataclass
class PruneConfig:
    """Circuit pruning (METHOD.md section 3). The defaults are meant to work on every task without
    a search: one setting, and the same short list of fallback penalties, for every task and model."""

    # a circuit is sufficient when its test-split task loss is at most this
    target_loss: float = field(default=0.15, metadata=interval(0, math.log(2), "()", high_text="ln 2"))
    # measured as good as 200 x 64 on the embedded model's quote task, at a quarter of the cost
    steps: int = field(default=100, metadata=POSITIVE_INT)
    batch_size: int = field(default=32, metadata=POSITIVE_INT)  # examples per mask step
    lr: float = field(default=3e-2, metadata=POSITIVE_NUMBER)
    # "fixed": k_coef per kept node, then each fallback (measured best on the embedded model); "budget":
    # the penalty adapts every step to hold the mask's task loss at loss_budget x target_loss, whatever
    # the model's size (the Hub recipes: a fixed k_coef switches a 135M model's mask off, issue 30)
    penalty: Literal["fixed", "budget"] = "fixed"
    loss_budget: float = field(default=0.5, metadata=interval(0, 1, "(]"))  # a fraction of target_loss
    penalty_rate: float = field(default=0.1, metadata=POSITIVE_NUMBER)  # log-weight change per step, at most
    k_coef: float = field(default=1e-3, metadata=at_least(0))  # "fixed": penalty per kept node
    # where every node's tau starts (the gate opens at tau > 0; taus live in [-1, 1]). From 0.1 a few
    # noisy Adam steps close a node; from 1.0 only a push sustained over 1 / lr steps does, which a
    # model with 144,000 nodes needs (docs/circuits.md, "A penalty that scales")
    init_tau: float = field(default=0.1, metadata=interval(0, 1, "(]"))
    # Tried in order when the mask trained at k_coef misses the target on a task the model solves: a
    # high penalty can switch off a node the task needs early, before the task loss feels it.
    k_coef_fallbacks: list[float] = field(default_factory=lambda: [3e-4, 1e-4], metadata=_rule(
        lambda values: all(k >= 0 for k in values), "every value must be >= 0"))
    # The penalty rises linearly from 0 over this fraction of the steps, so nodes leave in order of
    # importance instead of all at once on a task the model solves almost perfectly (docs/circuits.md)
    k_coef_ramp: float = field(default=0.5, metadata=interval(0, 1))
    weight_decay: float = field(default=1e-3, metadata=at_least(0))
    betas: tuple[float, float] = (0.9, 0.95)
    # Three disjoint splits per task: the mask learns on train, bisection picks the size on validation,
    # and every reported figure (full model, circuit, checks, controls) is read on test.
    train_pairs: int = field(default=1000, metadata=POSITIVE_INT)  # balanced pairs per built-in task
    validation_pairs: int = field(default=100, metadata=POSITIVE_INT)
    test_pairs: int = field(default=100, metadata=POSITIVE_INT)
    # Bisection keeps the smallest circuit whose validation loss plus this many standard errors of the
    # predicted test loss (validation and test noise together) is at most the target, so that the
    # circuit stays sufficient on test (docs/circuits.md: measured).
    validation_margin_se: float = field(default=2.0, metadata=at_least(0, "must be a number >= 0"))
    # bisection may stop at a circuit at most this fraction larger than the smallest: on a large model
    # it saves most of the evaluations (docs/circuits.md, "Cheaper pruning")
    size_tolerance: float = field(default=0.01, metadata=interval(0, 1, "[)"))
    # random circuits with the same nodes per site, per circuit: none should be sufficient
    random_draws: int = field(default=10, metadata=at_least(0))
    nonsense_control: bool = True  # prune each task's twin with labels that ignore the deciding detail
    attribution_baseline: bool = True  # attribution patching's top-k nodes, the baseline learned masks must beat
    # a task the full model solves from the prompt's last this-many tokens is short-range: it needs no context
    short_range_tokens: int = field(default=4, metadata=POSITIVE_INT)
    # held-out pretraining sequences for the mean-ablation values
    mean_blocks: int = field(default=64, metadata=POSITIVE_INT)
    # "dense" (model.name_or_path), "sparse" (OUTPUT_DIR/model), or any saved model's path or Hub id
    models: list[str] = field(default_factory=lambda: ["dense", "sparse"])
    random_model_control: bool = False  # also prune a randomly initialised model of the same shape
    seed: int = 0


@dataclass
class HubConfig:
    """Publishing a finished run to the Hugging Face Hub (docs/publishing.md). The token comes from
    huggingface_hub's usual sources (HF_TOKEN, `hf auth login`) and is never printed or saved."""

    # "name/repo": push when the run finishes; None: never push
    repo_id: str | None = field(default=None, metadata=_rule(
        lambda value: value is None or re.fullmatch(HUB_REPO_ID, value) is not None,
        "must be a Hub repository id, 'namespace/name'"))
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
    bridges: BridgesConfig = field(default_factory=BridgesConfig)
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
    return _coerce_scalar(value, tp, where)


def _coerce_scalar(value, tp, where: str):
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


def _build(cls, data: dict, prefix: str = "", problems: list[str] | None = None):
    """`cls` from a mapping. Each key that is unknown or of the wrong type is a line in `problems` (the field
    keeps its default, so the rest is still checked); without `problems`, the first raises."""
    collect = [] if problems is None else problems
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            collect.append(f"{where}: unknown key (valid keys here: {', '.join(sorted(known))})")
            continue
        try:
            kwargs[key] = (_build(hints[key], value, where, collect) if dataclasses.is_dataclass(hints[key])
                           and isinstance(value, dict) else _coerce(value, hints[key], where))
        except RecipeError as error:
            collect.append(str(error))
    if problems is None and collect:
        raise RecipeError(collect[0])
    return cls(**kwargs)


# ---------------------------------------------------------------- value checks


def field_problems(config, prefix: str = "") -> list[str]:
    """What each field's own range (its `check`, beside its default above) says about its value."""
    problems = []
    for f in dataclasses.fields(config):
        value, where = getattr(config, f.name), f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            problems += field_problems(value, where)
        elif "check" in f.metadata and not f.metadata["check"][0](value):
            problems.append(f"{where}: {f.metadata['check'][1]}, got {value!r}")
    return problems


def validate(recipe: Recipe) -> list[str]:
    """Every value that type-checks but cannot run: each field's range, then the rules that join fields."""
    problems = field_problems(recipe)
    s, loss = recipe.sparsity, recipe.loss
    if s.embedding_density is not None and not s.embeddings:
        problems.append(f"sparsity.embedding_density: needs sparsity.embeddings: true, got {s.embedding_density!r}")
    if loss.ce_weight >= 0 and loss.kl_weight >= 0 and loss.ce_weight + loss.kl_weight <= 0:
        problems.append(f"loss: at least one weight must be > 0, got {(loss.ce_weight, loss.kl_weight)!r}")
    if recipe.model.init_config is not None and loss.kl_weight > 0:
        problems.append("loss.kl_weight: a model trained from model.init_config has no dense teacher; set it to 0")
    if loss.hidden_weight > 0 and (loss.kl_weight <= 0 or recipe.model.init_config is not None):
        problems.append("loss.hidden_weight: matches the dense model's blocks, so it needs the dense teacher "
                        f"(loss.kl_weight > 0), got {loss.hidden_weight!r}")
    if s.refit_every > 0 and (loss.kl_weight <= 0 or recipe.model.init_config is not None):
        problems.append("sparsity.refit_every: refits to the dense model's outputs, so it needs the dense teacher "
                        f"(loss.kl_weight > 0), got {s.refit_every!r}")
    if recipe.model.width_multiplier > 1 and (recipe.model.init_config is not None or loss.kl_weight <= 0):
        problems.append("model.width_multiplier: widens a checkpoint distilled from itself, so it needs the dense "
                        f"teacher (loss.kl_weight > 0), got {recipe.model.width_multiplier!r}")
    if recipe.model.random_start and (recipe.model.init_config is not None or loss.kl_weight <= 0):
        problems.append("model.random_start: needs a checkpoint to distil from "
                        "(model.name_or_path, loss.kl_weight > 0)")
    if recipe.bridges.enabled and (loss.kl_weight <= 0 or recipe.model.init_config is not None
                                   or not s.enabled):
        problems.append("bridges.enabled: bridges join the sparse model to its dense teacher, so they need "
                        "sparsity to be on and the dense teacher (loss.kl_weight > 0)")
    return problems + _task_problems(recipe.tasks)


def _task_problems(tasks: list) -> list[str]:
    from extract.tasks.builtin import TASKS  # light: no torch

    problems, seen = [], set()
    for i, task in enumerate(tasks):
        name = task if isinstance(task, str) else task.file
        if isinstance(task, str) and task not in TASKS:
            problems.append(f"tasks[{i}]: unknown built-in task (built-in: {', '.join(TASKS)}), got {task!r}")
        elif name in seen:
            problems.append(f"tasks[{i}]: listed twice, got {name!r}")
        seen.add(name)
    return problems


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
    data = _with_base(data, path)
    data.setdefault("name", path.stem)
    problems: list[str] = []
    try:
        for text in overrides:
            apply_override(data, *parse_override(text))
        _rename_keys(data)
        recipe = _build(Recipe, data, problems=problems)  # a field of the wrong type keeps its default ...
        problems += validate(recipe)  # ... so every range and rule is checked too
    except RecipeError as error:  # an override that cannot apply
        problems.append(str(error))
    if problems:  # every problem at once, each naming the file and the key
        raise RecipeError("\n".join(f"{path}: {problem}" for problem in problems))
    return recipe, path


def _with_base(data: dict, path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A recipe with `base: NAME_OR_PATH` is that recipe with this one's keys laid over it, section by
    section (a variant states only what it changes; the run saves the whole result as recipe.yaml)."""
    if "base" not in data:
        return data
    base_path = resolve_recipe_path(str(data.pop("base")))
    if base_path in seen or base_path == path:
        raise RecipeError(f"{path}: base: {base_path} is based on this recipe again")
    base = yaml.safe_load(base_path.read_text()) or {}
    base = _with_base(base, base_path, (*seen, path))
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


RENAMED = {("prune", "local_tokens"): "short_range_tokens"}  # old key: new name (recipes saved before the rename)


def _rename_keys(data: dict) -> None:
    for (section, old), new in RENAMED.items():
        if isinstance(data.get(section), dict) and old in data[section] and new not in data[section]:
            data[section][new] = data[section].pop(old)
