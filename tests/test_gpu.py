"""The GPU path: everything that runs a model runs on the accelerator, with the CPU's results.

Skipped without CUDA. On a GPU machine: `python -m pytest -m gpu`. EXTRACT_TEST_DEVICE=cpu runs
them on the CPU instead, which checks the tests themselves where no GPU is lent.
"""
import copy
import json
import os

import pytest
import torch

from extract.arch import node_sites
from extract.circuits.edges import count_edges, list_edges
from extract.circuits.masks import NodeMask
from extract.circuits.sites import site_means
from tests.conftest import run_cli
from tests.families import FAMILIES, tiny_model

DEVICE = os.environ.get("EXTRACT_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("variant", FAMILIES)
def test_means_masks_and_edges_on_the_device_match_the_cpu(variant):
    model = tiny_model(variant)
    on_device = copy.deepcopy(model).to(DEVICE)
    torch.manual_seed(1)
    blocks = torch.randint(0, 101, (12, 10))
    sites = node_sites(model)
    means = site_means(model, sites, blocks)
    device_means = site_means(on_device, sites, blocks)
    for key, mean in means.items():
        torch.testing.assert_close(device_means[key], mean, rtol=1e-4, atol=1e-5, msg=key)

    ids = blocks[:3]
    mask = NodeMask(sites, means).to(DEVICE)
    plain = on_device(input_ids=ids.to(DEVICE)).logits
    with mask.applied(on_device):  # all on: the device model, exactly
        assert torch.equal(on_device(input_ids=ids.to(DEVICE)).logits, plain)
    generator = torch.Generator().manual_seed(2)
    gates = {s.key: (torch.rand(s.width, generator=generator) < 0.5).float() for s in sites}
    cpu_mask = NodeMask(sites, means)
    with cpu_mask.with_gates(model, gates):
        expected = model(input_ids=ids).logits
    with mask.with_gates(on_device, gates):  # gates made on the CPU follow the mask to the device
        got = on_device(input_ids=ids.to(DEVICE)).logits
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)

    kept = {key: gate.bool() for key, gate in gates.items()}
    assert count_edges(on_device, kept) == count_edges(model, kept)
    assert list_edges(on_device, kept) == list_edges(model, kept)


def test_find_circuit_on_the_device_finds_the_cpu_circuit():
    from extract.circuits.find import find_circuit
    from extract.recipe import PruneConfig
    from tests.test_circuits import copy_task

    model, sites, means, task = copy_task()
    cfg = PruneConfig(steps=200, batch_size=32, lr=3e-2, k_coef=3e-4, k_coef_fallbacks=[])
    on_cpu = find_circuit(model, sites, means, task, cfg)
    on_device = find_circuit(copy.deepcopy(model).to(DEVICE), sites, means, task, cfg)
    assert on_device.result.device.startswith(DEVICE) and on_cpu.result.device == "cpu"
    cpu_circuit, circuit = on_cpu.result.circuit, on_device.result.circuit
    assert circuit.sufficient and circuit.necessary
    # the same seeded mask on both: the same circuit up to float rounding in the mask steps
    assert abs(circuit.nodes - cpu_circuit.nodes) <= max(2, cpu_circuit.nodes // 10)
    assert circuit.loss == pytest.approx(cpu_circuit.loss, abs=0.05)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_training_on_the_device_learns_in_half_precision_as_in_float32(precision, write_recipe, tmp_path):
    """Dense training from a random model for 30 steps: the loss falls at least half as far as in
    float32. Under fp16 before the GradScaler fix the weights moved ~9,000 times too little."""
    if DEVICE == "cpu" and precision == "fp16":
        pytest.skip("Accelerate runs fp16 only on accelerators")
    drops = {}
    for run in ("no", precision):
        recipe = write_recipe(f"{run}.yaml", output_dir=str(tmp_path / run), sparsity={"enabled": False},
                              loss={"ce_weight": 1.0, "kl_weight": 0.0},
                              train={"steps": 30, "eval_every": 30, "checkpoint_every": 30, "log_every": 1,
                                     "mixed_precision": run})
        run_cli("--recipe", recipe, "--stage", "sparsify")
        log = [json.loads(line) for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
        drops[run] = log[0]["ce"] - log[-1]["ce"]
    assert drops["no"] > 0.3 and drops[precision] > 0.5 * drops["no"], drops


def test_prune_stage_through_the_command_line_runs_on_the_device(write_recipe, tmp_path, tiny_model_dir):
    out = tmp_path / "pruned"
    run_cli("--recipe", write_recipe(), "--stage", "prune", "--model", tiny_model_dir, "--task",
            "single_double_quote", f"output_dir={out}", "prune.mean_blocks=4", "prune.validation_pairs=20",
            "prune.test_pairs=20")
    entry = json.loads((out / "report.json").read_text())["tasks"]["single_double_quote"][str(tiny_model_dir)]
    assert 0 <= entry["full_accuracy"] <= 1 and entry["device"].startswith(DEVICE)
