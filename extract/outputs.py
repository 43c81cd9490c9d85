"""The output folder's own bookkeeping: the recipe saved beside every run, and the summary printed."""
from __future__ import annotations

from pathlib import Path

import yaml

from extract import checkpoints
from extract.recipe import Recipe, RecipeError

RECIPE_FILE = "recipe.yaml"
# Keys that never change the trained model: which circuits are pruned (a different task list may
# reuse an output_dir), and where the directory is (a moved or copied run is still the same run).
KEYS_THAT_KEEP_THE_MODEL = ("tasks", "prune.", "output_dir")


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        flat.update(_flatten(value, path + ".") if isinstance(value, dict) else {path: value})
    return flat


def _plain(data: dict) -> dict:
    """What the dict reads back as from YAML (tuples become lists), so it compares with a saved file."""
    return yaml.safe_load(yaml.safe_dump(data))


def recipe_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def save_recipe(recipe: Recipe, out: Path) -> None:
    """Save the resolved recipe; refuse to resume a run that was started with a different one."""
    path = Path(out) / RECIPE_FILE
    current = recipe.to_dict()
    if path.exists():
        saved = yaml.safe_load(path.read_text()) or {}
        flat_saved, flat_now = _flatten(saved), _flatten(_plain(current))
        # A run saved before a field existed ran with that field's default.
        defaults = _flatten(_plain(Recipe().to_dict()))
        flat_saved = {**{k: v for k, v in defaults.items() if k in flat_now}, **flat_saved}
        changed = sorted(k for k in flat_saved.keys() | flat_now.keys()
                         if flat_saved.get(k) != flat_now.get(k) and not k.startswith(KEYS_THAT_KEEP_THE_MODEL))
        if changed:
            raise RecipeError(
                f"{path}: output_dir holds a run of a different recipe (differs in {', '.join(changed)}); "
                "choose another output_dir or delete this one")
    checkpoints.write_text_atomic(path, recipe_yaml(recipe))


def summary_lines(report: dict) -> list[str]:
    lines = []
    for role in ("dense", "sparse", "trained"):
        section = report.get(role)
        if not section:
            continue
        parts = [f"held-out loss {section['heldout_loss']:.4f}"]
        if "quote_accuracy" in section:
            parts.append(f"quote accuracy {section['quote_accuracy']:.3f} (loss {section['quote_loss']:.3f})")
        if "density" in section:
            parts.append(f"density {section['density']:.5f} ({section['nonzero_params']:,} nonzero params)")
        if "loss_ratio" in section:
            parts.append(f"loss {section['loss_ratio']:.3f}x dense, KL {section['kl_to_dense']:.4f}")
        if "wall_seconds" in section:
            parts.append(f"{section['tokens']:,} tokens in {section['wall_seconds'] / 60:.1f} min")
        lines.append(f"{role:>8}: " + "; ".join(parts))
    return lines


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def model_card(report: dict, recipe: Recipe) -> str:
    """README.md for the saved model folder, so a pushed folder explains itself on the Hub."""
    sparse = report.get("sparse") or report.get("trained")
    dense = report.get("dense")
    header = ["---", "library_name: transformers", "tags:", "- weight-sparse", "- interpretability"]
    if dense and _is_hub_id(dense["model"]):
        header.append(f"base_model: {dense['model']}")
    lines = header + ["---", "", f"# {recipe.name}", ""]
    if dense:
        lines += [f"A weight-sparse fine-tune of `{dense['model']}`, made by the `extract` tool with the recipe in",
                  "`recipe.yaml`.", ""]
    lines += ["| | held-out loss | density | closing-quote accuracy |", "| --- | --- | --- | --- |"]
    for role, section in (("dense", dense), ("this model", sparse)):
        if section:
            density = f"{section['density']:.5f}" if "density" in section else "1 (dense)"
            accuracy = f"{section['quote_accuracy']:.3f}" if "quote_accuracy" in section else "-"
            lines.append(f"| {role} | {section['heldout_loss']:.4f} | {density} | {accuracy} |")
    lines += ["", "Density is the nonzero fraction of the sparsified tensors (attention and MLP matrices, token and",
              "position embeddings), measured on these weights. The model loads with plain",
              "`AutoModelForCausalLM.from_pretrained`, and the zeros are stored as zeros.", ""]
    return "\n".join(lines)


