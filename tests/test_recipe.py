"""Recipes: every shipped recipe validates; bad recipes stop before any work with a precise message."""
import pytest
import yaml

from extract.recipe import RecipeError, available_recipes, load_recipe
from tests.conftest import run_cli


@pytest.mark.parametrize("name", available_recipes())
def test_shipped_recipes_validate(name):
    recipe, path = load_recipe(name)
    assert path.name == f"{name}.yaml"
    assert recipe.name == name


def test_default_recipe_is_offline_and_embedded():
    recipe, _ = load_recipe("tiny-python")
    assert recipe.model.name_or_path == "embedded" and recipe.data.dataset == "embedded"
    assert recipe.env["HF_HUB_OFFLINE"] == "1" and recipe.env["HF_DATASETS_OFFLINE"] == "1"
    assert recipe.sparsity.target_density <= 1 / 32


def _write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("sparsity:\n  target_densty: 0.1\n", "sparsity.target_densty: unknown key"),
        ("sparsity:\n  target_density: 1.5\n", "sparsity.target_density: must be in (0, 1], got 1.5"),
        ("train:\n  steps: -3\n", "train.steps: must be a positive integer, got -3"),
        ("train:\n  steps: many\n", "train.steps: expected an integer, got 'many'"),
        ("train:\n  steps: 1.5\n", "train.steps: expected an integer"),
        ("sparsity:\n  anneal_shape: cosine\n", "sparsity.anneal_shape: must be one of ['linear', 'log', 'cubic']"),
        ("optim:\n  betas: [0.9]\n", "optim.betas: expected a list of 2 values"),
        ("model: openai-community/gpt2\n", "model: expected a mapping of fields"),
        ("colour: blue\n", "colour: unknown key"),
        ("tasks: [single_double_quote, quote_closing]\n", "tasks[1]: unknown built-in task"),
        ("tasks: [{path: t.jsonl}]\n", "tasks[0].path: unknown key (valid keys here: file)"),
        ("tasks: [with_open, with_open]\n", "tasks[1]: listed twice"),
        ("prune:\n  target_loss: 0.9\n", "prune.target_loss: must be in (0, ln 2)"),
        ("prune:\n  k_coef_fallbacks: [3.0e-4, -1]\n", "prune.k_coef_fallbacks: every value must be >= 0"),
        ("prune:\n  k_coef_fallbacks: 3.0e-4\n", "prune.k_coef_fallbacks: expected a list"),
        ("sparsity:\n  embedding_density: 2\n", "sparsity.embedding_density: must be in (0, 1] or null"),
        ("sparsity:\n  sharkfin_power: -1\n", "sparsity.sharkfin_power: must be >= 0, got -1.0"),
        ("hub:\n  repo_id: my-model\n", "hub.repo_id: must be a Hub repository id, 'namespace/name'"),
        ("hub:\n  private: yes please\n", "hub.private: expected bool"),
        ("train: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "a recipe must be a mapping"),
    ],
)
def test_bad_recipe_names_file_and_key(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(RecipeError) as error:
        load_recipe(str(path))
    assert str(path) in str(error.value)
    assert expected in str(error.value)


@pytest.mark.slow
def test_overrides_by_dotted_path():
    recipe, _ = load_recipe("tiny-python", ["train.steps=7", "output_dir=/tmp/elsewhere", "optim.betas=[0.8, 0.9]",
                                            "optim.lr=3e-3"])
    assert recipe.train.steps == 7 and recipe.output_dir == "/tmp/elsewhere" and recipe.optim.betas == (0.8, 0.9)
    assert recipe.optim.lr == 0.003  # YAML 1.1 reads 3e-3 as a string; the schema still takes it
    # YAML 1.1 reads an unquoted `no` as false: the choice "no" is still meant
    assert load_recipe("tiny-python", ["train.mixed_precision=no"])[0].train.mixed_precision == "no"


@pytest.mark.parametrize("override, expected", [("train.stepz=3", "train.stepz: unknown key"),
                                                ("train.steps", "expected key=value"),
                                                ("sparsity.target_density=2", "must be in (0, 1]")])
def test_bad_override(override, expected):
    with pytest.raises(RecipeError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_recipe("tiny-python", [override])


def test_unknown_recipe_lists_available():
    with pytest.raises(RecipeError, match="available: .*tiny-python"):
        load_recipe("no-such-recipe")


@pytest.mark.slow
def test_cli_rejects_bad_recipe_before_any_work(tmp_path):
    out = tmp_path / "out"
    path = _write(tmp_path, yaml.safe_dump({"output_dir": str(out), "sparsity": {"target_density": 0}}))
    proc = run_cli("--recipe", path, check=False)
    assert proc.returncode == 2
    assert f"{path}: sparsity.target_density: must be in (0, 1], got 0" in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_push_needs_a_repo_and_a_finished_run(tmp_path):
    proc = run_cli("--stage", "push", f"output_dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "hub.repo_id: --stage push needs the Hub repo to push to" in proc.stderr
    proc = run_cli("--stage", "push", f"output_dir={tmp_path}", "hub.repo_id=you/x", check=False)
    assert proc.returncode == 1 and "no report.json; only a finished run can be pushed" in proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.slow
def test_cli_help_lists_recipes():
    proc = run_cli("--help")
    assert "tiny-python" in proc.stdout and "gpt2-small" in proc.stdout and "key=value" in proc.stdout


def test_saved_recipe_from_before_a_new_field_still_matches(tmp_path):
    """A run saved by an older version lacks the fields added since; it ran with their defaults."""
    from extract.outputs import RECIPE_FILE, save_recipe

    recipe, _ = load_recipe("tiny-python", [f"output_dir={tmp_path}"])
    save_recipe(recipe, tmp_path)
    saved = yaml.safe_load((tmp_path / RECIPE_FILE).read_text())
    del saved["sparsity"]["sharkfin_power"]  # as written before the field existed
    (tmp_path / RECIPE_FILE).write_text(yaml.safe_dump(saved))
    save_recipe(recipe, tmp_path)  # same run: accepted

    changed, _ = load_recipe("tiny-python", [f"output_dir={tmp_path}", "sparsity.sharkfin_power=1.0"])
    del saved["sparsity"]["anneal_shape"]  # missing and at its default: still no difference there
    (tmp_path / RECIPE_FILE).write_text(yaml.safe_dump(saved))
    with pytest.raises(RecipeError, match=r"differs in sparsity\.sharkfin_power\)"):
        save_recipe(changed, tmp_path)


def test_a_recipe_with_a_base_is_the_base_with_its_own_keys_laid_over(tmp_path):
    bridged = load_recipe("tiny-python-bridges")[0]
    default = load_recipe("tiny-python")[0]
    assert bridged.bridges.enabled and bridged.output_dir == "outputs/tiny-python-bridges"
    assert bridged.name == "tiny-python-bridges"
    for section in ("model", "data", "sparsity", "optim", "train", "prune"):
        assert getattr(bridged, section) == getattr(default, section), section
    assert bridged.tasks == default.tasks
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"base: {loop}\n")
    with pytest.raises(RecipeError, match="based on this recipe again"):
        load_recipe(str(loop))
    child = tmp_path / "child.yaml"
    child.write_text("base: tiny-python\ntrain: {steps: 5}\n")
    recipe = load_recipe(str(child))[0]
    assert recipe.train.steps == 5 and recipe.train.batch_size == default.train.batch_size
