"""Bridges (extract/bridges.py, extract/bridge_losses.py): the residual stream read and written through
hooks on every family, identity bridges, each loss term's gradient, and saving them."""
import copy

import pytest
import torch
from families import FAMILIES, VARIANTS, tiny_model

from extract.bridge_losses import bridge_metrics, bridged_losses, hybrid_keys, nmse
from extract.bridges import Bridges, BridgesError, recording, replacing, residual_sites, residual_stream


def _ids(model, batch=2, length=12, seed=0):
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_residual_before_each_attention_and_mlp_is_read_and_written_in_place(variant):
    model = tiny_model(variant)
    ids = _ids(model)
    sites = residual_sites(model)
    parallel = variant == "gpt_neox"  # the tiny GPT-NeoX reads attention and MLP off one stream
    assert [s.kind for s in sites] == (["attn"] if parallel else ["attn", "mlp"]) * model.config.num_hidden_layers
    seen = {}
    with torch.no_grad(), residual_stream(model, sites, recording(seen)):
        out = model(input_ids=ids, output_hidden_states=True)
    for site in sites:
        if site.kind == "attn":  # a block's input is the previous block's output
            torch.testing.assert_close(seen[site.key], out.hidden_states[site.layer], rtol=0, atol=0)
    # writing back what was read changes nothing; writing something else changes the logits downstream
    ramp = torch.linspace(-1, 1, model.config.hidden_size)  # not a constant, which a LayerNorm removes
    for site in sites:
        with torch.no_grad(), residual_stream(model, [site], replacing(site.key, lambda h: h.clone())):
            same = model(input_ids=ids).logits
        torch.testing.assert_close(same, out.logits, rtol=0, atol=1e-5)
        with torch.no_grad(), residual_stream(model, [site], replacing(site.key, lambda h: h + ramp)):
            moved = model(input_ids=ids).logits
        assert not torch.allclose(moved, out.logits, atol=1e-3), site.key


@pytest.mark.parametrize("variant", FAMILIES)
def test_identity_bridges_make_every_hybrid_pass_the_dense_model(variant):
    dense = tiny_model(variant)
    sparse = copy.deepcopy(dense)  # step 0: the sparse model starts as the dense one
    bridges = Bridges.for_models(dense, sparse)
    sites, ids = residual_sites(sparse), _ids(dense)
    with torch.no_grad():
        losses = bridged_losses(sparse, dense, bridges, sites, ids, hybrid_keys(bridges.keys, "all", 0, 0))
        metrics = bridge_metrics(sparse, dense, bridges, ids)
    for value in (losses.kl, losses.nmse, losses.kl_dense_to_sparse, losses.kl_sparse_to_dense):
        assert abs(float(value)) < 1e-6
    assert set(metrics) == set(bridges.keys)
    assert all(abs(v) < 1e-6 for row in metrics.values() for v in row.values())


def test_random_bridges_start_far_from_the_dense_model():
    dense = tiny_model("gpt2")
    torch.manual_seed(0)
    bridges = Bridges.for_models(dense, copy.deepcopy(dense), init="random")
    with torch.no_grad():
        losses = bridged_losses(copy.deepcopy(dense), dense, bridges, residual_sites(dense), _ids(dense),
                                hybrid_keys(bridges.keys, "all", 0, 0))
    assert float(losses.nmse) > 0.5 and float(losses.kl_dense_to_sparse) > 1e-3


def test_each_term_reaches_only_what_it_should():
    """NMSE: every encoder, decoder and the sparse model. Dense->sparse KL at site i: encoder i and the
    sparse model after it, no decoder. Sparse->dense KL: decoder i and the sparse model before it, no
    encoder. The frozen dense model: nothing."""
    dense = tiny_model("gpt2").requires_grad_(False)
    sparse = tiny_model("gpt2", seed=1)
    bridges = Bridges.for_models(dense, sparse, init="random")
    sites, ids, key = residual_sites(sparse), _ids(dense), "1.attn"

    def reached(module) -> set[str]:
        return {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}

    def grads(term: str) -> tuple[set[str], set[str]]:
        sparse.zero_grad(set_to_none=True)
        bridges.zero_grad(set_to_none=True)
        getattr(bridged_losses(sparse, dense, bridges, sites, ids, ([key], [key])), term).backward()
        return reached(sparse), reached(bridges)

    layer0, layer1 = "transformer.h.0.", "transformer.h.1."
    model_grads, bridge_grads = grads("nmse")
    assert bridge_grads == {n for n, _ in bridges.named_parameters()} and layer0 + "attn.c_attn.weight" in model_grads
    model_grads, bridge_grads = grads("kl_dense_to_sparse")
    assert bridge_grads == {"encoders.1_attn.weight", "encoders.1_attn.bias"}
    assert not any(n.startswith(layer0) for n in model_grads) and layer1 + "attn.c_attn.weight" in model_grads
    model_grads, bridge_grads = grads("kl_sparse_to_dense")
    assert bridge_grads == {"decoders.1_attn.weight", "decoders.1_attn.bias"}
    assert layer0 + "mlp.c_fc.weight" in model_grads and not any(n.startswith(layer1) for n in model_grads)
    assert all(p.grad is None for p in dense.parameters())


