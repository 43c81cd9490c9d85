"""What a run's reports show, computed once from report.json: the models, one row per (task, model)
with its verdict and its controls, the edge ratios, and the flags. report.md (report_md.py),
report.html (report_html.py) and the model card (card.py) render this view and compute nothing
themselves, so they cannot disagree, and a new control (extract/circuits/controls.py) appears in all
of them at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from extract.circuits.controls import CONTROLS, Control, ControlCell, control_failures
from extract.circuits.results import RANDOM_INIT, TaskResult, tasks_from_dict

MODEL_ROLES = ("dense", "sparse", "trained")  # report.json's model sections, in the order shown
RATIOS = (("", "tasks both models solve (circuits sufficient on test)"),
          ("context", "context tasks both models solve"),
          ("controls_passed", "tasks both models solve whose controls all pass"))


def flags() -> list[tuple[str, str]]:
    """(summary key, title) of every list the summary can flag: one per control, read when called."""
    return [("not_sufficient_on_test", "Circuits chosen on validation that miss the target on test"),
            *((control.flag_key, control.flag_label) for control in CONTROLS),
            ("random_init_chosen", "Tasks on which pruning a randomly initialised model found a circuit on validation"),
            ("random_init_reached", "Tasks on which that random-init circuit also reaches the target on test")]


@dataclass
class ModelRow:
    role: str
    heldout_loss: float
    params: int | None = None
    density: float | None = None
    nonzero_params: int | None = None
    quote_accuracy: float | None = None
    quote_loss: float | None = None
    loss_ratio: float | None = None
    kl_to_dense: float | None = None
    tokens: int | None = None
    wall_seconds: float | None = None


@dataclass
class CircuitRow:
    task: str
    model: str
    result: TaskResult
    verdict: str  # the checks, or why there is no circuit
    ok: bool  # nothing to flag: a circuit that passes both checks, or no circuit to check
    controls: list[tuple[Control, ControlCell | None]]  # every control, with its cell where it ran
    failures: list[str]  # the controls that reached the target, in words (the random-init model's too)

    @property
    def is_control_model(self) -> bool:
        return self.model == RANDOM_INIT


@dataclass
class ReportView:
    recipe: str
    target_loss: float | None
    models: list[ModelRow]
    rows: list[CircuitRow] = field(default_factory=list)
    summary: dict = field(default_factory=dict)  # report.json's summary, for what the lines below do not say
    ratios: list[str] = field(default_factory=list)  # the edge-ratio lines, numbers in **bold**
    flags: list[tuple[str, list[str]]] = field(default_factory=list)  # (label, where) for every flag raised

    @property
    def trained(self) -> ModelRow | None:
        """The run's own model: the sparse one, or a dense pretraining run's."""
        return next((m for m in self.models if m.role != "dense"), None)

    @property
    def dense(self) -> ModelRow | None:
        return next((m for m in self.models if m.role == "dense"), None)

    @property
    def circuits(self) -> list[CircuitRow]:
        """The rows of the models the report compares, with a circuit (the random-init model's left out)."""
        return [row for row in self.rows if row.result.circuit is not None and not row.is_control_model]

    @property
    def controls(self) -> list[Control]:
        """The controls that ran for some circuit, in CONTROLS order."""
        return [control for control in CONTROLS
                if any(cell is not None for row in self.circuits for c, cell in row.controls if c is control)]


def report_view(report: dict) -> ReportView:
    models = [ModelRow(role, **{k: v for k, v in report[role].items() if k in ModelRow.__dataclass_fields__})
              for role in MODEL_ROLES if role in report]
    view = ReportView(report.get("recipe") or "-", report.get("target_loss"), models)
    tasks = tasks_from_dict(report.get("tasks") or {})
    for task, by_role in tasks.items():
        for role, result in by_role.items():
            view.rows.append(_row(task, role, result, by_role.get(RANDOM_INIT), view.target_loss))
    summary = view.summary = report.get("summary") or {}
    if tasks:
        view.ratios = [ratio_line(summary[key] if key else summary, which) for key, which in RATIOS
                       if not key or summary.get(key)]
        view.flags = [(label, summary[key]) for key, label in flags() if summary.get(key)]
    return view


def _row(task: str, role: str, result: TaskResult, random_init: TaskResult | None, target: float | None
         ) -> CircuitRow:
    circuit = result.circuit
    if circuit is not None:
        verdict = circuit.verdict + (" (fits through ablation)" if circuit.fits_through_ablation else "")
        retry = result.retry_note()
        verdict += f"; {retry}" if retry else ""
        ok = circuit.sufficient and circuit.necessary
    elif result.pruned:  # the random-init control is pruned even though unsolved
        verdict, ok = f"pruned: no circuit reaches {target} (k_coef {', '.join(result.penalties_tried())})", True
    else:
        verdict, ok = "not solved by the full model", True
    controls = [(control, control.cell(result)) for control in CONTROLS]
    failures = control_failures(result, random_init) if circuit is not None and role != RANDOM_INIT else []
    return CircuitRow(task, role, result, verdict, ok, controls, failures)


def compared_edges(summary: dict) -> list[tuple[str, float | None]]:
    """(model, geometric-mean edges) of the two models a summary compares. Reports written before any two
    models could be compared name them edges_geomean_dense and edges_geomean_sparse."""
    if "compared" in summary:
        return list(zip(summary["compared"], summary["edges_geomean"]))
    return [(role, summary.get(f"edges_geomean_{role}")) for role in ("dense", "sparse")]


def ratio_line(summary: dict, which: str) -> str:
    """`which` names the tasks compared, e.g. "tasks both models solve"."""
    if not summary.get("edge_ratio"):
        return f"No edge ratio over the {which}: there are none."
    names = summary["tasks_compared"]
    (first, a), (second, b) = compared_edges(summary)
    return (f"Over the {which} ({len(names)}: {', '.join(names)}): geometric-mean circuit edges "
            f"{a:,.0f} {first} vs {b:,.0f} {second}, a ratio of **{summary['edge_ratio']:.1f}x**.")
