"""report.json, report.md, the model card and the training plot, computed from saved artifacts only.

Every number is recomputed from weights on disk (the dense source and the saved sparse model),
in float32, so anyone can rerun `--stage report` and get the same report.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from extract import atomic
from extract.arch import sparse_tensors
from extract.bridge_losses import bridge_metrics
from extract.bridges import BRIDGES_WEIGHTS, Bridges, check_fits, has_bridges
from extract.card import model_card
from extract.data import prepare_heldout
from extract.evaluation import heldout_metrics
from extract.fidelity import fidelity
from extract.models import ModelLoadError, adapter_base, count_params, load_model, load_tokenizer
from extract.paths import MODEL_DIRNAME, TRAIN_LOG_FILE
from extract.plots import plot_training
from extract.recipe import ModelConfig, Recipe
from extract.report_html import write_html_report
from extract.report_md import report_markdown
from extract.report_view import report_view
from extract.sparsity import measured_density
from extract.tasks import two_way_scores
from extract.tasks.quotes import closing_quote_examples

log = logging.getLogger(__name__)
# held-out text the representation match reads (half fits the map, half scores it): 8,192 tokens
# keep a map from GPT-2 small's 768 channels well determined and every site's activations in memory
FIDELITY_BLOCKS, FIDELITY_TOKENS = 32, 256
BRIDGE_BLOCKS = 16  # held-out blocks the bridges' per-site figures are read on (2 hybrid passes per site each)


def saved_density(model_dir: Path, model, embeddings: bool = True) -> tuple[float, int, int]:
    """(density over the sparsified tensors, total nonzero count, number of sparsified tensors) of
    `model` as loaded from `model_dir`'s safetensors files.

    The density is read from the loaded model, whose parameter names the loader has mapped (GPT-NeoX's
    unembedding is `lm_head` in the model but `embed_out` in the file). The files' own nonzero count
    must equal the loaded parameters', so a tensor the loader filled in rather than read cannot pass."""
    in_files = 0
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        if shard.name == BRIDGES_WEIGHTS:  # saved beside the model, not part of it
            continue
        in_files += sum(int(torch.count_nonzero(w)) for w in load_file(shard).values())
    loaded = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    if loaded != in_files:
        raise ModelLoadError(f"{model_dir}: the loaded model has {loaded:,} nonzero parameters but its safetensors "
                         f"files hold {in_files:,}; the files and the model's layout do not match")
    tensors = sparse_tensors(model, embeddings)
    density, _, _ = measured_density(tensors)
    return density, in_files, len(tensors)


def model_section(model, heldout, quotes, teacher=None) -> dict:
    metrics = heldout_metrics(model, heldout, teacher)
    section = {"heldout_loss": metrics["loss"], "params": count_params(model)}
    if teacher is not None:
        section["kl_to_dense"] = metrics["kl_to_dense"]
    if quotes:
        scores = two_way_scores(model, quotes)
        section["quote_loss"], section["quote_accuracy"] = scores["loss"], scores["accuracy"]
    return section


def write_report(recipe: Recipe, recipe_file: str, device: torch.device | str) -> dict:
    """Score the dense and the saved sparse model on `device` and write the report from the outputs."""
    log.info("scoring both models for the report")
    out = Path(recipe.output_dir)
    model_dir = out / MODEL_DIRNAME
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(model_dir)))
    heldout, heldout_texts = prepare_heldout(recipe, tokenizer)
    quotes = []
    if recipe.eval.quote_examples:
        quotes = closing_quote_examples(heldout_texts[recipe.data.text_column], tokenizer, recipe.eval.quote_examples)
    trained = load_model(ModelConfig(name_or_path=str(model_dir))).to(device)
    state = atomic.read_json(model_dir / "trainer_state.json", f"delete {model_dir} and rerun the command: "
                                  "training resumes from the newest checkpoint")
    report = {"recipe": recipe_file, "quote_examples": len(quotes)}
    teacher = None
    if recipe.model.init_config is None:
        teacher = load_model(recipe.model).to(device)
        report["dense"] = {"model": recipe.model.name_or_path, **model_section(teacher, heldout, quotes)}
        if (base := adapter_base(recipe.model)) is not None:  # a LoRA adapter, merged into its base model
            report["dense"]["adapter_base"] = base
    section = {"path": str(model_dir), **model_section(trained, heldout, quotes, teacher)}
    if recipe.sparsity.enabled:
        density, nonzero, n_tensors = saved_density(model_dir, trained, recipe.sparsity.embeddings)
        section.update(density=density, nonzero_params=nonzero, sparsified_tensors=n_tensors,
                       target_density=recipe.sparsity.target_density)
        if teacher is not None:
            section["loss_ratio"] = section["heldout_loss"] / report["dense"]["heldout_loss"]
            if trained.config.hidden_size != teacher.config.hidden_size:
                log.info("no fidelity figures: they compare weights tensor by tensor, and this sparse model is "
                         "wider than the dense one (model.width_multiplier; its bridges are measured instead)")
            elif len(heldout) >= 2:  # half fits the representation map, half scores it
                log.info("measuring the sparse model's fidelity to the dense one")
                report["fidelity"] = fidelity(teacher, trained, heldout[:FIDELITY_BLOCKS, :FIDELITY_TOKENS],
                                              recipe.sparsity.embeddings, recipe.sparsity.min_per_unit)
            else:
                log.warning("data.heldout_blocks is 1: no fidelity figures (they need 2 held-out blocks)")
    if teacher is not None and has_bridges(model_dir):
        log.info("measuring the bridges on held-out text")
        bridges = Bridges.load(model_dir).to(device)
        check_fits(bridges, trained)
        report["bridges"] = bridge_metrics(trained, teacher, bridges, heldout[:BRIDGE_BLOCKS])
    section.update(tokens=state["tokens"], wall_seconds=state["wall_seconds"])
    report["sparse" if recipe.sparsity.enabled else "trained"] = section
    plot_training(out / TRAIN_LOG_FILE, out / "training.png")  # before report.html, which inlines it
    report = merge_circuits(report, out)
    atomic.write_text_atomic(model_dir / "README.md", model_card(report, recipe, recipe.hub.repo_id))
    return report


def merge_circuits(report: dict, out: Path) -> dict:
    """Fold the prune stage's results (circuits/circuits.json) into the report, and write
    report.json, report.md and report.html."""
    circuits = out / "circuits" / "circuits.json"
    if circuits.exists():
        found = atomic.read_json(circuits, "rerun the command with --stage prune: finished circuits are "
                                      "reused, not pruned again")
        report.update(target_loss=found["target_loss"], splits=found.get("splits"), tasks=found["tasks"],
                      summary=found["summary"])
        if found.get("transfer") is not None:
            report["transfer"] = found["transfer"]
    atomic.write_json_atomic(out / "report.json", report)
    atomic.write_text_atomic(out / "report.md", report_markdown(report_view(report)))
    write_html_report(out, report)
    return report


def add_timings(out: Path, parts: dict[str, float]) -> None:
    """Keep where the run's time went in report.json (extract/timings.py), once the run has ended."""
    path = out / "report.json"
    if path.is_file():
        atomic.write_json_atomic(path, {**atomic.read_json(path, "delete it and rerun the command with --stage report"),
                                        "time_seconds": parts})


def refresh_report(out: Path, recipe_file: str) -> dict:
    """After pruning alone: update report.json with the circuits (starting one if there is none)."""
    path = out / "report.json"
    report = (atomic.read_json(path, "delete it and rerun the command with --stage report") if path.exists()
              else {"recipe": recipe_file})
    return merge_circuits(report, out)