def test_sampled_sites_are_fixed_by_seed_and_step_and_cover_every_site():
    keys = [f"{layer}.{kind}" for layer in range(4) for kind in ("attn", "mlp")]
    assert hybrid_keys(keys, "sampled", 0, 7) == hybrid_keys(keys, "sampled", 0, 7)
    drawn = {k for step in range(200) for side in hybrid_keys(keys, "sampled", 0, step) for k in side}
    assert drawn == set(keys)
    assert hybrid_keys(keys, "all", 0, 3) == (keys, keys)


def test_abstopk_keeps_the_largest_magnitudes_per_position():
    from extract.bridges import abs_topk

    x = torch.tensor([[3.0, -5.0, 1.0, 0.5], [0.1, 0.2, -0.3, 4.0]])
    assert torch.equal(abs_topk(x, 2), torch.tensor([[3.0, -5.0, 0.0, 0.0], [0.0, 0.0, -0.3, 4.0]]))
    assert abs_topk(x, None) is x


def test_nmse_is_one_for_predicting_the_mean():
    target = torch.randn(3, 5, 8)
    mean = target.reshape(-1, 8).mean(0).expand_as(target)
    assert float(nmse(mean, target)) == pytest.approx(1.0, rel=1e-5)
    assert float(nmse(target, target)) == 0.0


