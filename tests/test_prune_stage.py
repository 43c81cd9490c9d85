"""The prune stage through the command line, on a tiny GPT-2 trained in the test to close quotes."""
import ast
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from extract.report_diff import differences, without_times
from tests.conftest import ROOT, quote_lines, run_cli

PRUNE = ["prune.steps=80", "prune.batch_size=32", "prune.lr=0.05", "prune.mean_blocks=8"]


@pytest.mark.slow
def test_prune_any_saved_model_on_a_task_file(write_recipe, tmp_path, quote_model, tiny_model_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from extract.circuits.files import gates_from_record, read_circuit, test_examples
    from extract.circuits.load import CircuitLoadError, load_circuit
    from extract.circuits.masks import NodeMask
    from extract.circuits.prune import scores_with_gates
    from extract.circuits.sites import node_sites
    from extract.circuits.stage import MAX_DRAWN_EDGES, load_task
    from extract.recipe import TaskFileRef, load_recipe

    model_dir, task_file = quote_model
    out = tmp_path / "pruned"
    args = ("--recipe", write_recipe(), "--stage", "prune", "--model", model_dir, "--task", task_file,
            f"output_dir={out}", *PRUNE)
    run_cli(*args)
    report = json.loads((out / "report.json").read_text())
    entry = report["tasks"]["quotes"][str(model_dir)]
    assert entry["solved"] and entry["full_loss"] < 0.15
    circuit = entry["circuit"]
    assert circuit["sufficient"] and circuit["necessary"] and circuit["loss"] <= 0.15
    # the size was chosen on validation with a margin of 2 standard errors of the predicted test loss
    n_val, n_test = entry["examples"]["validation"], entry["examples"]["test"]
    margin = 2 * circuit["validation_loss_se"] * (1 + n_val / n_test) ** 0.5
    assert circuit["validation_bound"] == pytest.approx(circuit["validation_loss"] + margin)
    assert circuit["validation_bound"] <= 0.15
    assert entry["examples"]["test"] > 0 and report["splits"]["test"].startswith("every reported")
    # the controls: random circuits of the same shape and the nonsense twin reach nothing
    assert circuit["random_draws"] == 10 and circuit["random_reached"] == 0 and circuit["random_loss_min"] > 0.15
    assert not entry["nonsense"]["reached_target"] and entry["nonsense"]["k_coef"] == [1e-3, 3e-4, 1e-4]
    assert entry["nonsense"]["mask_loss"] > 0.5  # not even every node the twin's mask kept fits random labels
    # the attribution baseline needs more edges than the learned mask
    assert entry["attribution"]["sufficient"] and entry["attribution"]["edges"] > circuit["edges"]
    assert 0 <= circuit["calibrated_loss"] < 0.693 and circuit["calibration"]["scale"] > 0  # reported beside
    assert 0 < circuit["nodes"] < entry["mask_kept_nodes"] <= 2 * (4 * 32 + 3 * 32 + 128)
    assert "quotes" in (out / "report.md").read_text()
    assert (out / "circuits" / "loss_vs_edges.png").stat().st_size > 0
    drawings = list((out / "circuits").glob("quotes.*.png"))
    assert len(drawings) == (1 if circuit["edges"] <= MAX_DRAWN_EDGES else 0)

    # the circuit file alone reproduces the circuit: its nodes give the same test loss and edges
    files = list((out / "circuits").glob("quotes.*.json"))
    assert len(files) == 1
    record = read_circuit(files[0])
    assert len(record["edges"]) == circuit["edges"]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    sites = node_sites(model)
    gates = gates_from_record(record, {s.key: s.width for s in sites}, str(files[0]))
    assert int(sum(g.sum() for g in gates.values())) == circuit["nodes"]
    mask = NodeMask(sites, load_file(out / "circuits" / record["means_file"]))
    recipe, _ = load_recipe(str(out / "recipe.yaml"))
    task = load_task(TaskFileRef(str(task_file)), AutoTokenizer.from_pretrained(model_dir), 64, recipe)
    assert test_examples(record) == task.test
    assert scores_with_gates(model, mask, gates, task.test)["loss"] == pytest.approx(circuit["loss"], abs=1e-5)
    # ... and so does the public API, from the output folder, with every check
    loaded = load_circuit(out, "quotes", model=str(model_dir))
    checked = loaded.check()
    assert checked["loss"] == pytest.approx(circuit["loss"], abs=1e-6) and checked["edges"] == circuit["edges"]
    assert (checked["sufficient"], checked["necessary"], checked["random_reached"]) == (True, True, 0)
    with loaded.active() as ablated:  # everything outside the circuit held at its mean
        assert not torch.allclose(ablated(torch.tensor([task.test[0].prompt_ids])).logits,
                                  model(torch.tensor([task.test[0].prompt_ids])).logits)
    with pytest.raises(CircuitLoadError, match="not the ones the circuit was found on"):
        load_circuit(out, "quotes", model=str(model_dir), model_path=tiny_model_dir)
    # a reader's process: `load_circuit` imports neither the training loop, Accelerate nor matplotlib, and
    # loading and checking a circuit brings in none of extract's training or pruning code (transformers'
    # own weight loader imports Accelerate wherever it is installed)
    heavy = ("accelerate", "matplotlib", "extract.train", "extract.circuits.stage", "extract.sparsifier")
    for call, allowed in (("", ()), (f"({str(out)!r}, 'quotes', model={str(model_dir)!r}).check(random_draws=1)",
                                     ("accelerate",))):
        script = (f"import sys, extract\nextract.load_circuit{call}\n"
                  f"print(sorted({{m.split('.')[0] if m.startswith('accelerate') else m for m in sys.modules\n"
                  f"              if m.startswith({heavy!r})}}))")
        reader = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert not set(ast.literal_eval(reader.stdout)) - set(allowed), (call, reader.stdout)

    # the same command again (as after an interruption) reuses the finished (task, model) result
    rerun = run_cli(*args)
    assert "done in an earlier run" in rerun.stderr and "prune quotes" not in rerun.stderr
    assert json.loads((out / "report.json").read_text())["tasks"] == report["tasks"]
    # other settings are other work: nothing is reused
    changed = run_cli(*args, "prune.target_loss=0.1")
    assert "done in an earlier run" not in changed.stderr


@pytest.mark.slow
def test_full_run_prunes_dense_and_sparse_and_the_random_init_control(write_recipe, tmp_path, quote_model):
    model_dir, task_file = quote_model
    out = tmp_path / "full"
    recipe = write_recipe(model={"name_or_path": str(model_dir)}, tasks=[{"file": str(task_file)}])
    run_cli("--recipe", recipe, f"output_dir={out}", "prune.random_model_control=true", *PRUNE)
    report = json.loads((out / "report.json").read_text())
    assert report["sparse"]["density"] <= 0.125 + 1e-3  # the sparsify stage ran first
    task = report["tasks"]["quotes"]
    assert set(task) == {"dense", "sparse", "random_init"}
    assert task["dense"]["circuit"]["sufficient"] and task["dense"]["circuit"]["necessary"]
    control = task["random_init"]
    assert not control["solved"] and not control["reached_target"]  # pruning alone does not fake the task
    assert report["summary"]["random_init_chosen"] == report["summary"]["random_init_reached"] == []
    assert [a["k_coef"] for a in control["attempts"]] == [1e-3, 3e-4, 1e-4]  # with every penalty the models get
    summary = report["summary"]
    if task["sparse"]["circuit"]:  # 12 sparsify steps may or may not keep the task
        assert summary["tasks_compared"] == ["quotes"] and summary["edge_ratio"] > 0
    else:
        assert summary["tasks_compared"] == [] and summary["edge_ratio"] is None
    md = (out / "report.md").read_text()
    assert "| quotes | dense |" in md and "| quotes | random_init |" in md and "## Controls" in md
    assert "pruned: no circuit reaches 0.15 (k_coef 0.001, 0.0003, 0.0001)" in md


@pytest.mark.slow
def test_bad_task_file_is_named_with_its_line(write_recipe, tmp_path, quote_model):
    model_dir, _ = quote_model
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(quote_lines(20, seed=1)[:5] + ['{"prompt": "x = ", "target": "1"}']) + "\n")
    proc = run_cli("--recipe", write_recipe(), "--stage", "prune", "--model", model_dir, "--task", bad,
                   f"output_dir={tmp_path / 'x'}", check=False)
    assert proc.returncode == 1
    assert f"{bad}:6: missing or non-string field(s): alternative" in proc.stderr


