"""Weights never unpickle, and a model's own code runs only when the recipe says so.

(That a Hub token never reaches an output, a log or a cache is tested in test_hub.py, where runs push.)
"""
import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, RUN, run_cli

pytestmark = pytest.mark.slow  # end to end: the command line, several processes or a Hub

# Runs a script with an audit hook that stops any unrestricted unpickling: the pickle module fires
# `pickle.find_class` for every global it resolves, and torch.load(weights_only=True) does not use it.
GUARDED = """
import runpy, sys
def refuse(event, args):
    if event == "pickle.find_class":
        raise RuntimeError(f"unpickled {args[0]}.{args[1]}")
sys.addaudithook(refuse)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def guarded(*args):
    return subprocess.run([sys.executable, "-c", GUARDED, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def test_no_stage_unpickles_anything(write_recipe, tmp_path, quote_model):
    """Sparsify, resume from a checkpoint, prune, report: nothing goes through pickle."""
    _, task_file = quote_model
    recipe = write_recipe(train={"steps": 12, "checkpoint_every": 4}, tasks=[{"file": str(task_file)}])
    prune = ["prune.steps=10", "prune.mean_blocks=4", "prune.random_draws=1", "prune.nonsense_control=false",
             "prune.attribution_baseline=false", "prune.random_model_control=false", "prune.k_coef_fallbacks=[]"]
    first = guarded(RUN, "--recipe", recipe, "--stage", "sparsify")
    assert first.returncode == 0, first.stderr[-2000:]
    shutil.rmtree(tmp_path / "out" / "model")  # so that the rerun loads the step-8 checkpoint
    resumed = guarded(RUN, "--recipe", recipe, *prune)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout and (tmp_path / "out" / "report.json").is_file()
    # the guard itself works: an unrestricted load of the same checkpoint's RNG state is stopped
    probe = tmp_path / "probe.py"
    rng = next((tmp_path / "out" / "checkpoints").glob("step-*/random_states_0.pkl"))
    probe.write_text(f"import torch\ntorch.load({str(rng)!r}, weights_only=False)\n")
    stopped = guarded(probe)
    assert stopped.returncode != 0 and "unpickled" in stopped.stderr


def test_a_model_with_only_pickled_weights_is_refused(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from extract.models import ModelLoadError, load_model
    from extract.recipe import ModelConfig

    pickled = tmp_path / "pickled"  # the same model, its weights as a pickle (transformers 5 only writes safetensors)
    pickled.mkdir()
    shutil.copy(tiny_model_dir / "config.json", pickled)
    torch.save(load_file(tiny_model_dir / "model.safetensors"), pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(ModelConfig(name_or_path=str(pickled)))


def _model_with_custom_code(tiny_model_dir, folder, marker):
    """A copy of the tiny model whose config is of a model type transformers does not know, with its
    configuration class in a file of its own; that file writes `marker` when it is imported."""
    shutil.copytree(tiny_model_dir, folder)
    (folder / "configuration_custom.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import GPT2Config\n\nclass CustomConfig(GPT2Config):\n    model_type = 'custom-gpt2'\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom-gpt2", auto_map={"AutoConfig": "configuration_custom.CustomConfig"})
    (folder / "config.json").write_text(json.dumps(config))


def test_a_models_own_code_runs_only_when_the_recipe_trusts_it(write_recipe, tiny_model_dir, tmp_path):
    marker = tmp_path / "custom-code-ran"
    folder = tmp_path / "custom"
    _model_with_custom_code(tiny_model_dir, folder, marker)
    recipe = write_recipe(model={"name_or_path": str(folder)})
    refused = run_cli("--recipe", recipe, "--stage", "sparsify", "train.steps=2", check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "trust_remote_code" in refused.stderr and not marker.exists()
    trusted = run_cli("--recipe", recipe, "--stage", "sparsify", "train.steps=2", "model.trust_remote_code=true",
                      check=False)
    assert marker.read_text() == "ran"  # the recipe asked for it: the code ran (then the family check stops it)
    assert trusted.returncode == 1 and "'custom-gpt2' has no architecture mapping" in trusted.stderr
