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
class Fidelity:
    """How much of the dense model the sparse one still is (report.json's "fidelity", extract/fidelity.py)."""

    among_dense_largest: float  # share of the sparse nonzeros among the dense model's largest at that count
    matrices_among: float | None  # the same over the attention and MLP matrices alone
    sign_agreement: float
    norm_ratio: float | None  # sparse norm over the dense norm cut to the same count
    mean_r2: float  # the dense residual stream from the sparse one, on unseen held-out text
    sites: list[tuple[str, float]]
    dense_solves: list[str] = field(default_factory=list)  # tasks, on test
    kept: list[str] = field(default_factory=list)  # of those, the ones the sparse model solves too
    units_at_minimum: dict | None = None  # {"units", "at_minimum", "min_per_unit"} (older reports: none)

    @classmethod
    def from_report(cls, fidelity: dict, tasks: dict) -> Fidelity:
        weights, representation = fidelity["weights"], fidelity["representation"]
        solves = {role: {t for t, by_role in tasks.items() if role in by_role and by_role[role].solved}
                  for role in ("dense", "sparse")}
        return cls(weights["among_dense_largest"], weights["matrices"]["among_dense_largest"],
                   weights["sign_agreement"], weights["norm_ratio"],
                   representation["mean_r2"], [(site["site"], site["r2"]) for site in representation["sites"]],
                   sorted(solves["dense"]), sorted(solves["dense"] & solves["sparse"]),
                   weights.get("units_at_minimum"))

    def lines(self, density: float | None) -> list[str]:
        """The fidelity in sentences, numbers in **bold** (report.md, the card, report.html, the log)."""
        chance = f" (a random pick would get {density:.1%})" if density is not None else ""
        norm = (f", and their norm is **{self.norm_ratio:.2f}x** that of the dense weights cut to the same count"
                if self.norm_ratio is not None else "")
        matrices = (f" ({self.matrices_among:.1%} in the attention and MLP matrices)"
                    if self.matrices_among is not None else "")
        lines = [f"Weights: **{self.among_dense_largest:.1%}** of the sparse model's nonzeros{matrices} are among "
                 f"the dense model's largest-magnitude weights at the same count{chance}; "
                 f"**{self.sign_agreement:.1%}** have the dense weight's sign{norm}.",
                 f"Representations: a linear map of the sparse residual stream predicts the dense one with R^2 "
                 f"**{self.mean_r2:.3f}** on average over {len(self.sites)} sites, fitted on half the held-out "
                 "blocks and scored on the other half (" + ", ".join(f"{site} {r2:.3f}" for site, r2 in self.sites)
                 + ")."]
        if self.units_at_minimum and self.units_at_minimum["units"]:
            u = self.units_at_minimum
            lines.append(f"Units: **{u['at_minimum'] / u['units']:.0%}** of the {u['units']:,} neurons and channels "
                         f"keep only the per-unit minimum of {u['min_per_unit']} nonzeros (there the minimum, not the "
                         "weights' magnitudes, chose what they keep).")
        if self.dense_solves:
            lines.append(f"Tasks kept: the sparse model solves **{len(self.kept)} of the {len(self.dense_solves)}** "
                         f"tasks the dense model solves, on test ({', '.join(self.kept) or 'none'}).")
        return lines


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
    fidelity: Fidelity | None = None  # runs that sparsified a dense model
    bridge_lines: list[str] = field(default_factory=list)  # runs trained with bridges (numbers in **bold**)

    def fidelity_lines(self) -> list[str]:
        if self.fidelity is None:
            return []
        return self.fidelity.lines(self.trained.density if self.trained is not None else None)

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
    if report.get("fidelity"):
        view.fidelity = Fidelity.from_report(report["fidelity"], tasks)
    view.bridge_lines = bridge_lines(report.get("bridges"), report.get("transfer"))
    return view


BRIDGES_NOTE = ("Do the sparse circuits say something about the dense model? Bridges map each residual site "
                "between the two models; a circuit's edit (its nodes' values swapped in from the other prompt of a "
                "test pair) is decoded into the dense model at one site, and should move it as far as patching the "
                "dense model's own residual there, where random node sets of the same size should not.")


def bridge_lines(bridges: dict | None, transfer: dict | None) -> list[str]:
    """The bridges' fit per site (report.json "bridges") and each sparse circuit's bridged intervention
    (report.json "transfer", circuits/transfer.py), in sentences."""
    lines = []
    if bridges:
        mean = {k: sum(row[k] for row in bridges.values()) / len(bridges) for k in next(iter(bridges.values()))}
        per_site = "; ".join(f"{site} {row['encoder_nmse']:.3f} / {row['decoder_nmse']:.3f} / "
                             f"{row['kl_dense_to_sparse']:.3f} / {row['kl_sparse_to_dense']:.3f}"
                             for site, row in bridges.items())
        lines.append(f"Bridges at {len(bridges)} sites, on held-out text: encoder NMSE **{mean['encoder_nmse']:.3f}**, "
                     f"decoder NMSE **{mean['decoder_nmse']:.3f}**, KL to the dense model of the hybrid passes "
                     f"dense-then-sparse **{mean['kl_dense_to_sparse']:.3f}** and sparse-then-dense "
                     f"**{mean['kl_sparse_to_dense']:.3f}** nats per token (per site, the same four: {per_site}).")
    for task, t in (transfer or {}).items():
        lines.append(f"{task}: the sparse circuit's edit, decoded into the dense model at {t['site']} (chosen on "
                     f"validation), moves it **{t['fraction']:.2f}** of the way the full patch there does, over "
                     f"{t['test_pairs']} test pairs both ways; {t['random_draws']} random node sets of the same size: "
                     f"mean **{t['random_mean']:.2f}**, at most {t['random_max']:.2f}.")
    return lines


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
