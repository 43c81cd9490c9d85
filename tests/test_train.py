"""End-to-end sparsification on a tiny real GPT-2, through the command line a user runs."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from extract.arch import sparse_tensors
from extract.sparsity import measured_density
from tests.conftest import ROOT, RUN, run_cli

REPORT_FIELDS = {
    "dense": {"model": str, "heldout_loss": float, "params": int},
    "sparse": {"path": str, "heldout_loss": float, "kl_to_dense": float, "density": float,
               "nonzero_params": int, "tokens": int, "wall_seconds": float},
}


def _weights(model_dir):
    return load_file(model_dir / "model.safetensors")


def loaded_dense_dir(recipe_path):
    from extract.recipe import load_recipe

    return load_recipe(str(recipe_path))[0].model.name_or_path


def _check_fidelity(report: dict, sparse, dense, out, stdout: str) -> None:
    """report.json's fidelity against the saved weights, recomputed here for each tensor; shown in every report."""
    fidelity = report["fidelity"]
    rows = {row["tensor"]: row for row in fidelity["weights"]["tensors"]}
    dense_params = dict(dense.named_parameters())
    assert set(rows) == {t.name for t in sparse_tensors(sparse)}
    for tensor in sparse_tensors(sparse):
        kept = tensor.param.detach().flatten() != 0
        d = dense_params[tensor.name].detach().flatten()
        threshold = d.abs().sort(descending=True).values[int(kept.sum()) - 1]  # the count-th largest magnitude
        among = float((d.abs()[kept] >= threshold).float().mean())
        assert rows[tensor.name]["among_dense_largest"] == pytest.approx(among)
        assert rows[tensor.name]["sign_agreement"] == pytest.approx(
            float((tensor.param.detach().flatten()[kept].sign() == d[kept].sign()).float().mean()))
    sites = fidelity["representation"]["sites"]
    assert [s["site"] for s in sites] == ["embeddings"] + [f"block {i}" for i in range(dense.config.n_layer)]
    assert all(-1 < s["r2"] <= 1 for s in sites)
    share = f"{fidelity['weights']['among_dense_largest']:.1%} of the sparse model's nonzeros"
    for page in ("report.md", "model/README.md", "report.html"):
        assert share in (out / page).read_text().replace("**", ""), page
    assert f"fidelity: Weights: {share}" in stdout
    units = fidelity["weights"]["units_at_minimum"]  # recounted from the saved weights (min_per_unit 2 here)
    counts = [(t.param.detach() != 0).sum(dim=1 - t.unit_axis) for t in sparse_tensors(sparse)
              if t.unit_axis is not None]
    assert units["units"] == sum(len(c) for c in counts)
    assert units["at_minimum"] == sum(int((c <= 2).sum()) for c in counts)
    assert f"of the {units['units']:,} neurons and channels keep only" in (out / "report.md").read_text()


