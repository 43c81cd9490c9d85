"""report.json, the model card and the training plot, computed from the saved artifacts only.

Every number is recomputed from weights on disk (the dense source and the saved sparse model),
in float32, so anyone can rerun `--stage report` and get the same report.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from extract import checkpoints
from extract.models import count_params, load_model, load_tokenizer, sparse_tensors
from extract.outputs import model_card
from extract.recipe import ModelConfig, Recipe
from extract.sparsity import measured_density
from extract.tasks import two_way_scores
from extract.tasks.quotes import closing_quote_examples
from extract.train import MODEL_DIRNAME, TRAIN_LOG, heldout_metrics, prepare_heldout


def saved_density(model_dir: Path, model, embeddings: bool = True) -> tuple[float, int, int]:
    """Density over the sparsified tensors and the total nonzero count, read from the safetensors
    files themselves (`model` only supplies the names of the sparsified tensors)."""
    weights = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        weights.update(load_file(shard))
    names = [t.name for t in sparse_tensors(model, embeddings) if t.name in weights]
    density, _, _ = measured_density([weights[n] for n in names])
    nonzero_params = sum(int(torch.count_nonzero(w)) for w in weights.values())
    return density, nonzero_params, len(names)


def model_section(model, heldout, quotes, teacher=None) -> dict:
    metrics = heldout_metrics(model, heldout, teacher)
    section = {"heldout_loss": metrics["loss"], "params": count_params(model)}
    if teacher is not None:
        section["kl_to_dense"] = metrics["kl_to_dense"]
    if quotes:
        scores = two_way_scores(model, quotes)
        section["quote_loss"], section["quote_accuracy"] = scores["loss"], scores["accuracy"]
    return section


def write_report(recipe: Recipe, recipe_file: str) -> dict:
    out = Path(recipe.output_dir)
    model_dir = out / MODEL_DIRNAME
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(model_dir)))
    heldout, heldout_texts = prepare_heldout(recipe, tokenizer)
    quotes = []
    if recipe.eval.quote_examples:
        quotes = closing_quote_examples(heldout_texts[recipe.data.text_column], tokenizer, recipe.eval.quote_examples)
    trained = load_model(ModelConfig(name_or_path=str(model_dir)))
    state = json.loads((model_dir / "trainer_state.json").read_text())
    report = {"recipe": recipe_file, "quote_examples": len(quotes)}
    teacher = None
    if recipe.model.init_config is None:
        teacher = load_model(recipe.model)
        report["dense"] = {"model": recipe.model.name_or_path, **model_section(teacher, heldout, quotes)}
    section = {"path": str(model_dir), **model_section(trained, heldout, quotes, teacher)}
    if recipe.sparsity.enabled:
        density, nonzero, n_tensors = saved_density(model_dir, trained, recipe.sparsity.embeddings)
        section.update(density=density, nonzero_params=nonzero, sparsified_tensors=n_tensors,
                       target_density=recipe.sparsity.target_density)
        if teacher is not None:
            section["loss_ratio"] = section["heldout_loss"] / report["dense"]["heldout_loss"]
    section.update(tokens=state["tokens"], wall_seconds=state["wall_seconds"])
    report["sparse" if recipe.sparsity.enabled else "trained"] = section
    checkpoints.write_json_atomic(out / "report.json", report)
    checkpoints.write_text_atomic(model_dir / "README.md", model_card(report, recipe))
    plot_training(out / TRAIN_LOG, out / "training.png")
    return report


def plot_training(log_path: Path, png_path: Path) -> None:
    """Loss, KL and density against step: the picture that shows where the anneal hurts."""
    if not log_path.exists():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    fig, (ax_loss, ax_density) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    train = [r for r in rows if "ce" in r]
    evals = [r for r in rows if "heldout_loss" in r]
    ax_loss.plot([r["step"] for r in train], [r["ce"] for r in train], label="train CE", alpha=0.6)
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["heldout_loss"] for r in evals], "o-", label="held-out CE")
    if any(r.get("kl") is not None for r in train):
        ax_loss.plot([r["step"] for r in train], [r["kl"] for r in train], label="train KL to dense", alpha=0.6)
    ax_loss.set_ylabel("nats / token")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_density.plot([r["step"] for r in rows], [r["density"] for r in rows])
    ax_density.set_yscale("log")
    ax_density.set_ylabel("density (scheduled)")
    ax_density.set_xlabel("optimizer step")
    ax_density.grid(alpha=0.3, which="both")
    fig.tight_layout()
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(png_path)
