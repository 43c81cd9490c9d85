"""A failed or concurrent run never spoils an output folder, and only a user's error loses its traceback."""
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_cli

from extract.errors import UserError
from extract.outputs import RECIPE_FILE, output_lock


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


def test_a_second_run_on_a_busy_output_dir_is_refused(write_recipe, tmp_path):
    out = tmp_path / "out"
    with output_lock(out):
        proc = run_cli("--recipe", write_recipe(), "--stage", "sparsify", check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "in use by another run" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
        assert not (out / RECIPE_FILE).exists() and not (out / "checkpoints").exists()  # wrote nothing
        with pytest.raises(UserError, match="in use"):  # the same in one process
            with output_lock(out):
                pass
    run_cli("--recipe", write_recipe(), "--stage", "sparsify", "train.steps=4")  # free again


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


@pytest.mark.parametrize("damage", ["truncate weights", "optimizer not a pickle", "trainer state not JSON"])
def test_a_damaged_checkpoint_is_set_aside_for_the_one_before(write_recipe, tmp_path, damage):
    import shutil

    import torch

    recipe = write_recipe(train={"steps": 12, "checkpoint_every": 4})  # keeps step-4 and step-8
    run_cli("--recipe", recipe, "--stage", "sparsify")
    out = tmp_path / "out"
    reference = _weights(out / "model")
    shutil.rmtree(out / "model")  # as if killed after the step-8 checkpoint
    newest = out / "checkpoints" / "step-8"
    if damage == "truncate weights":
        path = newest / "model.safetensors"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "optimizer not a pickle":
        (newest / "optimizer.bin").write_bytes(b"\x00" * 64)
    else:
        (newest / "trainer_state.json").write_text('{"step": 8, "tok')
    proc = run_cli("--recipe", recipe, "--stage", "sparsify")
    assert "cannot be loaded" in proc.stdout and "resuming from" in proc.stdout and "step-4" in proc.stdout
    assert (out / "checkpoints" / ".broken-step-8").is_dir()  # kept for a look, never loaded again
    resumed = _weights(out / "model")
    for name in reference:  # steps 5-12 trained again from step 4 give the same weights
        torch.testing.assert_close(resumed[name], reference[name], rtol=0, atol=1e-6, msg=name)


def test_no_loadable_checkpoint_stops_with_what_to_do(write_recipe, tmp_path):
    import shutil

    recipe = write_recipe(train={"steps": 12, "checkpoint_every": 4})
    run_cli("--recipe", recipe, "--stage", "sparsify")
    out = tmp_path / "out"
    shutil.rmtree(out / "model")
    for step in (4, 8):
        (out / "checkpoints" / f"step-{step}" / "trainer_state.json").write_text("not json")
    proc = run_cli("--recipe", recipe, "--stage", "sparsify", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "no checkpoint loads" in proc.stderr and "rerun the same command" in proc.stderr
    run_cli("--recipe", recipe, "--stage", "sparsify")  # and the rerun trains from the start
    assert (out / "model" / "model.safetensors").is_file()