@pytest.mark.slow
def test_unsolved_task_is_reported_not_pruned(write_recipe, tmp_path, tiny_model_dir, quote_model):
    _, task_file = quote_model
    out = tmp_path / "random"
    run_cli("--recipe", write_recipe(), "--stage", "prune", "--model", tiny_model_dir, "--task", task_file,
            f"output_dir={out}", *PRUNE)
    entry = json.loads((out / "report.json").read_text())["tasks"]["quotes"][str(tiny_model_dir)]
    assert not entry["solved"] and entry["circuit"] is None and "mask_kept_nodes" not in entry
    assert "not solved by the full model" in (out / "report.md").read_text()


@pytest.mark.slow
def test_prune_stage_without_tasks_says_so(write_recipe, tmp_path):
    proc = run_cli("--recipe", write_recipe(), "--stage", "prune", f"output_dir={tmp_path / 'x'}", check=False)
    assert proc.returncode == 1 and "the recipe lists no tasks" in proc.stderr


def _entry(edges, *, short_range=False, sufficient=True, random_reached=0, nonsense=False, attribution=None):
    from extract.circuits.results import Attempt, AttributionBaseline, CircuitChecks, NonsenseControl, TaskResult

    return TaskResult(
        full_loss=0.05, full_accuracy=0.99, short_range_loss=0.1 if short_range else 0.6, short_range=short_range,
        solved=True, attempts=[Attempt(1e-3, 40, True)],
        circuit=CircuitChecks(nodes=10, edges=edges, loss=0.1 if sufficient else 0.2, sufficient=sufficient,
                              validation_loss=0.08, calibrated_loss=0.05, ablated_loss=2.0, necessary=True,
                              random_draws=10, random_loss=2.0, random_loss_min=1.0, random_reached=random_reached),
        nonsense=NonsenseControl(full_loss=0.7, mask_loss=0.7, k_coef=[1e-3], chosen_on_validation=nonsense, nodes=None,
                                 loss=None, reached_target=nonsense),
        attribution=AttributionBaseline(nodes=50, edges=attribution or 10 * edges, loss=0.12, sufficient=True))