def _number(value, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def penalties_tried(entry: dict) -> list[str]:
    """The pruning penalties (k_coef) a (task, model) entry's masks were trained with, in order."""
    return [f"{a['k_coef']:g}" for a in entry.get("attempts", [])]


def retry_note(entry: dict) -> str:
    """'' when the first penalty found the circuit, else which one did and which missed before it."""
    tried = penalties_tried(entry)
    return f"k_coef {tried[-1]} after {', '.join(tried[:-1])} missed" if len(tried) > 1 else ""


def _circuit_cells(entry: dict | None, target: float) -> list[str]:
    if not entry:
        return ["-"] * 7
    full = f"{entry['full_loss']:.3f} / {entry['full_accuracy']:.2f}"
    circuit = entry.get("circuit")
    if circuit is None:
        pruned = "reached_target" in entry  # the random-init control is pruned even though unsolved
        why = (f"pruned: no circuit reaches {target} (k_coef {', '.join(penalties_tried(entry))})" if pruned
               else "not solved by the full model")
        return [full, why, "", "", "", "", ""]
    verdict = ("yes" if circuit["sufficient"] else "NO") + " / " + ("yes" if circuit["necessary"] else "NO")
    if circuit.get("fits_through_ablation"):
        verdict += " (fits through ablation)"
    retried = retry_note(entry)
    if retried:
        verdict += f"; {retried}"
    loss = f"{circuit['loss']:.3f}"
    if circuit.get("calibrated_loss") is not None:
        loss += f" ({circuit['calibrated_loss']:.3f})"
    return [full, str(circuit["nodes"]), f"{circuit['edges']:,}", loss,
            f"{circuit['ablated_loss']:.3f}", f"{circuit['random_loss']:.3f}", verdict]


def report_markdown(report: dict) -> str:
    """report.md: the report's numbers as tables for people."""
    lines = ["# Extraction report", "", f"Recipe: `{report.get('recipe')}`", ""]
    models = [(role, report[role]) for role in ("dense", "sparse", "trained") if role in report]
    if models:
        lines += ["## Models", "", "| model | held-out loss | density | nonzero params | closing-quote accuracy |",
                  "| --- | --- | --- | --- | --- |"]
        for role, m in models:
            lines.append(f"| {role} | {m['heldout_loss']:.4f} | {_number(m.get('density'), '.5f')} | "
                         f"{_number(m.get('nonzero_params'), ',')} | {_number(m.get('quote_accuracy'))} |")
        if "sparse" in report and "loss_ratio" in report["sparse"]:
            s = report["sparse"]
            lines += ["", f"Sparse held-out loss is {s['loss_ratio']:.3f}x the dense model's; KL to dense "
                          f"{s['kl_to_dense']:.4f}; {s['tokens']:,} tokens in {s['wall_seconds'] / 60:.1f} min."]
        lines.append("")
    tasks = report.get("tasks")
    if tasks:
        target = report.get("target_loss", 0.15)
        lines += ["## Circuits", "",
                  f"Target task loss {target}. Sufficient: the circuit alone (everything else mean-ablated) reaches "
                  f"the target. Necessary: ablating only the circuit raises the loss to at least ln(2)/2. Random: "
                  "a circuit with as many nodes at every site, chosen at random (it should miss the target). In "
                  "brackets: the circuit's loss after fitting a scale and a shift of its final logits on training "
                  "examples (reported only; the checks use the raw loss).", "",
                  "| task | model | full loss / acc | nodes | edges | circuit loss (calibrated) | ablated loss "
                  "| random loss "
                  "| sufficient / necessary |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, by_role in tasks.items():
            for role, entry in by_role.items():
                lines.append("| " + " | ".join([name, role, *_circuit_cells(entry, target)]) + " |")
        summary = report.get("summary") or {}
        lines += ["", "## Summary", ""]
        if summary.get("edge_ratio"):
            lines.append(f"Over the tasks both models solve ({', '.join(summary['tasks_compared'])}): geometric-mean "
                         f"circuit edges {summary['edges_geomean_dense']:,.0f} dense vs "
                         f"{summary['edges_geomean_sparse']:,.0f} sparse, a ratio of {summary['edge_ratio']:.1f}x.")
        else:
            lines.append("No task has a sufficient circuit in both the dense and the sparse model, so there is no "
                         "edge ratio.")
        lines += ["", "Pictures: `circuits/loss_vs_edges.png` (task loss against circuit edges) and "
                      "`circuits/TASK.sparse.png` (each sparse circuit). Circuit files: `circuits/TASK.MODEL.json`.",
                  ""]
    return "\n".join(lines)
