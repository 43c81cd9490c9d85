"""A failed or concurrent run never spoils an output folder, and only a user's error loses its traceback."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_cli

from extract.errors import UserError
from extract.outputs import RECIPE_FILE, output_lock

pytestmark = pytest.mark.slow  # end to end: the command line, several processes or a Hub


def test_a_typo_in_the_model_path_leaves_nothing_that_refuses_the_fix(write_recipe, tiny_model_dir, tmp_path):
    recipe = write_recipe()
    proc = run_cli("--recipe", recipe, "--stage", "sparsify", f"model.name_or_path={tmp_path / 'tiny-gtp2'}",
                   check=False)
    assert proc.returncode == 1 and "tiny-gtp2" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / RECIPE_FILE).exists()
    run_cli("--recipe", recipe, "--stage", "sparsify", "train.steps=4")  # the corrected command
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()


def test_an_embedding_share_without_room_is_named_before_the_data_loads(write_recipe, tmp_path):
    proc = run_cli("--recipe", write_recipe(), "sparsity.embedding_density=0.9", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "sparsity.embedding_density" in proc.stderr and "must be below" in proc.stderr
    assert "tokenising" not in proc.stderr  # refused before the corpus was read
    assert not (tmp_path / "out" / RECIPE_FILE).exists()


@pytest.mark.parametrize("stage", ["sparsify", "prune", "report", "all"])
def test_a_second_run_on_a_busy_output_dir_is_refused(write_recipe, tmp_path, stage):
    out = tmp_path / "out"
    with output_lock(out):
        proc = run_cli("--recipe", write_recipe(), "--stage", stage, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "in use by another run" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
        assert not (out / RECIPE_FILE).exists() and not (out / "checkpoints").exists()  # wrote nothing
        with pytest.raises(UserError, match="in use"):  # the same in one process
            with output_lock(out):
                pass
    with output_lock(out):  # free again
        pass
    if stage == "sparsify":  # and a run goes ahead
        run_cli("--recipe", write_recipe(), "--stage", "sparsify", "train.steps=4")


def test_a_killed_run_does_not_leave_its_lock_stuck(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom extract.outputs import output_lock\n"
                               f"with output_lock({str(tmp_path)!r}):\n    print('locked', flush=True)\n"
                               "    time.sleep(600)"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match="in use"):
        with output_lock(tmp_path):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    deadline = time.monotonic() + 10
    while True:  # the kernel releases a dead process's lock at once; allow for a slow reaper
        try:
            with output_lock(tmp_path):
                break
        except UserError:
            assert time.monotonic() < deadline, "the lock stayed held after its process was killed"
            time.sleep(0.1)


def test_a_bug_keeps_its_traceback(write_recipe, monkeypatch):
    """Only UserError is turned into a one-line message: a KeyError from a bug must not read like bad input."""
    from extract import run, train

    def broken(recipe, accelerator):
        raise KeyError("llama")

    monkeypatch.setattr(train, "train", broken)
    with pytest.raises(KeyError, match="llama"):
        run.main(["--recipe", str(write_recipe()), "--stage", "sparsify"])


def _weights(model_dir):
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


@pytest.fixture(scope="module")
def checkpointed_run(tiny_model_dir, tiny_corpus, tmp_path_factory):
    """(recipe, output folder, final weights) of a finished 12-step sparsify that kept its step-4 and
    step-8 checkpoints; tests damage copies of it."""
    import yaml
    from conftest import tiny_recipe_dict

    root = tmp_path_factory.mktemp("checkpointed")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_model_dir, tiny_corpus, root / "out")))
    run_cli("--recipe", recipe, "--stage", "sparsify")
    return recipe, root / "out", _weights(root / "out" / "model")


def _killed_after_step_8(checkpointed_run, tmp_path):
    """A copy of the run as if killed after its step-8 checkpoint: (recipe, folder, the arguments that
    point the recipe at the copy)."""
    import shutil

    recipe, out, _ = checkpointed_run
    shutil.copytree(out, tmp_path / "out")
    shutil.rmtree(tmp_path / "out" / "model")
    return recipe, tmp_path / "out", ["--stage", "sparsify", f"output_dir={tmp_path / 'out'}"]


@pytest.mark.parametrize("damage", ["truncate weights", "optimizer not a pickle", "trainer state not JSON"])
def test_a_damaged_checkpoint_is_set_aside_for_the_one_before(checkpointed_run, tmp_path, damage):
    import torch

    recipe, out, args = _killed_after_step_8(checkpointed_run, tmp_path)
    newest = out / "checkpoints" / "step-8"
    if damage == "truncate weights":
        path = newest / "model.safetensors"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "optimizer not a pickle":
        (newest / "optimizer.bin").write_bytes(b"\x00" * 64)
    else:
        (newest / "trainer_state.json").write_text('{"step": 8, "tok')
    proc = run_cli("--recipe", recipe, *args)
    assert "cannot be loaded" in proc.stdout and "resuming from" in proc.stdout and "step-4" in proc.stdout
    assert (out / "checkpoints" / ".broken-step-8").is_dir()  # kept for a look, never loaded again
    resumed, reference = _weights(out / "model"), checkpointed_run[2]
    for name in reference:  # steps 5-12 trained again from step 4 give the same weights, bit for bit
        assert torch.equal(resumed[name], reference[name]), name


def test_no_loadable_checkpoint_stops_with_what_to_do(checkpointed_run, tmp_path):
    recipe, out, args = _killed_after_step_8(checkpointed_run, tmp_path)
    for step in (4, 8):
        (out / "checkpoints" / f"step-{step}" / "trainer_state.json").write_text("not json")
    proc = run_cli("--recipe", recipe, *args, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "no checkpoint loads" in proc.stderr and "rerun the same command" in proc.stderr
    run_cli("--recipe", recipe, *args)  # and the rerun trains from the start
    assert (out / "model" / "model.safetensors").is_file()


PRUNE = ["prune.steps=40", "prune.batch_size=32", "prune.lr=0.05", "prune.mean_blocks=8", "prune.random_draws=0",
         "prune.nonsense_control=false", "prune.attribution_baseline=false", "prune.k_coef_fallbacks=[]",
         "prune.random_model_control=false"]


@pytest.fixture(scope="module")
def finished_run(quote_model, tiny_corpus, tmp_path_factory):
    """(recipe, output folder) of a finished tiny run with a circuit per model; tests damage copies."""
    import yaml
    from conftest import tiny_recipe_dict

    model_dir, task_file = quote_model
    root = tmp_path_factory.mktemp("finished")
    data = tiny_recipe_dict(model_dir, tiny_corpus, root / "out")
    data.update(tasks=[{"file": str(task_file)}])
    data["sparsity"].update(target_density=0.5)
    data["loss"] = {"ce_weight": 0.0, "kl_weight": 1.0}
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    run_cli("--recipe", recipe, *PRUNE)
    return recipe, root / "out"


def _copy_run(finished_run, tmp_path):
    import shutil

    recipe, out = finished_run
    shutil.copytree(out, tmp_path / "out")
    return recipe, tmp_path / "out", [f"output_dir={tmp_path / 'out'}", *PRUNE]


def _cut_short(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_damaged_mean_cache_is_estimated_again(finished_run, tmp_path):
    recipe, out, args = _copy_run(finished_run, tmp_path)
    before = {p.name: p.read_text() for p in (out / "circuits").glob("*.json")}
    for means in (out / "circuits" / "means").glob("*.safetensors"):
        _cut_short(means)
    proc = run_cli("--recipe", recipe, "--stage", "prune", *args)
    assert "estimating the means again" in proc.stderr and "done in an earlier run" in proc.stderr
    after = {p.name: p.read_text() for p in (out / "circuits").glob("*.json")}
    assert {k: v for k, v in after.items() if k != "circuits.json"} == \
        {k: v for k, v in before.items() if k != "circuits.json"}  # the same means: the same circuits, reused


def test_a_damaged_circuit_file_is_pruned_again(finished_run, tmp_path):
    recipe, out, args = _copy_run(finished_run, tmp_path)
    path = out / "circuits" / "quotes.sparse.json"
    whole = json.loads(path.read_text())
    _cut_short(path)
    proc = run_cli("--recipe", recipe, "--stage", "prune", *args)
    assert "is damaged; pruning quotes (sparse) again" in proc.stderr
    again = json.loads(path.read_text())
    assert again["nodes"] == whole["nodes"] and again["edges"] == whole["edges"]


@pytest.mark.parametrize("name, stage, fix", [
    ("report.json", "push", "--stage report"),
    ("circuits/circuits.json", "report", "--stage prune"),
    ("model/trainer_state.json", "report", "training resumes"),
])
def test_an_output_that_is_not_json_is_named_with_the_fix(finished_run, tmp_path, name, stage, fix):
    recipe, out, args = _copy_run(finished_run, tmp_path)
    (out / name).write_text('{"tasks": {"quo')
    extra = ["hub.repo_id=you/x"] if stage == "push" else []
    proc = run_cli("--recipe", recipe, "--stage", stage, *args, *extra, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{out / name}: not valid JSON" in proc.stderr and fix in proc.stderr


def test_a_damaged_model_file_is_named(finished_run, tmp_path):
    recipe, out, args = _copy_run(finished_run, tmp_path)
    _cut_short(out / "model" / "model.safetensors")
    proc = run_cli("--recipe", recipe, "--stage", "report", *args, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "safetensors file is damaged" in proc.stderr and str(out / "model") in proc.stderr