@pytest.mark.slow
def test_sparsify_end_to_end_and_exact_round_trip(write_recipe, tmp_path):
    recipe = write_recipe(eval={"quote_examples": 40})
    proc = run_cli("--recipe", recipe)
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    for section, fields in REPORT_FIELDS.items():
        for key, kind in fields.items():
            assert isinstance(report[section][key], kind), (section, key, report[section].get(key))
    assert report["recipe"] == str(recipe)
    assert "sparse:" in proc.stdout and "density" in proc.stdout

    # plain transformers, no project code, loads the model; every zero survives exactly
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    saved = _weights(out / "model")
    for name, tensor in model.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name
    density, nonzero, total = measured_density(sparse_tensors(model))
    assert density == pytest.approx(report["sparse"]["density"])
    # at most the target (ceil per tensor), and really sparse
    assert density <= 0.125 * 1.02
    assert report["sparse"]["tokens"] == 12 * 4 * 32
    assert 0 < report["sparse"]["kl_to_dense"] < 10
    assert len(list(out.glob("model/*.safetensors"))) == 1 and not list(out.glob("model/*.bin"))
    assert (out / "recipe.yaml").is_file() and (out / "training.png").stat().st_size > 1000
    card = (out / "model" / "README.md").read_text()
    assert "library_name: transformers" in card and f"{report['sparse']['density']:.5f}" in card
    assert "base_model" not in card  # a local directory is not a Hub id
    assert (out / "model" / "recipe.yaml").is_file()
    _check_fidelity(report, model, AutoModelForCausalLM.from_pretrained(loaded_dense_dir(recipe)), out, proc.stdout)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "heldout_loss" in r] == [6, 12]
    assert log[-1]["density"] == pytest.approx(0.125)
    # the loop ran the schedule: each logged step's learning rate and density are the sparsifier's
    from extract.recipe import load_recipe
    from extract.sparsifier import Sparsifier
    from extract.train import learning_rate

    loaded = load_recipe(str(recipe))[0]
    sparsifier = Sparsifier(AutoModelForCausalLM.from_pretrained(out / "model"), loaded.sparsity, loaded.train.steps)
    for row in log:
        densities = sparsifier.before_step(row["step"] - 1)
        assert row["density"] == pytest.approx(densities.overall, rel=1e-6), row
        if "lr" in row:
            assert row["lr"] == pytest.approx(learning_rate(loaded, row["step"] - 1, densities), rel=1e-6), row

    # runs compare on one picture; a directory without a training log is named
    compare = [sys.executable, str(ROOT / "scripts" / "compare_runs.py")]
    subprocess.run([*compare, f"tiny={out}", "--out", str(tmp_path / "runs.png")], check=True, cwd=ROOT)
    assert (tmp_path / "runs.png").stat().st_size > 1000
    bad = subprocess.run([*compare, f"none={tmp_path}", "--out", str(tmp_path / "x.png")], capture_output=True,
                         text=True, cwd=ROOT)
    assert bad.returncode == 2 and "with a train_log.jsonl in it" in bad.stderr

    # rerunning a finished run does no training and rewrites the same report
    again = run_cli("--recipe", recipe)
    assert "skipping training" in again.stdout
    assert json.loads((out / "report.json").read_text())["sparse"]["density"] == report["sparse"]["density"]


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(write_recipe, tmp_path):
    steps = {"steps": 60, "checkpoint_every": 4, "eval_every": 30}
    reference = write_recipe("reference.yaml", output_dir=str(tmp_path / "reference"), train=steps)
    run_cli("--recipe", reference, "--stage", "sparsify")

    recipe = write_recipe("killed.yaml", output_dir=str(tmp_path / "killed"), train=steps)
    ckpts = tmp_path / "killed" / "checkpoints"
    proc = subprocess.Popen([sys.executable, str(RUN), "--recipe", str(recipe), "--stage", "sparsify"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (ckpts.is_dir() and any(p.name == "step-8" for p in ckpts.iterdir())):
        assert proc.poll() is None, "run ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model").exists()  # nothing that looks finished

    resumed = run_cli("--recipe", recipe, "--stage", "sparsify")
    assert "resuming from" in resumed.stdout
    a, b = _weights(tmp_path / "reference" / "model"), _weights(tmp_path / "killed" / "model")
    assert a.keys() == b.keys()
    for name in a:  # eager on a CPU: bit-identical (docs/reproducibility.md)
        assert torch.equal(a[name], b[name]), name
    state = json.loads((tmp_path / "killed" / "model" / "trainer_state.json").read_text())
    assert state["step"] == 60 and state["tokens"] == 60 * 4 * 32


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_error_and_keeps_checkpoints(write_recipe, tmp_path, monkeypatch):
    from accelerate.state import AcceleratorState

    import extract.train as train_module
    from extract.recipe import load_recipe

    real = train_module.training_losses
    calls = {"n": 0}

    def poisoned(model, batch, teacher=None, hidden=False):
        ce, kl, hidden_error = real(model, batch, teacher, hidden)
        calls["n"] += 1 if model.training else 0
        return (ce * float("nan"), kl, hidden_error) if calls["n"] == 7 else (ce, kl, hidden_error)

    monkeypatch.setattr(train_module, "training_losses", poisoned)
    recipe, _ = load_recipe(str(write_recipe()))
    try:
        with pytest.raises(train_module.NonFiniteLossError, match=r"loss is nan at step 7.*step-4.*optim.lr"):
            train_module.train(recipe, train_module.make_accelerator(recipe))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert (tmp_path / "out" / "checkpoints" / "step-4" / "trainer_state.json").is_file()
    assert not (tmp_path / "out" / "model").exists()


@pytest.mark.slow
def test_two_process_gloo_run_gives_the_same_density(write_recipe, tmp_path):
    one = write_recipe("one.yaml", output_dir=str(tmp_path / "one"))
    two = write_recipe("two.yaml", output_dir=str(tmp_path / "two"))
    run_cli("--recipe", one)
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
         str(RUN), "--recipe", str(two)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "two" / "model" / "trainer_state.json").read_text())
    # two connected processes (not two unconnected single-process runs)
    assert state["processes"] == 2 and state["distributed_type"] == "MULTI_CPU"
    report_one = json.loads((tmp_path / "one" / "report.json").read_text())
    report_two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report_two["sparse"]["density"] == pytest.approx(report_one["sparse"]["density"], rel=1e-3)
    assert report_two["sparse"]["tokens"] == 2 * report_one["sparse"]["tokens"]


