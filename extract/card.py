"""The model card (README.md of a pushed repo and of OUTPUT_DIR/model), generated from report.json.

Every number on the card is read from the report, so the card can never disagree with the run; the
YAML header is what the Hub indexes (base model, library, license, datasets, tags).
"""
from __future__ import annotations

import yaml

from extract.hub import is_hub_id
from extract.outputs import FLAGS, ratio_line
from extract.recipe import Recipe

RANDOM_INIT = "random_init"


def card_metadata(report: dict, recipe: Recipe) -> dict:
    dense = report.get("dense") or {}
    base = dense.get("adapter_base") or dense.get("model")
    meta = {"library_name": "transformers", "license": recipe.hub.license or "other"}
    if base and is_hub_id(base):
        meta["base_model"] = base
    if is_hub_id(recipe.data.dataset):
        meta["datasets"] = [recipe.data.dataset]
    meta["tags"] = ["weight-sparse", "interpretability", "circuits", "extract"]
    return meta


def _origin(dense: dict) -> str:
    if dense.get("model") == "embedded":
        return "the small dense GPT-2 that ships with extract (trained on Python code)"
    if dense.get("adapter_base"):
        return f"`{dense['adapter_base']}` with the LoRA adapter `{dense['model']}` merged in"
    return f"`{dense['model']}`"


def _models_table(report: dict) -> list[str]:
    lines = ["| model | held-out loss | density | nonzero parameters | closing-quote accuracy |",
             "| --- | --- | --- | --- | --- |"]
    for role in ("dense", "sparse", "trained"):
        m = report.get(role)
        if not m:
            continue
        density = f"{m['density']:.5f}" if "density" in m else "1 (dense)"
        nonzero = f"{m['nonzero_params']:,} of {m['params']:,}" if "nonzero_params" in m else f"{m['params']:,}"
        accuracy = f"{m['quote_accuracy']:.3f}" if "quote_accuracy" in m else "-"
        lines.append(f"| {role if role == 'dense' else 'this model'} | {m['heldout_loss']:.4f} | {density} | "
                     f"{nonzero} | {accuracy} |")
    return lines


def _controls(entry: dict, random_init: dict | None) -> str:
    """'pass' when no control reaches the target, else which ones do."""
    circuit, failed = entry["circuit"], []
    if circuit.get("random_reached"):
        failed.append(f"{circuit['random_reached']} of {circuit['random_draws']} random circuits reach")
    if (entry.get("nonsense") or {}).get("reached_target"):
        failed.append("the nonsense twin reaches")
    if random_init and (random_init.get("circuit") or {}).get("sufficient"):
        failed.append("a random-init model reaches")
    checked = circuit.get("random_draws") or entry.get("nonsense") or random_init
    return "; ".join(failed) if failed else ("pass" if checked else "-")