def test_summary_compares_tasks_sufficient_on_test_over_all_and_context_tasks_and_lists_failed_controls():
    from extract.circuits.results import tasks_from_dict, tasks_to_dict
    from extract.circuits.stage import summarise
    from extract.report_md import report_markdown
    from extract.report_view import report_view

    tasks = {"quote": {"dense": _entry(1600), "sparse": _entry(100)},
             "short": {"dense": _entry(900, short_range=True), "sparse": _entry(100, short_range=True)},
             "missed": {"dense": _entry(500), "sparse": _entry(50, sufficient=False, random_reached=2, nonsense=True,
                                                                  attribution=40)}}
    summary = summarise(tasks)
    assert summary["tasks_compared"] == ["quote", "short"]  # "missed": the sparse circuit fails on test
    assert summary["edge_ratio"] == pytest.approx(((1600 * 900) ** 0.5) / 100)
    assert summary["context"]["tasks_compared"] == ["quote"] and summary["context"]["edge_ratio"] == pytest.approx(16)
    assert summary["not_sufficient_on_test"] == ["missed / sparse"]
    assert summary["random_reached"] == ["missed / sparse"] and summary["nonsense_reached"] == ["missed / sparse"]
    assert summary["attribution_not_larger"] == ["missed / sparse"]
    assert summary["random_init_chosen"] == summary["random_init_reached"] == []
    # "missed" is not compared, so every compared task's controls pass
    assert summary["controls_passed"]["tasks_compared"] == ["quote", "short"]
    tasks["short"]["sparse"].nonsense.reached_target = True  # a twin that fits its nonsense labels
    assert summarise(tasks)["controls_passed"]["tasks_compared"] == ["quote"]
    tasks["quote"]["dense"].circuit.random_reached = 1  # a random circuit that does the task
    assert summarise(tasks)["controls_passed"]["tasks_compared"] == []
    report = {"recipe": "r.yaml", "target_loss": 0.15, "tasks": tasks_to_dict(tasks), "summary": summary}
    assert tasks_from_dict(report["tasks"]) == tasks  # the typed results round-trip through report.json
    md = report_markdown(report_view(report))
    assert "a ratio of **16.0x**" in md and "both models solve (circuits sufficient on test) (2: quote, short)" in md
    assert "0.600 |" in md and "0.100 (short-range)" in md  # last-tokens losses
    assert "| missed | sparse | 2.000 / 1.000 / 2 of 10 | 0.700 / - / **REACHES** | 50 / 40 / 0.120 |" in md
    assert "Circuits whose nonsense twin reaches the target (pruning can fit the labels): missed / sparse." in md


