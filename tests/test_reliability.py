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
