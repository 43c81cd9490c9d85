"""The model card (README.md of a pushed repo and of OUTPUT_DIR/model), generated from report.json.

Every number on the card is read from the report, so the card can never disagree with the run; the
YAML header is what the Hub indexes (base model, library, license, datasets, tags).
"""
from __future__ import annotations

import yaml

from extract.circuits.controls import CONTROLS
from extract.hub import is_hub_id
from extract.recipe import Recipe
from extract.report_view import BRIDGES_NOTE, ReportView, report_view


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


def _models_table(view: ReportView) -> list[str]:
    lines = ["| model | held-out loss | density | nonzero parameters | closing-quote accuracy |",
             "| --- | --- | --- | --- | --- |"]
    for m in view.models:
        density = f"{m.density:.5f}" if m.density is not None else "1 (dense)"
        nonzero = f"{m.nonzero_params:,} of {m.params:,}" if m.nonzero_params is not None else f"{m.params:,}"
        accuracy = f"{m.quote_accuracy:.3f}" if m.quote_accuracy is not None else "-"
        lines.append(f"| {m.role if m.role == 'dense' else 'this model'} | {m.heldout_loss:.4f} | {density} | "
                     f"{nonzero} | {accuracy} |")
    return lines


def _circuit_rows(view: ReportView) -> list[str]:
    """The circuits table, then one line naming the (task, model) pairs the model does not solve."""
    lines = ["| task | model | nodes | edges | test loss | checks | controls |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    unsolved = []
    for row in view.rows:
        r = row.result
        if row.is_control_model:
            continue
        if not r.solved:
            unsolved.append(f"{row.task} / {row.model} ({r.full_loss:.3f})")
        elif r.circuit is None:
            lines.append(f"| {row.task} | {row.model} | no circuit reaches {view.target_loss} | | | | |")
        else:
            checked = any(cell is not None for _, cell in row.controls)
            controls = "; ".join(row.failures) or ("pass" if checked else "-")
            lines.append(f"| {row.task} | {row.model} | {r.circuit.nodes:,} | {r.circuit.edges:,} | "
                         f"{r.circuit.loss:.3f} | {row.verdict} | {controls} |")
    if unsolved:
        lines += ["", f"Not solved by the full model (test loss above {view.target_loss}), so not pruned: "
                      f"{', '.join(unsolved)}."]
    return lines


def _usage(where: str, view: ReportView) -> list[str]:
    """How to load the model (when the run made one) and a circuit (the sparse model's when it has one)."""
    found = sorted(view.circuits, key=lambda row: row.model != "sparse")
    lines = ["## Use", ""]
    if view.trained is not None:
        lines += ["The model loads with plain transformers (no project code, no `trust_remote_code`); its zeros "
                  "are stored as zeros.", "", "```python", "from transformers import AutoModelForCausalLM", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{where}")', "```", ""]
    if found:
        task, role = found[0].task, found[0].model
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
    view = report_view(report)
    sparse = view.trained
    if view.dense and sparse and sparse.density is not None:
        lines += [f"A weight-sparse fine-tune of {_origin(report['dense'])}, made with `extract` from the recipe in "
                  f"`recipe.yaml`: {sparse.density:.2%} of the sparsified weights (attention and MLP matrices, "
                  f"embeddings) are nonzero, {sparse.nonzero_params:,} parameters in all. It was distilled from the "
                  "dense model so that task circuits pruned out of it are small enough to read.", ""]
    if view.models:
        lines += ["## Models", "", *_models_table(view), ""]
    if sparse and sparse.loss_ratio is not None:
        lines += [f"Held-out loss is {sparse.loss_ratio:.3f}x the dense model's (KL to dense "
                  f"{sparse.kl_to_dense:.4f}) after {sparse.tokens:,} fine-tuning tokens.", ""]
    if view.fidelity is not None:
        lines += ["## Fidelity to the dense model", "", *(f"- {line}" for line in view.fidelity_lines()), ""]
    if view.bridge_lines:
        lines += ["## Bridges to the dense model", "", BRIDGES_NOTE, "", *(f"- {line}" for line in view.bridge_lines),
                  ""]
    if view.rows:
        controls = " ".join(f"{c.label[0].upper() + c.label[1:]}: {c.explanation}." for c in CONTROLS)
        lines += ["## Circuits", "",
                  f"Each task's circuit is the smallest set of nodes that alone (everything else mean-ablated) "
                  f"reaches a task loss of {view.target_loss} on examples the pruning never saw (the test "
                  f"split). Necessary: ablating only the circuit raises the loss to at least ln(2)/2. Beside each "
                  f"circuit: {controls} And a randomly initialised model of the same shape, pruned the same way, must "
                  "not reach the target either.", "", *_circuit_rows(view), ""]
        for line in view.ratios:
            lines += [line, ""]
        for label, where in view.flags:
            lines += [f"{label}: {', '.join(where)}.", ""]
        lines += ["Files: `report.json` and `report.md` (every figure), `circuits/TASK.MODEL.json` (nodes, weighted "
                  "edges, checks, test examples), `circuits/*.png` (drawings), `circuits/means/` (ablation means).", ""]
    lines += _usage(where, view)
    recipe_file = "run/recipe.yaml" if repo_id else f"{recipe.output_dir}/recipe.yaml"
    lines += ["## Reproduce", "", "With extract installed (its README), from the recipe this run used:", "", "```bash",
              *([f"hf download {repo_id} recipe.yaml --local-dir run"] if repo_id else []),
              f"accelerate launch extract/run.py --recipe {recipe_file} output_dir=outputs/reproduced hub.repo_id=null",
              "```", ""]
    return "\n".join(lines)
