"""report.md and the lines the command prints at the end: the report view (report_view.py) as text."""
from __future__ import annotations

from extract.report_view import BRIDGES_NOTE, ModelRow, ReportView


def _number(value, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def summary_lines(view: ReportView) -> list[str]:
    """One line per model: what the command prints when a run finishes."""
    lines = []
    for m in view.models:
        parts = [f"held-out loss {m.heldout_loss:.4f}"]
        if m.quote_accuracy is not None:
            parts.append(f"quote accuracy {m.quote_accuracy:.3f} (loss {m.quote_loss:.3f})")
        if m.density is not None:
            parts.append(f"density {m.density:.5f} ({m.nonzero_params:,} nonzero params)")
        if m.loss_ratio is not None:
            parts.append(f"loss {m.loss_ratio:.3f}x dense, KL {m.kl_to_dense:.4f}")
        if m.wall_seconds is not None:
            parts.append(f"{m.tokens:,} tokens in {m.wall_seconds / 60:.1f} min")
        lines.append(f"{m.role:>8}: " + "; ".join(parts))
    return (lines + [f"fidelity: {line.replace('**', '')}" for line in view.fidelity_lines()]
            + [f"bridges: {line.replace('**', '')}" for line in view.bridge_lines])


def _model_lines(models: list[ModelRow], trained: ModelRow | None) -> list[str]:
    lines = ["## Models", "", "| model | held-out loss | density | nonzero params | closing-quote accuracy |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {m.role} | {m.heldout_loss:.4f} | {_number(m.density, '.5f')} | {_number(m.nonzero_params, ',')} | "
              f"{_number(m.quote_accuracy)} |" for m in models]
    if trained is not None and trained.loss_ratio is not None:
        lines += ["", f"Sparse held-out loss is {trained.loss_ratio:.3f}x the dense model's; KL to dense "
                      f"{trained.kl_to_dense:.4f}; {trained.tokens:,} tokens in {trained.wall_seconds / 60:.1f} min."]
    return lines + [""]


def _circuit_cells(row) -> list[str]:
    r, circuit = row.result, row.result.circuit
    full = f"{r.full_loss:.3f} / {r.full_accuracy:.2f}"
    short = f"{r.short_range_loss:.3f}" + (" (short-range)" if r.short_range else "")
    if circuit is None:
        return [full, short, row.verdict, "", "", "", "", ""]
    return [full, short, str(circuit.nodes), f"{circuit.edges:,}",
            f"{circuit.loss:.3f} ({_number(circuit.validation_loss)})", _number(circuit.calibrated_loss),
            _number(circuit.ablated_loss), row.verdict]


def report_markdown(view: ReportView) -> str:
    """report.md: the report's numbers as tables for people."""
    lines = ["# Extraction report", "", f"Recipe: `{view.recipe}`", ""]
    if view.models:
        lines += _model_lines(view.models, view.trained)
    if view.fidelity is not None:
        lines += ["## Fidelity to the dense model", "", "Is the sparse model still the dense one, or a new model "
                  "that imitates its outputs? (Its circuits describe the dense model only as far as it is.)", ""]
        lines += [f"- {line}" for line in view.fidelity_lines()] + [""]
    if view.bridge_lines:
        lines += ["## Bridges to the dense model", "", BRIDGES_NOTE, ""] + [f"- {line}" for line in view.bridge_lines]
        lines += [""]
    if view.rows:
        lines += ["## Circuits", "",
                  f"Target task loss {view.target_loss}. Each task has three disjoint splits: the mask trains on "
                  "**train**, bisection picks the circuit size on **validation**, and every figure below is read on "
                  "**test** (validation loss in brackets). Short-range loss: the full model's loss on prompts cut to "
                  "their last few tokens; a task solved from there is short-range. Sufficient: the circuit alone "
                  "(everything else mean-ablated) reaches the target. Necessary: ablating only the circuit raises "
                  "the loss to at least ln(2)/2. Calibrated: the circuit's test loss after fitting a scale and a "
                  "shift of its final logits on train (reported only; the checks use the raw loss).", "",
                  "| task | model | full loss / acc | short-range loss | nodes | edges | circuit loss (validation) "
                  "| calibrated | ablated loss | checks |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += ["| " + " | ".join([row.task, row.model, *_circuit_cells(row)]) + " |" for row in view.rows]
        controls = view.controls
        if view.circuits and controls:
            lines += ["", "## Controls", "",
                      "On test, for each circuit. " + " ".join(f"{c.label[0].upper() + c.label[1:]}: {c.explanation}."
                                                               for c in controls), "",
                      "| task | model | " + " | ".join(c.label for c in controls) + " |",
                      "| --- | --- | " + " | ".join("---" for _ in controls) + " |"]
            for row in view.circuits:
                cells = {c.name: cell for c, cell in row.controls}
                lines.append("| " + " | ".join([row.task, row.model, *(cells[c.name].summary if cells[c.name] else "-"
                                                                         for c in controls)]) + " |")
        lines += ["", "## Summary", ""]
        for line in view.ratios:
            lines += [line, ""]
        for label, where in view.flags:
            lines += [f"{label}: {', '.join(where)}.", ""]
        lines += ["Explore every circuit and what each node does in `report.html`. Pictures: "
                  "`circuits/loss_vs_edges.png` (task loss against circuit edges) and `circuits/TASK.sparse.png` "
                  "(each sparse circuit). Circuit files: `circuits/TASK.MODEL.json`.", ""]
    return "\n".join(lines)
