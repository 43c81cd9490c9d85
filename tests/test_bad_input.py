"""The bad-input catalogue: every wrong input stops with one line naming the file, the key or the line.

Recipe errors are checked in-process (they need no model); the rest run the command line as a user
would, and none may print a traceback. Task-file errors are in test_task_files.py, a NaN loss in
test_train.py, an unsupported family in test_families.py.
"""
import dataclasses
import re
import typing
from pathlib import Path

import pytest
from conftest import run_cli

from extract.paths import RECIPES_DIR
from extract.recipe import Recipe, RecipeError, load_recipe


def _leaves(cls, prefix=""):
    """(dotted key, annotation, field) of every field of the recipe, nested sections walked."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from _leaves(tp, key + ".")
        else:
            yield key, tp, f


def _wrong_value(tp):
    """A value of the wrong type for `tp`: a list where a mapping goes, a mapping anywhere else."""
    origin = typing.get_origin(tp)
    options = typing.get_args(tp) if origin in (typing.Union, getattr(__import__("types"), "UnionType")) else (tp,)
    if any(typing.get_origin(o) is dict for o in options):
        return [1, 2]
    return {"oops": 1}


FIELDS = [(key, tp) for key, tp, _ in _leaves(Recipe) if tp is not typing.Any]


@pytest.mark.parametrize("key, tp", FIELDS, ids=[key for key, _ in FIELDS])
def test_every_field_of_the_wrong_type_is_named(tmp_path, key, tp):
    *sections, leaf = key.split(".")
    data = value = {leaf: _wrong_value(tp)}
    for section in reversed(sections):
        data = {section: data}
    path = tmp_path / "bad.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as error:
        load_recipe(str(path))
    assert str(path) in str(error.value) and f"{key}:" in str(error.value), (value, str(error.value))


IMPOSSIBLE = {  # one value per check in recipe.validate; the last test keeps this list complete
    "sparsity.target_density": 0, "sparsity.embedding_density": 1.5, "sparsity.min_per_unit": -1,
    "sparsity.anneal_fraction": 1.5, "sparsity.sharkfin_power": -0.5, "optim.lr": 0, "optim.betas": [1.0, 0.9],
    "optim.eps": 0, "optim.weight_decay": -1, "optim.warmup_fraction": 1.0, "optim.clip_grad_norm": 0,
    "loss.ce_weight": -1, "loss.kl_weight": -1, "train.steps": 0, "train.batch_size": 0,
    "train.gradient_accumulation_steps": 0, "train.eval_every": 0, "train.checkpoint_every": 0,
    "train.log_every": -1, "data.block_size": 1, "data.heldout_blocks": 0, "data.heldout_fraction": 1.0,
    "eval.quote_examples": -1, "prune.target_loss": 0.7, "prune.steps": 0, "prune.batch_size": 0,
    "prune.train_pairs": 0, "prune.validation_pairs": 0, "prune.test_pairs": 0, "prune.mean_blocks": 0,
    "prune.short_range_tokens": 0, "prune.lr": -1, "prune.k_coef": -1, "prune.k_coef_ramp": 1.5,
    "prune.weight_decay": -1, "prune.random_draws": -1, "prune.validation_margin_se": -1,
    "prune.k_coef_fallbacks": [-1], "prune.penalty": "adaptive", "prune.loss_budget": 0, "prune.penalty_rate": 0,
    "prune.init_tau": 0, "prune.size_tolerance": 1, "loss.hidden_weight": -1, "sparsity.refit_every": -1,
    "sparsity.refit_blocks": 0, "hub.repo_id": "no-namespace", "bridges.nmse_weight": -1,
    "bridges.hybrid_kl_weight": -1, "bridges.topk": 0, "bridges.hybrid_sites": "some", "model.width_multiplier": 0,
    "bridges.lr": 0,
}


@pytest.mark.parametrize("key", IMPOSSIBLE)
def test_every_impossible_value_is_named(key):
    value = IMPOSSIBLE[key]
    import json

    with pytest.raises(RecipeError, match=re.escape(f"{key}:")):
        load_recipe("tiny-python", [f"{key}={json.dumps(value)}"])


def test_the_catalogue_covers_every_check():
    """Each field with a range (its `check`, beside its default in extract/recipe.py) and each key the rules
    of recipe.validate name has a case above: a new check without one fails here."""
    import inspect

    from extract import recipe

    checked = {key for key, _, f in _leaves(Recipe) if "check" in f.metadata}
    assert {"sparsity.target_density", "prune.k_coef_ramp", "hub.repo_id", "train.steps"} <= checked
    checked |= set(re.findall(r'"((?:sparsity|optim|loss|train|data|eval|prune|hub)\.[a-z_]+)', inspect.getsource(
        recipe.validate)))
    assert checked <= set(IMPOSSIBLE), sorted(checked - set(IMPOSSIBLE))


@pytest.mark.slow
def test_every_problem_of_a_recipe_is_reported_at_once(tmp_path):
    """A type error, an unknown key and two values out of range: four lines, each naming the file and the key;
    the command line prints each as an error."""
    bad = ["sparsity.target_density=0", "optim.lr=-1", "train.stepz=3", "prune.steps=many"]
    with pytest.raises(RecipeError) as error:
        load_recipe("tiny-python", bad)
    lines = str(error.value).splitlines()
    assert len(lines) == 4 and all(line.startswith(str(RECIPES_DIR / "tiny-python.yaml")) for line in lines)
    for key in ("sparsity.target_density: must be in (0, 1]", "optim.lr: must be a positive number",
                "train.stepz: unknown key", "prune.steps: expected an integer"):
        assert any(key in line for line in lines), (key, lines)
    proc = run_cli("--stage", "sparsify", *bad, f"output_dir={tmp_path}", check=False)
    assert proc.returncode == 2 and proc.stderr.count(f"error: {RECIPES_DIR / 'tiny-python.yaml'}: ") == 4, proc.stderr


def test_both_loss_weights_zero_and_a_teacherless_kl_are_refused():
    with pytest.raises(RecipeError, match="at least one weight must be > 0"):
        load_recipe("tiny-python", ["loss.ce_weight=0", "loss.kl_weight=0"])
    with pytest.raises(RecipeError, match="loss.kl_weight: a model trained from model.init_config has no dense"):
        load_recipe("tiny-python", ["model.init_config={n_layer: 1}", "loss.kl_weight=1"])
    with pytest.raises(RecipeError, match="loss.hidden_weight: matches the dense model's blocks, so it needs"):
        load_recipe("tiny-python", ["loss.ce_weight=1", "loss.kl_weight=0", "loss.hidden_weight=1"])
    with pytest.raises(RecipeError, match="model.random_start: needs a checkpoint to distil from"):
        load_recipe("tiny-python", ["loss.ce_weight=1", "loss.kl_weight=0", "model.random_start=true"])
    load_recipe("tiny-python", ["loss.hidden_weight=1", "model.random_start=true"])  # both fine with a teacher
    with pytest.raises(RecipeError, match="bridges.enabled: bridges join the sparse model to its dense teacher"):
        load_recipe("tiny-python", ["loss.ce_weight=1", "loss.kl_weight=0", "bridges.enabled=true"])
    with pytest.raises(RecipeError, match="bridges.enabled: bridges join"):
        load_recipe("tiny-python", ["sparsity.enabled=false", "bridges.enabled=true"])
    with pytest.raises(RecipeError, match="model.width_multiplier: widens a checkpoint distilled from itself"):
        load_recipe("tiny-python", ["loss.ce_weight=1", "loss.kl_weight=0", "model.width_multiplier=2"])


@pytest.mark.parametrize("setting", ["train.compile=true", "train.gradient_checkpointing=true"])
def test_bridges_refuse_what_they_do_not_support_yet(setting):
    from types import SimpleNamespace

    from extract.train import _check_bridges_supported

    recipe = load_recipe("tiny-python", ["bridges.enabled=true", setting])[0]
    with pytest.raises(RecipeError, match=f"bridges.enabled: not supported with {setting.split('=')[0]}"):
        _check_bridges_supported(recipe, SimpleNamespace(is_fsdp2=False))
    bridged = load_recipe("tiny-python", ["bridges.enabled=true"])[0]
    with pytest.raises(RecipeError, match="FSDP2"):
        _check_bridges_supported(bridged, SimpleNamespace(is_fsdp2=True))


def _refused(proc, *needles):
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr[-2000:])


@pytest.mark.slow
def test_a_model_directory_without_weights_is_named(write_recipe, tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "weightless"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    proc = run_cli("--recipe", write_recipe(model={"name_or_path": str(folder)}), "--stage", "sparsify", check=False)
    _refused(proc, "model.name_or_path", "weightless", "safetensors")


@pytest.mark.slow
def test_a_model_without_a_tokenizer_is_named(write_recipe, tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, folder)
    proc = run_cli("--recipe", write_recipe(model={"name_or_path": str(folder)}), "--stage", "sparsify", check=False)
    _refused(proc, "model.name_or_path", "tokenizer", "no-tokenizer")


@pytest.mark.parametrize("corpus, message", [("empty folder", "holds no files"), ("empty file", "is empty"),
                                             ("not JSON", "cannot read"), ("too short", "held-out split produced no")])
@pytest.mark.slow
def test_an_empty_or_unreadable_corpus_is_named(write_recipe, tmp_path, corpus, message):
    where = tmp_path / "corpus.jsonl"
    if corpus == "empty folder":
        where = tmp_path / "corpus"
        where.mkdir()
    else:
        where.write_text({"empty file": "", "not JSON": '{"path": "a.py", "text": "x = 1"\n',
                          "too short": '{"path": "a.py", "text": "x = 1"}\n'}[corpus])
    proc = run_cli("--recipe", write_recipe(data={"dataset": str(where)}), "--stage", "sparsify", check=False)
    _refused(proc, message)
    assert "data." in proc.stderr  # the key to look at


@pytest.mark.slow
def test_an_unknown_task_name_on_the_command_line_is_named(tmp_path):
    proc = run_cli("--stage", "prune", "--task", "quote_closing", f"output_dir={tmp_path}", check=False)
    assert proc.returncode == 2
    _refused(proc, "tasks[0]: unknown built-in task", "single_double_quote")


@pytest.mark.slow
def test_a_malformed_recipe_file_is_named_on_the_command_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  steps: [1, 2\n")
    proc = run_cli("--recipe", path, check=False)
    assert proc.returncode == 2
    _refused(proc, str(path), "not valid YAML")
    assert not Path(tmp_path / "out").exists()