def test_bridges_save_and_load_and_refuse_a_model_they_do_not_fit(tmp_path):
    from extract.bridges import check_fits

    dense = tiny_model("llama")
    bridges = Bridges.for_models(dense, dense, topk=5, init="random")
    bridges.save(tmp_path)
    loaded = Bridges.load(tmp_path)
    assert loaded.topk == 5 and loaded.keys == bridges.keys
    for (name, a), (_, b) in zip(bridges.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    check_fits(loaded, dense)
    with pytest.raises(BridgesError, match="width"):
        check_fits(loaded, tiny_model("llama", hidden_size=32, num_attention_heads=4))
    with pytest.raises(BridgesError, match="no bridges"):
        Bridges.load(tmp_path / "elsewhere")
    (tmp_path / "bridges.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BridgesError, match="do not load"):
        Bridges.load(tmp_path)


@pytest.mark.slow
def test_a_bridged_run_saves_its_bridges_and_resumes_bit_identically(write_recipe, tmp_path):
    import json
    import shutil

    from conftest import run_cli
    from safetensors.torch import load_file

    recipe = write_recipe(train={"steps": 12, "checkpoint_every": 4, "eval_every": 12, "log_every": 2},
                          bridges={"enabled": True, "topk": 16})
    run_cli("--recipe", recipe, "--stage", "sparsify")
    model_dir = tmp_path / "out" / "model"
    first = {name: load_file(model_dir / name) for name in ("model.safetensors", "bridges.safetensors")}
    assert json.loads((model_dir / "bridges.json").read_text())["topk"] == 16
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert all(row["bridge_nmse"] >= 0 and row["bridge_kl_sparse_to_dense"] >= 0 for row in log if "ce" in row)
    assert log[0]["bridge_nmse"] > 0  # AbsTopK at 16 of 32 channels: the identity encoder is not exact
    shutil.rmtree(model_dir)  # the rerun resumes from the step-8 checkpoint
    assert "resuming from" in run_cli("--recipe", recipe, "--stage", "sparsify").stdout
    for name, weights in first.items():
        again = load_file(model_dir / name)
        assert weights.keys() == again.keys()
        for key in weights:
            assert torch.equal(weights[key], again[key]), (name, key)


@pytest.mark.slow
def test_the_embedded_model_with_bridges_reports_and_reloads_each_circuits_transfer(tmp_path):
    """Sparsify the embedded model with bridges (few steps, a low lr: the sparse model still solves the
    task), prune one task from both models: the report, the card and the page show the bridges' fit and
    the circuit's transfer against its random control, and `load_circuit(...).transfer()` recomputes it."""
    import json

    from conftest import run_cli

    from extract import load_circuit

    out = tmp_path / "run"
    run_cli("--recipe", "tiny-python-bridges", f"output_dir={out}", "train.steps=4", "train.checkpoint_every=2",
            "train.eval_every=4", "optim.lr=1e-5", "sparsity.target_density=0.5", "sparsity.embedding_density=null",
            "tasks=[while_return_true]", "prune.train_pairs=100", "prune.validation_pairs=20", "prune.test_pairs=20",
            "prune.steps=30", "prune.random_model_control=false", "prune.nonsense_control=false",
            "prune.attribution_baseline=false", "prune.random_draws=1", "eval.quote_examples=0",
            "data.heldout_blocks=4")
    report = json.loads((out / "report.json").read_text())
    assert set(report["bridges"]) == {f"{layer}.{kind}" for layer in range(4) for kind in ("attn", "mlp")}
    reported = report["transfer"]["while_return_true"]
    assert reported["per_site"]["0.attn"] == 0.0  # before every node: no edit reaches the embeddings
    assert reported["random_draws"] == 10 and 0 < reported["fraction"] <= 1.5
    for page in ("report.md", "model/README.md", "report.html"):
        text = (out / page).read_text()
        assert "Bridges" in text and "while_return_true: the sparse circuit" in text, page
    recomputed = load_circuit(out, "while_return_true").transfer()
    assert recomputed["site"] == reported["site"]
    assert recomputed["fraction"] == pytest.approx(reported["fraction"], abs=1e-6)
    assert recomputed["random_mean"] == pytest.approx(reported["random_mean"], abs=1e-6)


@pytest.mark.parametrize("multiplier", [2, 3])
def test_a_widened_model_and_its_identity_bridges_compute_the_dense_model_at_step_0(multiplier):
    from extract.widen import widen

    dense = tiny_model("gpt2")
    wide = widen(dense, multiplier).eval()
    assert wide.config.n_embd == multiplier * dense.config.n_embd
    assert wide.config.n_inner == multiplier * dense.config.n_inner
    ids = _ids(dense)
    with torch.no_grad():
        torch.testing.assert_close(wide(input_ids=ids).logits, dense(input_ids=ids).logits, rtol=0, atol=1e-5)
        bridges = Bridges.for_models(dense, wide)
        losses = bridged_losses(wide, dense, bridges, residual_sites(wide), ids, hybrid_keys(bridges.keys, "all", 0, 0))
    for value in (losses.kl, losses.kl_dense_to_sparse, losses.kl_sparse_to_dense):
        assert abs(float(value)) < 1e-6
    assert float(losses.nmse) < 1e-6  # the encoder predicts the wider stream, mean channels included


def test_the_extra_width_of_a_widened_model_gets_gradient_everywhere():
    """Zeros on both sides of the extra neurons, head channels and residual channels would be a saddle:
    no gradient ever, dead width. The extra width's writes get gradient at step 0 (its reads are
    random); after one step, so do the weights that read it."""
    from extract.widen import widen

    dense = tiny_model("gpt2")
    d, d_mlp = dense.config.n_embd, dense.config.n_inner
    hd = d // dense.config.n_head
    wide = widen(dense, 2)
    ids = _ids(dense)
    wide(input_ids=ids, labels=ids).loss.backward()
    for block in wide.transformer.h:
        assert block.mlp.c_proj.weight.grad[d_mlp:].abs().sum() > 0
        assert block.attn.c_attn.weight.grad[:, 2 * d + hd:2 * d + 2 * hd].abs().sum() > 0  # head 0's extra keys
    torch.optim.SGD(wide.parameters(), lr=0.1).step()
    wide.zero_grad()
    wide(input_ids=ids, labels=ids).loss.backward()
    for block in wide.transformer.h:
        grads = {"mlp in": block.mlp.c_fc.weight.grad[:, d_mlp:], "mlp out": block.mlp.c_proj.weight.grad[d_mlp:],
                 "extra residual read": block.mlp.c_fc.weight.grad[d:],
                 "keys": block.attn.c_attn.weight.grad[:, 2 * d:4 * d], "attention out": block.attn.c_proj.weight.grad}
        for what, grad in grads.items():
            assert grad.abs().sum() > 0, what
        extra_rows = block.attn.c_proj.weight.grad.abs().sum(1) > 0
        assert extra_rows.sum() > d  # the extra value channels' output rows learn too


def test_widening_leaves_the_random_generator_and_refuses_other_families():
    from extract.widen import WidenError, widen

    dense = tiny_model("gpt2")
    torch.manual_seed(5)
    widen(dense, 2)
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(1), after)  # the data order of a widened run is the plain run's
    assert widen(tiny_model("llama"), 1) is not None
    with pytest.raises(WidenError, match="only GPT-2"):
        widen(tiny_model("llama"), 2)


@pytest.mark.slow
def test_a_widened_bridged_run_saves_a_wider_model_with_bridges_of_both_widths(write_recipe, tmp_path):
    import json

    from conftest import run_cli
    from transformers import AutoModelForCausalLM

    recipe = write_recipe(train={"steps": 6, "checkpoint_every": 3, "eval_every": 6},
                          model={"width_multiplier": 2}, bridges={"enabled": True})
    run_cli("--recipe", recipe, "--stage", "sparsify")
    run_cli("--recipe", recipe, "--stage", "report")
    model_dir = tmp_path / "out" / "model"
    assert AutoModelForCausalLM.from_pretrained(model_dir).config.n_embd == 64  # the tiny model is 32 wide
    assert json.loads((model_dir / "bridges.json").read_text())["sparse_width"] == 64
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["kl"] < 1e-3  # step 1 ran the dense function, only the first projection moved it
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "fidelity" not in report and set(report["bridges"]) == {"0.attn", "0.mlp", "1.attn", "1.mlp"}


TWO_PROCESS_SCRIPT = """
import sys
from safetensors.torch import save_file
import extract.train as train_module
from extract.recipe import load_recipe

recipe = load_recipe(sys.argv[1])[0]
accelerator = train_module.make_accelerator(recipe)
saved = train_module.save_final

def save_each_replica(run):  # every process's own bridges and model, to compare across processes
    rank = run.accelerator.process_index
    for name, module in (("bridges", run.bridges), ("model", run.raw_model)):
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items() if "lm_head" not in k},
                  f"{recipe.output_dir}/{name}-rank{rank}.safetensors")
    return saved(run)

train_module.save_final = save_each_replica
train_module.train(recipe, accelerator)
"""


@pytest.mark.slow
def test_two_processes_train_one_set_of_bridges(write_recipe, tmp_path):
    """Under DDP (two gloo processes) the bridges sit outside Accelerate's wrapper and their gradients
    are averaged by hand: both processes must end with the same bridges, and the same model."""
    import subprocess
    import sys

    from conftest import ROOT
    from safetensors.torch import load_file

    recipe = write_recipe(train={"steps": 6, "checkpoint_every": 6, "eval_every": 6}, bridges={"enabled": True})
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", "29537", str(script), str(recipe)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("bridges", "model"):
        first, second = (load_file(tmp_path / "out" / f"{name}-rank{rank}.safetensors") for rank in (0, 1))
        for key in first:
            assert torch.equal(first[key], second[key]), (name, key)
    trained = load_file(tmp_path / "out" / "bridges-rank0.safetensors")
    assert not torch.equal(trained["encoders.0_attn.weight"], torch.eye(32))  # the bridges did train


def test_bridges_train_at_their_own_learning_rate_without_the_sharkfin():
    from extract.recipe import load_recipe
    from extract.sparsifier import Sparsifier
    from extract.train import bridges_learning_rate, build_optimizer, learning_rate

    recipe = load_recipe("tiny-python-bridges", ["bridges.lr=0.002"])[0]
    dense = tiny_model("gpt2")
    bridges = Bridges.for_models(dense, dense)
    optimizer = build_optimizer(dense, recipe.optim, torch.device("cpu"), bridges)
    marked = [g for g in optimizer.param_groups if g.get("bridges")]
    assert len(marked) == 1 and marked[0]["weight_decay"] == 0.0
    assert {id(p) for p in marked[0]["params"]} == {id(p) for p in bridges.parameters()}
    sparsifier = Sparsifier(dense, recipe.sparsity, recipe.train.steps, "tiny")
    step = recipe.train.steps // 4  # in the anneal: the model's lr carries the sharkfin factor, the bridges' not
    model_lr = learning_rate(recipe, step, sparsifier.before_step(step))
    assert bridges_learning_rate(recipe, step) == pytest.approx(0.002 * model_lr / (
        recipe.optim.lr * sparsifier.before_step(step).lr_factor))