@pytest.mark.slow
def test_lora_adapter_is_merged_into_the_dense_input(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from extract.models import load_model
    from extract.recipe import ModelConfig

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # a trained adapter: nonzero B changes the output
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    ids = torch.randint(0, 2048, (2, 16))
    expected = peft_model.eval()(input_ids=ids).logits

    merged = load_model(ModelConfig(name_or_path=str(adapter_dir)))
    assert type(merged).__name__ == "GPT2LMHeadModel"
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert all(p.requires_grad for p in merged.parameters())  # PEFT froze the base; sparsifying trains all of it
    torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-3)


@pytest.mark.slow
def test_missing_model_is_named(write_recipe, tmp_path):
    recipe = write_recipe(model={"name_or_path": str(tmp_path / "no-such-model")})
    proc = run_cli("--recipe", recipe, check=False)
    assert proc.returncode == 1
    assert "model.name_or_path" in proc.stderr and "no-such-model" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_output_dir_of_another_recipe_is_not_overwritten(write_recipe, tmp_path):
    run_cli("--recipe", write_recipe(), "--stage", "sparsify", "train.steps=4")
    proc = run_cli("--recipe", write_recipe(), "train.steps=8", check=False)
    assert proc.returncode == 1 and "differs in train.steps" in proc.stderr
    # a copied run is the same run: its new place is not a difference
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "out", moved)
    run_cli("--recipe", write_recipe(), "--stage", "sparsify", "train.steps=4", f"output_dir={moved}")


