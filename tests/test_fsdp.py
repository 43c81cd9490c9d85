"""Sparsifying under FSDP2 through Accelerate (configs/fsdp2.yaml), two gloo processes on the CPU,
against one process: the launch command a user runs, killed and resumed."""
import json
import socket
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from extract.arch import sparse_tensors
from extract.sparsity import measured_density
from tests.conftest import ROOT, RUN, run_cli

pytestmark = pytest.mark.slow  # end to end: the command line, several processes or a Hub

STEPS = {"steps": 40, "checkpoint_every": 4, "eval_every": 20}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_fsdp(recipe, *extra) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs" / "fsdp2.yaml"),
            "--num_processes", "2", "--main_process_port", str(_free_port()), *extra,
            str(RUN), "--recipe", str(recipe), "--stage", "sparsify"]


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and its workers (torchrun starts them outside its process group)."""
    parent = psutil.Process(proc.pid)
    for p in [parent, *parent.children(recursive=True)]:
        p.kill()
    proc.wait()


def _assert_same_weights(one_run, sharded_run) -> dict:
    """The two runs' saved models: the same tensors, nonzero pattern and values within 1e-6."""
    a, b = (load_file(run / "model" / "model.safetensors") for run in (one_run, sharded_run))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name] != 0, b[name] != 0), f"{name}: nonzero pattern differs"
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    return b


def test_fsdp_run_killed_and_resumed_ends_with_the_one_process_weights(write_recipe, tmp_path):
    # one process, 8 rows a step; two FSDP processes, 2 rows per micro-batch and 2 micro-batches each:
    # the same 8 rows (the seeded sampler's order), so the same mean gradient up to rounding
    one = write_recipe("one.yaml", output_dir=str(tmp_path / "one"), train={**STEPS, "batch_size": 8})
    run_cli("--recipe", one, "--stage", "sparsify")
    sharded = write_recipe("fsdp.yaml", output_dir=str(tmp_path / "fsdp"),
                           train={**STEPS, "batch_size": 2, "gradient_accumulation_steps": 2})

    checkpoints = tmp_path / "fsdp" / "checkpoints"
    proc = subprocess.Popen(_launch_fsdp(sharded), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (checkpoints / "step-8").is_dir():
        assert proc.poll() is None, "the FSDP run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    _kill_tree(proc)
    assert not (tmp_path / "fsdp" / "model").exists()
    # each process wrote its own shards of the model and of the optimizer, not a gathered copy
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (checkpoints / "step-8" / part).glob("*.distcp")) == ["__0_0.distcp",
                                                                                              "__1_0.distcp"]

    resumed = subprocess.run(_launch_fsdp(sharded), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert "this one holds 50.0% of the model and 50.0% of the frozen teacher" in resumed.stdout
    state = json.loads((tmp_path / "fsdp" / "model" / "trainer_state.json").read_text())
    assert state["processes"] == 2 and state["distributed_type"] == "FSDP" and state["step"] == 40

    weights = _assert_same_weights(tmp_path / "one", tmp_path / "fsdp")
    assert "lm_head.weight" not in weights  # one plain checkpoint, the tied head not stored twice
    logs = [[json.loads(line) for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
            for run in ("one", "fsdp")]
    held_out = [[r["heldout_loss"] for r in log if "heldout_loss" in r] for log in logs]
    assert held_out[1] == pytest.approx(held_out[0], abs=1e-5)
    # the logged training loss is every process's rows, as the one process's is (after the resume too)
    assert [r["step"] for r in logs[1]] == [r["step"] for r in logs[0]]
    for key in ("ce", "kl"):
        assert [r[key] for r in logs[1]] == pytest.approx([r[key] for r in logs[0]], abs=1e-5), key

    # plain transformers loads it, with its own class name and the recipe's density
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "model")
    assert json.loads((tmp_path / "fsdp" / "model" / "config.json").read_text())["architectures"] == \
        ["GPT2LMHeadModel"]
    assert measured_density(sparse_tensors(model))[0] == \
        measured_density(sparse_tensors(AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "model")))[0]


def test_fsdp1_is_refused_by_name(write_recipe, tmp_path):
    recipe = write_recipe(train={"steps": 2})
    proc = subprocess.run(_launch_fsdp(recipe, "--fsdp_version", "1"), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "FSDP version 1 was asked for" in proc.stderr and "configs/fsdp2.yaml" in proc.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_fsdp_matches_one_process_on_a_llama_with_an_untied_head(write_recipe, tmp_path):
    """Another layout: grouped-query attention, RMSNorm, SwiGLU and an untied lm_head, wrapped by
    its own decoder-layer class."""
    from transformers import AutoTokenizer

    from extract.paths import TOKENIZER_DIR
    from tests.families import tiny_model

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    model_dir = tmp_path / "llama"
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    model = {"name_or_path": str(model_dir)}
    one = write_recipe("one.yaml", output_dir=str(tmp_path / "one"), model=model, train={"batch_size": 8})
    sharded = write_recipe("fsdp.yaml", output_dir=str(tmp_path / "fsdp"), model=model, train={"batch_size": 4})
    run_cli("--recipe", one, "--stage", "sparsify")
    proc = subprocess.run(_launch_fsdp(sharded), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lm_head.weight" in _assert_same_weights(tmp_path / "one", tmp_path / "fsdp")  # untied: its own