def _circuit_rows(report: dict) -> list[str]:
    """The circuits table, then one line naming the (task, model) pairs the model does not solve."""
    target = report.get("target_loss")
    lines = ["| task | model | nodes | edges | test loss | sufficient | necessary | controls |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    unsolved = []
    for task, by_role in report["tasks"].items():
        for role, entry in by_role.items():
            if role == RANDOM_INIT:
                continue
            circuit = entry.get("circuit")
            if not entry.get("solved"):
                unsolved.append(f"{task} / {role} ({entry['full_loss']:.3f})")
                continue
            if circuit is None:
                lines.append(f"| {task} | {role} | no circuit reaches {target} | | | | | |")
                continue
            yes = {True: "yes", False: "no"}
            lines.append(f"| {task} | {role} | {circuit['nodes']:,} | {circuit['edges']:,} | {circuit['loss']:.3f} | "
                         f"{yes[circuit['sufficient']]} | {yes[circuit['necessary']]} | "
                         f"{_controls(entry, by_role.get(RANDOM_INIT))} |")
    if unsolved:
        lines += ["", f"Not solved by the full model (test loss above {target}), so not pruned: {', '.join(unsolved)}."]
    return lines


def _usage(where: str, report: dict) -> list[str]:
    """How to load the model (when the run made one) and a circuit (the sparse model's when it has one)."""
    found = [(task, role) for task, by_role in (report.get("tasks") or {}).items()
             for role, entry in by_role.items() if role != RANDOM_INIT and entry.get("circuit")]
    found.sort(key=lambda pair: pair[1] != "sparse")
    lines = ["## Use", ""]
    if report.get("sparse") or report.get("trained"):
        lines += ["The model loads with plain transformers (no project code, no `trust_remote_code`); its zeros "
                  "are stored as zeros.", "", "```python", "from transformers import AutoModelForCausalLM", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{where}")', "```", ""]
    if found:
        task, role = found[0]
        which = ")  # model=\"dense\" for the dense model's" if role == "sparse" else f", model={role!r})"
        lines += ["A circuit loads with `extract` and checks itself on the task's test examples:",
                  "", "```python", "from extract import load_circuit", "",
                  f'circuit = load_circuit("{where}", "{task}"{which}',
                  "print(circuit)            # nodes, edges, and the claimed test loss",
                  "checked = circuit.check()  # recomputes the loss, sufficiency, necessity and random controls",
                  "```", ""]
    return lines


def model_card(report: dict, recipe: Recipe, repo_id: str | None = None) -> str:
    """README.md for a pushed repo (`repo_id`) or a local model folder (`repo_id` None)."""
    where = repo_id or f"{recipe.output_dir}/model"
    header = "---\n" + yaml.safe_dump(card_metadata(report, recipe), sort_keys=False) + "---"
    lines = [header, "", f"# {repo_id.split('/')[-1] if repo_id else recipe.name}", ""]
    dense, sparse = report.get("dense"), report.get("sparse") or report.get("trained")
    if dense and sparse and "density" in sparse:
        lines += [f"A weight-sparse fine-tune of {_origin(dense)}, made with `extract` from the recipe in "
                  f"`recipe.yaml`: {sparse['density']:.2%} of the sparsified weights (attention and MLP matrices, "
                  f"embeddings) are nonzero, {sparse['nonzero_params']:,} parameters in all. It was distilled from the "
                  "dense model so that task circuits pruned out of it are small enough to read.", ""]
    if any(report.get(role) for role in ("dense", "sparse", "trained")):
        lines += ["## Models", "", *_models_table(report), ""]
    if sparse and "loss_ratio" in sparse:
        lines += [f"Held-out loss is {sparse['loss_ratio']:.3f}x the dense model's (KL to dense "
                  f"{sparse['kl_to_dense']:.4f}) after {sparse['tokens']:,} fine-tuning tokens.", ""]
    if report.get("tasks"):
        lines += ["## Circuits", "",
                  f"Each task's circuit is the smallest set of nodes that alone (everything else mean-ablated) "
                  f"reaches a task loss of {report['target_loss']} on examples the pruning never saw (the test "
                  "split). Necessary: ablating only the circuit raises the loss to at least ln(2)/2. Controls: random "
                  "circuits of the same shape, the task with labels that ignore the deciding detail, and a randomly "
                  "initialised model must not reach the target.", "", *_circuit_rows(report), ""]
        summary = report.get("summary") or {}
        lines += [ratio_line(summary, "tasks both models solve"), ""]
        if summary.get("controls_passed"):
            lines += [ratio_line(summary["controls_passed"], "tasks whose controls all pass"), ""]
        for key, label in FLAGS.items():
            lines += [f"{label}: {', '.join(summary[key])}.", ""] if summary.get(key) else []
        lines += ["Files: `report.json` and `report.md` (every figure), `circuits/TASK.MODEL.json` (nodes, weighted "
                  "edges, checks, test examples), `circuits/*.png` (drawings), `circuits/means/` (ablation means).", ""]
    lines += _usage(where, report)
    recipe_file = "run/recipe.yaml" if repo_id else f"{recipe.output_dir}/recipe.yaml"
    lines += ["## Reproduce", "", "With extract installed (its README), from the recipe this run used:", "", "```bash",
              *([f"hf download {repo_id} recipe.yaml --local-dir run"] if repo_id else []),
              f"accelerate launch extract/run.py --recipe {recipe_file} output_dir=outputs/reproduced hub.repo_id=null",
              "```", ""]
    return "\n".join(lines)