@pytest.mark.slow
def test_gpt2_small_recipe_runs_offline_with_the_readme_overrides(gpt2_tokenizer_dir, tmp_path):
    """The gpt2-small recipe's own settings (real GPT-2 vocabulary, gradient accumulation, its prune
    section) with a tiny local model in place of the Hub one and the README's offline overrides for
    the data (the shipped corpus instead of the streamed Hub dataset)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    assert len(tokenizer) == 50257
    model_dir = tmp_path / "gpt2-tiny"
    config = GPT2Config(n_layer=1, n_embd=32, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "out"
    readme = [f"model.name_or_path={model_dir}", "data.dataset=embedded", "data.text_column=text",
              "data.streaming=false"]
    run_cli("--recipe", "gpt2-small", *readme, "data.block_size=32", "data.heldout_blocks=4", "train.steps=6",
            "train.batch_size=2", "train.eval_every=3", "train.checkpoint_every=3", "train.compile=false",
            "eval.quote_examples=0", "tasks=[single_double_quote]", "prune.mean_blocks=4", f"output_dir={out}",
            env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    report = json.loads((out / "report.json").read_text())
    # the built-in task ran through the real GPT-2 vocabulary (a random model does not solve it)
    assert report["tasks"]["single_double_quote"]["sparse"]["solved"] is False
    assert report["sparse"]["tokens"] == 6 * 2 * 2 * 32  # steps x batch x accumulation x block
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["density"] == pytest.approx(1 / 64)
    # embeddings reach 1/64; width-32 matrices stop at the per-unit floor of 4/32
    weights = _weights(out / "model")
    wte = weights["transformer.wte.weight"]
    assert int(torch.count_nonzero(wte)) <= math.ceil(wte.numel() / 64)
    assert report["sparse"]["density"] < 0.13


@pytest.mark.slow
def test_compiled_training_reaches_the_target_density(write_recipe, tmp_path):
    """torch.compile wraps the model; the projection must still find and sparsify every tensor."""
    recipe = write_recipe(train={"steps": 3, "compile": True, "eval_every": 3, "checkpoint_every": 10},
                          sparsity={"anneal_fraction": 0.0})
    run_cli("--recipe", recipe, "--stage", "sparsify")
    weights = _weights(tmp_path / "out" / "model")
    assert not any(name.startswith("_orig_mod") for name in weights)
    wte = weights["transformer.wte.weight"]
    assert int(torch.count_nonzero(wte)) <= math.ceil(wte.numel() * 0.125)


def test_heldout_blocks_are_spread_over_the_split():
    import datasets

    from extract.data import heldout_tensor

    blocks = datasets.Dataset.from_dict({"input_ids": [[i, i] for i in range(100)]})
    picked = heldout_tensor(blocks, 4)[:, 0].tolist()
    assert picked == [0, 25, 50, 75]
    assert heldout_tensor(blocks, 500).shape == (100, 2)  # never more than there is


def test_token_losses_are_cross_entropy_and_kl_to_the_teacher(tiny_model_dir):
    import torch.nn.functional as F

    from extract.losses import token_losses

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    other = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        other.transformer.h[0].mlp.c_fc.weight.mul_(3.0)
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    logits = model(input_ids=ids).logits[:, :-1]
    expected_ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))

    with torch.no_grad():
        ce, kl = token_losses(model, ids, teacher=model)
    assert torch.allclose(ce, expected_ce, atol=1e-5)
    assert abs(float(kl)) < 1e-5  # a model is its own teacher: nothing to distil

    teacher_logp = F.log_softmax(other(input_ids=ids).logits[:, :-1], -1)
    student_logp = F.log_softmax(logits, -1)
    expected_kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1).mean()
    with torch.no_grad():
        _, kl = token_losses(model, ids, teacher=other)
    assert float(kl) > 1e-4 and torch.allclose(kl, expected_kl, atol=1e-5)
    assert token_losses(model, ids)[1] is None



class _FixedLogits(torch.nn.Module):
    """A stand-in model whose logits are given: one position per row of `logits`, any input ids."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor([logits]).log())

    def forward(self, input_ids):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.logits)


def test_the_distillation_loss_is_kl_from_the_teacher_to_the_student():
    """Far-apart distributions, where the two directions of KL differ (near each other, as random
    models are, they agree to second order): teacher (0.9, 0.1), student (0.5, 0.5) gives
    KL(teacher || student) = 0.368 and KL(student || teacher) = 0.511. Its gradient in the student's
    logits is student - teacher."""
    from extract.losses import token_losses

    student = _FixedLogits([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])  # two positions are scored, the last is not
    teacher = _FixedLogits([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8]])
    _, kl = token_losses(student, torch.tensor([[0, 1, 0]]), teacher=teacher)
    assert float(kl.detach()) == pytest.approx(0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5), rel=1e-5)
    kl.backward()
    expected = torch.tensor([[[0.5 - 0.9, 0.5 - 0.1]] * 2 + [[0.0, 0.0]]]) / 2  # a mean over two positions
    torch.testing.assert_close(student.logits.grad, expected, rtol=1e-5, atol=1e-7)


