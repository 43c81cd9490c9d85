"""The controls beside every circuit (METHOD.md section 4): what should not reach the target.

Each control is one `Control` in CONTROLS. report.json's summary, report.md, report.html and the model
card all show what its `cell` says and list where it failed, so a new control is one definition here:
a `run` that find_circuit calls for every circuit (its result is kept in `TaskResult.controls`) and a
`cell` that reads it. The random circuits, the nonsense twin and the attribution baseline are computed
elsewhere (checks.py, find.py, attribution.py) and read here from their own fields; the random-init
model is a model of its own, pruned like the others, and enters through `control_failures`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from extract.circuits.results import TaskResult


@dataclass(frozen=True)
class ControlCell:
    """One control for one circuit: what the reports show, and whether it reached the target."""

    summary: str
    failed: bool = False
    failure: str = ""  # the failure in words, for the card and control_failures


@dataclass(frozen=True)
class ControlInputs:
    """What a control's `run` gets: the model with its mask (every node's mean), the circuit's 0/1 gates,
    the task's splits and the pruning settings."""

    model: object
    mask: object
    gates: dict
    task: object
    config: object


@dataclass(frozen=True)
class Control:
    name: str
    label: str  # its column in the reports
    explanation: str  # what it is and what passing means
    flag_key: str  # report.json's summary lists the circuits it failed for under this key ...
    flag_label: str  # ... and the reports title that list so
    cell: Callable[[TaskResult], ControlCell | None]  # None: not run for this circuit
    run: Callable[[ControlInputs], dict] | None = None  # computed by find_circuit into TaskResult.controls
    baseline: bool = False  # a comparison, not a test: failing it does not count against the circuit

    def failed(self, result: TaskResult) -> bool:
        cell = self.cell(result)
        return cell is not None and cell.failed


def _number(value, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def _random_circuits(result: TaskResult) -> ControlCell | None:
    c = result.circuit
    if c is None or not c.random_draws:
        return None
    return ControlCell(f"{c.random_loss:.3f} / {c.random_loss_min:.3f} / {c.random_reached} of {c.random_draws}",
                       bool(c.random_reached), f"{c.random_reached} of {c.random_draws} random circuits reach")


def _nonsense_twin(result: TaskResult) -> ControlCell | None:
    twin = result.nonsense
    if result.circuit is None or twin is None:
        return None
    return ControlCell(f"{_number(twin.mask_loss)} / {_number(twin.loss)} / "
                       + ("**REACHES**" if twin.reached_target else "no"), twin.reached_target,
                       "the nonsense twin reaches")


def _attribution(result: TaskResult) -> ControlCell | None:
    base = result.attribution
    if result.circuit is None or base is None:
        return None
    if base.edges is None:
        return ControlCell("no top-k reaches the target")
    return ControlCell(f"{base.nodes} / {base.edges:,} / {base.loss:.3f}", base.edges <= result.circuit.edges,
                       "the attribution baseline is no larger")


CONTROLS: list[Control] = [
    Control("random_circuits", "random circuits",
            "as many nodes at every site, at random (mean / lowest loss / how many reach the target; none should)",
            "random_reached", "Circuits for which some random circuit of the same shape reaches the target",
            _random_circuits),
    Control("nonsense_twin", "nonsense twin",
            "the same prompts with labels that ignore the deciding detail, pruned with the same settings (loss with "
            "every node its mask kept / loss of the circuit bisection chose / whether that reaches the target; it "
            "should not)", "nonsense_reached",
            "Circuits whose nonsense twin reaches the target (pruning can fit the labels)", _nonsense_twin),
    Control("attribution_baseline", "attribution baseline",
            "top nodes by attribution patching, sized on validation (nodes / edges / loss); learned masks should "
            "need fewer edges", "attribution_not_larger", "Circuits no smaller than the attribution baseline's",
            _attribution, baseline=True),
]


def control_failures(result: TaskResult, random_init: TaskResult | None = None) -> list[str]:
    """Every control that reached the target beside this circuit, in words; `random_init` is the
    randomly initialised model's result on the same task. Empty: the circuit passes them all."""
    cells = (control.cell(result) for control in CONTROLS if not control.baseline)
    failures = [cell.failure for cell in cells if cell is not None and cell.failed]
    if random_init is not None and random_init.sufficient:
        failures.append("a random-init model reaches")
    return failures
