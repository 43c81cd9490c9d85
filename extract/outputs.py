"""The output folder's own bookkeeping: the recipe saved beside every run, and the summary printed."""
from __future__ import annotations

from pathlib import Path

import yaml

from extract import checkpoints
from extract.recipe import Recipe, RecipeError

RECIPE_FILE = "recipe.yaml"


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        flat.update(_flatten(value, path + ".") if isinstance(value, dict) else {path: value})
    return flat


def recipe_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def save_recipe(recipe: Recipe, out: Path) -> None:
    """Save the resolved recipe; refuse to resume a run that was started with a different one."""
    path = Path(out) / RECIPE_FILE
    current = recipe.to_dict()
    if path.exists():
        saved = yaml.safe_load(path.read_text()) or {}
        flat_saved, flat_now = _flatten(saved), _flatten(yaml.safe_load(yaml.safe_dump(current)))
        changed = sorted(k for k in flat_saved.keys() | flat_now.keys() if flat_saved.get(k) != flat_now.get(k))
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