def test_each_document_key_lands_on_one_side_of_the_split(tmp_path):
    """A file cut into several rows (one key, different texts) is wholly train or wholly held out, and
    every row is on exactly one side: held-out text never leaks into training."""
    from extract.data import CorpusSpec, is_heldout, load_text_splits

    corpus = tmp_path / "chunks.jsonl"
    rows = [{"path": f"pkg/module{i}.py", "text": f"# part {part} of module {i}\nx = {i * 10 + part}\n"}
            for i in range(40) for part in range(3)]
    corpus.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    splits = load_text_splits(CorpusSpec(dataset=str(corpus), key_column="path", heldout_fraction=0.4))
    train, heldout = list(splits["train"]), list(splits["heldout"])
    assert sorted(r["text"] for r in train + heldout) == sorted(r["text"] for r in rows)
    train_keys, heldout_keys = {r["path"] for r in train}, {r["path"] for r in heldout}
    assert train_keys and heldout_keys and not train_keys & heldout_keys
    assert all(is_heldout(key, 0.4) for key in heldout_keys) and not any(is_heldout(k, 0.4) for k in train_keys)


@pytest.fixture
def accelerate_state():
    """Accelerate's process state, which its optimizer wrapper reads; reset after the test."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    Accelerator(cpu=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_every_stage_gets_the_same_thread_count(write_recipe, monkeypatch):
    """The thread count is set with the accelerator, which every stage makes: a report rerun on its own
    (no training in its process) sums in the order the run's did. It was set by training alone, and a
    run killed after training wrote another report, last digits apart, on CI's cores (issue 30's CI)."""
    from accelerate.state import AcceleratorState

    from extract.recipe import load_recipe
    from extract.train import make_accelerator

    recipe = load_recipe(str(write_recipe()))[0]
    before = torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    try:
        torch.set_num_threads(1)
        make_accelerator(recipe)
        assert torch.get_num_threads() == 6  # one process: all the cores
    finally:
        torch.set_num_threads(before)
        AcceleratorState._reset_state(reset_partial_state=True)


def _one_step_update(model_dir, scaler, unscale_first: bool) -> torch.Tensor:
    """The weight change of one training step through apply_gradients, optionally under a GradScaler
    (as Accelerate's fp16 runs it: a scaled backward, then an AcceleratedOptimizer whose step
    unscales, skips on overflow and updates the scale)."""
    from accelerate.optimizer import AcceleratedOptimizer

    from extract.recipe import OptimConfig
    from extract.train import apply_gradients

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir).train()
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.95), eps=0.1, weight_decay=0.0)
    if scaler is not None:
        optimizer = AcceleratedOptimizer(optimizer, device_placement=False, scaler=scaler)
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    loss = model(input_ids=ids, labels=ids).loss
    (scaler.scale(loss) if scaler is not None else loss).backward()
    before = torch.cat([p.detach().flatten().clone() for p in params])
    apply_gradients(optimizer, params, OptimConfig(), scaler if unscale_first else None)
    return torch.cat([p.detach().flatten() for p in params]) - before


def test_fp16_gradients_are_unscaled_before_the_rms_rescale(tiny_model_dir, accelerate_state):
    """Under fp16 the gradients carry the GradScaler's 2**16 when the step begins. Rescaled to RMS 1
    as they are, then unscaled by the step, Adam (eps 0.1) would move the weights 2**16 times too
    little; unscaled first, the step is the one float32 training takes."""
    plain = _one_step_update(tiny_model_dir, None, unscale_first=True)
    scaled = _one_step_update(tiny_model_dir, torch.amp.GradScaler("cpu", init_scale=2.0**16), unscale_first=True)
    assert float(plain.abs().max()) > 1e-3
    torch.testing.assert_close(scaled, plain, rtol=1e-4, atol=1e-7)
    # the old order, rescale and then let the step unscale: the average weight moved ~9,000x less
    late = _one_step_update(tiny_model_dir, torch.amp.GradScaler("cpu", init_scale=2.0**16), unscale_first=False)
    assert float(late.abs().mean()) < float(plain.abs().mean()) / 1000


def test_fp16_step_with_overflowing_gradients_is_skipped(tiny_model_dir, accelerate_state):
    """An inf gradient under the scaler: no rescale can hide it, the step is skipped, the scale drops."""
    from accelerate.optimizer import AcceleratedOptimizer

    from extract.recipe import OptimConfig
    from extract.train import apply_gradients

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
    params = list(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    optimizer = AcceleratedOptimizer(torch.optim.AdamW(params, lr=1e-2), device_placement=False, scaler=scaler)
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    scaler.scale(model(input_ids=ids, labels=ids).loss).backward()
    params[0].grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in params]
    apply_gradients(optimizer, params, OptimConfig(), scaler)
    assert all(torch.equal(a, p) for a, p in zip(before, params))
    assert scaler.get_scale() < 2.0**16


@pytest.mark.slow
def test_gradient_checkpointing_trains_the_same_weights(write_recipe, tmp_path, monkeypatch):
    from accelerate.state import AcceleratorState

    import extract.train as train_module
    from extract.recipe import load_recipe
    from extract.train import make_accelerator, train

    real, seen = train_module.training_losses, set()

    def spy(model, batch, teacher=None, hidden=False):  # which setting the model trained with
        if model.training:
            seen.add(model.is_activation_checkpointing)
        return real(model, batch, teacher, hidden=hidden)

    monkeypatch.setattr(train_module, "training_losses", spy)
    weights = {}
    for checkpointing in (False, True):
        seen.clear()
        out = tmp_path / f"checkpointing-{checkpointing}"
        recipe, _ = load_recipe(str(write_recipe()), [f"output_dir={out}", "train.steps=4", "train.eval_every=4",
                                                      f"train.gradient_checkpointing={str(checkpointing).lower()}"])
        try:
            train(recipe, make_accelerator(recipe))
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
        assert seen == {checkpointing}
        weights[checkpointing] = _weights(out / "model")
        assert not AutoModelForCausalLM.from_pretrained(out / "model").is_activation_checkpointing  # saved plain
    for name, tensor in weights[False].items():
        torch.testing.assert_close(weights[True][name], tensor, rtol=0, atol=1e-5, msg=name)


def test_the_learning_rate_has_warmup_decay_and_the_sharkfin_factor():
    from extract.recipe import load_recipe
    from extract.sparsifier import Sparsifier
    from extract.train import learning_rate
    from tests.families import tiny_model

    recipe = load_recipe("tiny-python", ["train.steps=1000", "optim.warmup_fraction=0.01", "optim.lr=0.1",
                                         "sparsity.anneal_shape=linear", "sparsity.target_density=0.0625",
                                         "sparsity.embedding_density=null", "sparsity.sharkfin_power=0.5"])[0]
    sparsifier = Sparsifier(tiny_model("gpt2"), recipe.sparsity, recipe.train.steps)

    def schedule(step):
        densities = sparsifier.before_step(step)
        return learning_rate(recipe, step, densities), densities.overall

    lr, density = schedule(249)  # a quarter through: half-way down a linear anneal over 50%
    assert density == pytest.approx(1 - 0.5 * (1 - 0.0625))
    decay = (1 - 249 / 1000) / 0.99
    assert lr == pytest.approx(0.1 * decay * (0.0625 / density) ** 0.5)  # sharkfin: small while dense
    lr, density = schedule(599)  # past the anneal: factor 1
    assert density == pytest.approx(0.0625) and lr == pytest.approx(0.1 * (1 - 599 / 1000) / 0.99)
    assert schedule(4)[0] == pytest.approx(0.1 * 4 / 10 * (0.0625 / schedule(4)[1]) ** 0.5)
    recipe.sparsity.sharkfin = False
    assert learning_rate(recipe, 249, Sparsifier(tiny_model("gpt2"), recipe.sparsity, 1000).before_step(249)
                         ) == pytest.approx(0.1 * decay)
    assert learning_rate(recipe, 249, None) == pytest.approx(0.1 * decay)  # dense pretraining: no sparsifier


@pytest.mark.parametrize("shape", ["linear", "log", "cubic"])
def test_the_logged_density_is_the_projected_one_at_every_step(shape):
    """With the embeddings at their own density, each step's per-tensor densities share out the logged
    overall density, so the projection keeps exactly that share of the weights (up to one weight per
    tensor of rounding) at every step, not only at the end. Annealing each tensor to its own final
    density instead (the rule before) misses it on the log schedule, where a^t is not linear in a."""
    from extract.recipe import SparsityConfig
    from extract.sparsifier import Sparsifier
    from extract.sparsity import density_at, measured_density
    from tests.families import tiny_model

    sparsity = SparsityConfig(target_density=1 / 16, embedding_density=1 / 8, min_per_unit=0, anneal_fraction=0.5,
                              anneal_shape=shape)
    sparsifier = Sparsifier(tiny_model("gpt2"), sparsity, steps=20)
    sizes = [t.param.numel() for t in sparsifier.tensors]
    worst_before = 0.0
    for step in range(20):
        densities = sparsifier.before_step(step)
        sparsifier.after_optimizer_step(densities)
        measured, _, total = measured_density(sparsifier.tensors)
        assert abs(measured - densities.overall) <= len(sizes) / total, (step, measured, densities.overall)
        each_to_its_own = sum(n * density_at((step + 1) / 20, final, 0.5, shape)
                              for n, final in zip(sizes, sparsifier.finals)) / total
        worst_before = max(worst_before, abs(each_to_its_own - densities.overall))
    assert measured == pytest.approx(1 / 16, abs=len(sizes) / total)
    assert (worst_before > 0.01) == (shape == "log"), worst_before


def test_apply_gradients_rescales_to_unit_rms_before_the_step():
    from extract.recipe import OptimConfig
    from extract.train import apply_gradients

    weight = torch.nn.Parameter(torch.zeros(4, 5))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    weight.grad = torch.full((4, 5), 5.0)
    apply_gradients(optimizer, [weight], OptimConfig(grad_rescale_rms=True, clip_grad_norm=None))
    torch.testing.assert_close(weight.detach(), torch.full((4, 5), -1.0))  # moved by grad / RMS, not grad
    assert weight.grad is None
    weight.grad = torch.full((4, 5), 5.0)
    apply_gradients(optimizer, [weight], OptimConfig(grad_rescale_rms=False, clip_grad_norm=None))
    torch.testing.assert_close(weight.detach(), torch.full((4, 5), -6.0))


def test_squarehead_is_each_blocks_normalised_error_and_trains_only_the_student(tiny_model_dir):
    from extract.losses import training_losses

    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval().requires_grad_(False)
    ids = torch.randint(0, student.config.vocab_size, (2, 16))
    _, _, same = training_losses(student, ids, teacher, hidden=True)
    assert float(same) < 1e-10  # the checkpoint matches itself
    with torch.no_grad():
        student.transformer.h[0].mlp.c_proj.weight.mul_(2.0)
        s_states = student(input_ids=ids, output_hidden_states=True).hidden_states
        t_states = teacher(input_ids=ids, output_hidden_states=True).hidden_states
    expected = sum(float((s - t).square().sum() / t.square().sum()) for s, t in zip(s_states[1:], t_states[1:]))
    ce, kl, hidden = training_losses(student, ids, teacher, hidden=True)
    assert float(hidden) == pytest.approx(expected / (len(s_states) - 1), rel=1e-5) and float(hidden) > 1e-4
    assert training_losses(student, ids, teacher)[2] is None  # off unless asked: no hidden states kept
    hidden.backward()
    assert student.transformer.h[0].mlp.c_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_squarehead_weight_falls_to_zero_at_the_end_of_the_anneal():
    from extract.recipe import load_recipe
    from extract.train import hidden_weight

    recipe = load_recipe("tiny-python", ["train.steps=300", "sparsity.anneal_fraction=0.5",
                                         "loss.hidden_weight=2.0"])[0]
    assert [hidden_weight(recipe, step) for step in (0, 75, 150, 299)] == pytest.approx([2.0, 1.0, 0.0, 0.0])
    recipe.loss.hidden_weight = 0.0
    assert hidden_weight(recipe, 0) == 0.0


def test_a_random_start_keeps_the_checkpoint_as_teacher_and_dense_loss(write_recipe, tmp_path, accelerate_state):
    """The bench_init control: the student is a fresh model of the checkpoint's shape, the teacher and
    the dense held-out loss are the checkpoint's, and the seed fixes the fresh weights."""
    from accelerate import Accelerator

    from extract.evaluation import heldout_metrics
    from extract.recipe import load_recipe
    from extract.train import setup

    def start(random_start: bool, seed: int = 1):  # (the tiny checkpoint is a fresh draw at seed 0)
        overrides = [f"model.random_start={random_start}", f"train.seed={seed}", "loss.ce_weight=0",
                     f"output_dir={tmp_path}/{random_start}-{seed}"]
        recipe = load_recipe(str(write_recipe()), overrides)[0]
        return setup(recipe, Accelerator(cpu=True))

    # one process draws the data order from torch's generator at the first batch: take it at once
    dense = start(False)
    dense_batch = next(dense.batches)
    control = start(True)
    control_batch = next(control.batches)
    again, other = start(True), start(True, seed=2)
    checkpoint = dict(dense.raw_model.named_parameters())
    fresh = dict(control.raw_model.named_parameters())
    assert all(torch.equal(p, checkpoint[n]) for n, p in control.teacher.named_parameters())
    assert not any(torch.equal(p, checkpoint[n]) for n, p in fresh.items() if p.dim() >= 2)
    assert all(torch.equal(p, fresh[n]) for n, p in again.raw_model.named_parameters())  # the seed decides
    assert not torch.equal(other.raw_model.lm_head.weight, control.raw_model.lm_head.weight)
    assert control.state.dense_heldout_loss == pytest.approx(dense.state.dense_heldout_loss)
    dense_loss = control.state.dense_heldout_loss
    assert dense_loss == pytest.approx(heldout_metrics(control.teacher, control.heldout)["loss"])
    assert heldout_metrics(control.raw_model, control.heldout)["loss"] != pytest.approx(dense_loss)
    assert torch.equal(control_batch, dense_batch)  # the fresh weights moved no generator: the same data order


@pytest.mark.slow
def test_refits_and_squarehead_train_to_exactly_the_top_k(write_recipe, tmp_path):
    """The issue 31 options in the loop: refits where the sparsifier says, every tensor at exactly its
    count at the end (the refit keeps the pattern), and a held-out loss that is a number."""
    from extract.projection import kept_count
    from extract.recipe import load_recipe
    from extract.sparsifier import Sparsifier

    recipe = write_recipe(sparsity={"refit_every": 3, "refit_blocks": 4}, loss={"hidden_weight": 1.0})
    proc = run_cli("--recipe", recipe, "--stage", "sparsify")
    assert [line.split(":")[0] for line in proc.stdout.splitlines() if "refitted" in line] == ["step 3", "step 6"]
    out = tmp_path / "out"
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    loaded = load_recipe(str(recipe))[0]
    sparsifier = Sparsifier(model, loaded.sparsity, loaded.train.steps)
    for tensor, density in zip(sparsifier.tensors, sparsifier.finals):
        assert int(torch.count_nonzero(tensor.param)) == kept_count(tensor.param.numel(), density), tensor.name
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert math.isfinite(log[-1]["heldout_loss"])
