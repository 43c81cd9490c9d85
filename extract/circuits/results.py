"""What pruning one task on one model found, as types: the task result, the circuit's checks and its
controls. JSON only at the file boundary (`to_dict`, `from_dict`), in the layout report.json and the
circuit files have always had, so files written before these types load as they are.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

RANDOM_INIT = "random_init"  # the role of the randomly initialised model pruned as a control


def _known(cls, data: dict) -> dict:
    """The keys of `data` that `cls` has fields for (a newer file's extra keys are ignored)."""
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in data.items() if key in names}


@dataclass
class Attempt:
    """One mask trained with one penalty."""

    k_coef: float
    mask_kept_nodes: int
    reached_target: bool


@dataclass
class CircuitChecks:
    """A discrete circuit's size and checks, all on the test split, with the random circuits of the same
    nodes per site beside them (extract/circuits/checks.py)."""

    nodes: int
    edges: int
    loss: float
    sufficient: bool
    loss_se: float | None = None
    accuracy: float | None = None
    ablated_loss: float | None = None
    necessary: bool = False
    random_draws: int = 0
    random_loss: float | None = None
    random_loss_min: float | None = None
    random_reached: int | None = None
    # how bisection chose the size, on validation
    validation_loss: float | None = None
    validation_loss_se: float | None = None
    validation_bound: float | None = None
    fits_through_ablation: bool = False
    calibrated_loss: float | None = None
    calibration: dict | None = None

    @property
    def verdict(self) -> str:
        """'sufficient, necessary' or which of the two checks failed, in capitals."""
        return (("sufficient" if self.sufficient else "NOT sufficient") + ", "
                + ("necessary" if self.necessary else "NOT necessary"))

    @classmethod
    def from_dict(cls, data: dict) -> CircuitChecks:
        return cls(**_known(cls, data))


@dataclass
class NonsenseControl:
    """The task's twin with labels that ignore the deciding detail, pruned with the same settings."""

    full_loss: float
    mask_loss: float | None
    k_coef: list[float]
    chosen_on_validation: bool
    nodes: int | None
    loss: float | None
    reached_target: bool


@dataclass
class AttributionBaseline:
    """The top nodes by attribution patching, sized on validation; None sizes when no top-k reaches."""

    nodes: int | None
    edges: int | None
    loss: float | None
    sufficient: bool
    loss_se: float | None = None
    accuracy: float | None = None
    validation_loss: float | None = None


@dataclass
class TaskResult:
    """One task on one model: the full model's scores, and when the model solves the task (or it is a
    control pruned regardless), the masks tried, the circuit with its checks, and its controls."""

    full_loss: float
    full_accuracy: float
    short_range_loss: float  # the full model on the prompts cut to their last `prune.short_range_tokens` tokens
    short_range: bool  # solved from there: the task needs no context
    solved: bool
    circuit: CircuitChecks | None = None
    device: str = "cpu"
    examples: dict = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)  # empty: not pruned
    mask_loss: float | None = None  # the last mask with every node it kept, on test
    attribution: AttributionBaseline | None = None
    nonsense: NonsenseControl | None = None
    controls: dict[str, dict] = field(default_factory=dict)  # further controls by name (controls.py)
    prune_seconds: float | None = None

    @property
    def pruned(self) -> bool:
        return bool(self.attempts)

    @property
    def k_coef(self) -> float | None:
        """The penalty of the mask reported (the last one tried)."""
        return self.attempts[-1].k_coef if self.attempts else None

    @property
    def mask_kept_nodes(self) -> int | None:
        return self.attempts[-1].mask_kept_nodes if self.attempts else None

    @property
    def reached_target(self) -> bool:
        return self.circuit is not None

    @property
    def sufficient(self) -> bool:
        return self.circuit is not None and self.circuit.sufficient

    def penalties_tried(self) -> list[str]:
        """The pruning penalties (k_coef) the masks were trained with, in order."""
        return [f"{a.k_coef:g}" for a in self.attempts]

    def retry_note(self) -> str:
        """'' when the first penalty found the circuit, else which one did and which missed before it."""
        tried = self.penalties_tried()
        return f"k_coef {tried[-1]} after {', '.join(tried[:-1])} missed" if len(tried) > 1 else ""

    def to_dict(self) -> dict:
        """The JSON entry: report.json's tasks.TASK.MODEL and the circuit file's top level."""
        data = asdict(self)
        if self.pruned:  # as the files have always had them: only for a model that was pruned
            data.update(k_coef=self.k_coef, mask_kept_nodes=self.mask_kept_nodes, reached_target=self.reached_target)
        else:
            del data["attempts"]
        if not self.controls:
            del data["controls"]
        for key in ("mask_loss", "attribution", "nonsense", "prune_seconds"):
            if data[key] is None:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TaskResult:
        # files written before the rename call the short-range loss local_loss
        known = _known(cls, {**data, "short_range_loss": data.get("short_range_loss", data.get("local_loss"))})
        known["circuit"] = CircuitChecks.from_dict(data["circuit"]) if data.get("circuit") else None
        known["attempts"] = [Attempt(**_known(Attempt, a)) for a in data.get("attempts", [])]
        if not known["attempts"] and "mask_kept_nodes" in data:  # a file from before masks were retried
            known["attempts"] = [Attempt(data.get("k_coef"), data["mask_kept_nodes"],
                                         data.get("reached_target", False))]
        if data.get("attribution") is not None:
            known["attribution"] = AttributionBaseline(**_known(AttributionBaseline, data["attribution"]))
        if data.get("nonsense") is not None:
            known["nonsense"] = NonsenseControl(**_known(NonsenseControl, data["nonsense"]))
        return cls(**known)


def tasks_from_dict(tasks: dict) -> dict[str, dict[str, TaskResult]]:
    """report.json's "tasks" ({task: {model: entry}}) as TaskResults."""
    return {name: {role: TaskResult.from_dict(entry) for role, entry in by_role.items()}
            for name, by_role in tasks.items()}


def tasks_to_dict(tasks: dict[str, dict[str, TaskResult]]) -> dict:
    return {name: {role: result.to_dict() for role, result in by_role.items()} for name, by_role in tasks.items()}