def _shuffled_prompts(inputs) -> dict:
    """A trivial control: the circuit's loss on the test prompts with their tokens shuffled."""
    import random

    from extract.circuits.prune import scores_with_gates
    from extract.tasks.examples import TaskExample

    rng = random.Random(0)
    shuffled = [TaskExample(tuple(rng.sample(e.prompt_ids, len(e.prompt_ids))), e.target_id, e.alternative_id)
                for e in inputs.task.test]
    loss = scores_with_gates(inputs.model, inputs.mask, inputs.gates, shuffled)["loss"]
    return {"loss": loss, "reached_target": loss <= inputs.config.target_loss}


@pytest.mark.slow
def test_a_new_control_is_one_definition_that_every_report_shows(write_recipe, tmp_path, quote_model):
    """Adding a control is one `Control` in extract/circuits/controls.py: this test adds one at run time
    and it is computed for the circuit and shown in report.json, report.md, report.html and the card."""
    from extract.card import model_card
    from extract.circuits import controls
    from extract.circuits.stage import prune_stage
    from extract.recipe import load_recipe
    from extract.report import refresh_report

    def cell(result):
        data = result.controls.get("shuffled_prompts")
        return data and controls.ControlCell(f"{data['loss']:.3f}", data["reached_target"],
                                             "the circuit reaches the target on shuffled prompts")

    shuffled = controls.Control("shuffled_prompts", "shuffled prompts",
                                "the circuit on the test prompts with their tokens shuffled (loss; it should miss)",
                                "shuffled_reached", "Circuits that reach the target on shuffled prompts", cell,
                                run=_shuffled_prompts)
    model_dir, task_file = quote_model
    out = tmp_path / "controls"
    recipe, _ = load_recipe(str(write_recipe(tasks=[{"file": str(task_file)}])),
                            [f"output_dir={out}", f"prune.models=[{model_dir}]", *PRUNE, "prune.random_draws=2",
                             "prune.nonsense_control=false", "prune.attribution_baseline=false"])
    controls.CONTROLS.append(shuffled)
    try:
        prune_stage(recipe, "cpu")
        report = refresh_report(out, "tiny.yaml")
        card = model_card(report, recipe)
    finally:
        controls.CONTROLS.remove(shuffled)
    entry = report["tasks"]["quotes"][str(model_dir)]
    assert entry["circuit"]["sufficient"]
    loss = entry["controls"]["shuffled_prompts"]["loss"]
    assert loss > entry["circuit"]["loss"]  # the deciding detail is scrambled
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "| random circuits | shuffled prompts |" in md and f"| {loss:.3f} |" in md
    assert '"labels":["random circuits","shuffled prompts"]' in html and f'"summary":"{loss:.3f}"' in html
    assert "Shuffled prompts: the circuit on the test prompts with their tokens shuffled" in card


@pytest.mark.slow
def test_two_processes_share_the_jobs_and_write_the_one_process_report(write_recipe, tmp_path, quote_model):
    """`accelerate launch --num_processes 2 ... --stage prune`: each process prunes every second (task,
    model) job, the results meet in files, and the report is the one a single process writes."""
    model_dir, task_file = quote_model
    copy = tmp_path / "copy"  # a second model that solves the task: two jobs, both pruned
    shutil.copytree(model_dir, copy)
    args = ["--recipe", write_recipe(), "--stage", "prune", "--model", model_dir, "--model", copy,
            "--task", task_file, *PRUNE, "prune.nonsense_control=false", "prune.attribution_baseline=false"]
    one = run_cli(*args, f"output_dir={tmp_path / 'one'}")
    two = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29541",
         str(ROOT / "extract" / "run.py"), *map(str, args), f"output_dir={tmp_path / 'two'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    reports = [json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "two")]
    # the same circuits (nodes, edges, every verdict); losses agree to rounding: each process has its
    # share of the cores as threads, so its sums run in another order (4.099120 against 4.099135)
    assert not differences(without_times(reports[1]["tasks"]), without_times(reports[0]["tasks"]))
    assert not differences(without_times(reports[1]["summary"]), without_times(reports[0]["summary"]))
    # each process pruned one of the two jobs: one in the main process's timings, one in the other's
    ranks = [json.loads((tmp_path / "two" / name).read_text()) for name in ("timings.json", "timings-rank1.json")]
    assert [sum("with its controls" in part for part in parts) for parts in ranks] == [1, 1], ranks
    assert set(reports[1]["time_seconds"]) >= set(ranks[0]) | set(ranks[1])
    assert "where the time went" in one.stdout and "where the time went" in two.stdout
