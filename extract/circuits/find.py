"""One task on one model: score the full model, prune a circuit, check it, run the controls, trace
loss against size.

The same function runs for the dense model, the sparse model and the random-init control, so
nothing special-cases either (DESIGN.md). Splits (METHOD.md section 4, "Unseen examples"): the mask
learns on train, bisection picks the circuit size on validation, and every figure returned is read
on test. The result is a TaskResult (results.py), written to the report and the circuit file.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from extract.circuits.attribution import attribution_circuit
from extract.circuits.calibrate import calibrate_circuit
from extract.circuits.checks import check_circuit
from extract.circuits.controls import CONTROLS, ControlInputs
from extract.circuits.edges import count_edges
from extract.circuits.masks import NodeMask
from extract.circuits.prune import gates_of, mask_ranking, scores_with_gates, smallest_circuit, train_mask
from extract.circuits.results import Attempt, AttributionBaseline, CircuitChecks, NonsenseControl, TaskResult
from extract.circuits.sites import Site
from extract.recipe import PruneConfig
from extract.tasks.examples import TaskExample, last_tokens, two_way_scores
from extract.tasks.nonsense import nonsense_twin

log = logging.getLogger(__name__)

# A circuit scoring under half the full model's loss (and at least this much under it) does the task
# better than the model does: the mean ablation is fitting the task, not exposing a mechanism.
ABLATION_FIT_MARGIN = 0.05
CURVE_POINTS = 8
SPLIT_ROLES = {"train": "the mask's training", "validation": "choosing the circuit size",
               "test": "every reported loss, check and control"}


@dataclass
class TaskData:
    name: str
    train: list[TaskExample] | Callable[[], list[TaskExample]]  # a callable builds them when first needed
    validation: list[TaskExample]
    test: list[TaskExample]

    def train_examples(self) -> list[TaskExample]:
        if callable(self.train):
            self.train = self.train()
        return self.train

    def nonsense(self, seed: int) -> TaskData:
        """The twin with labels that ignore the deciding detail, split for split."""
        return TaskData(f"{self.name} (nonsense)", nonsense_twin(self.train_examples(), seed),
                        nonsense_twin(self.validation, seed), nonsense_twin(self.test, seed))


@dataclass
class Found:
    result: TaskResult
    gates: dict[str, torch.Tensor] | None  # the circuit's 0/1 gates per site, None without one
    curve: list[dict]  # [{"nodes", "edges", "loss"}] along the tau ranking, on test


def fits_through_ablation(circuit_loss: float, full_loss: float) -> bool:
    return circuit_loss < 0.5 * full_loss and full_loss - circuit_loss > ABLATION_FIT_MARGIN


def loss_edges_curve(model, mask: NodeMask, test: list[TaskExample], points: int = CURVE_POINTS) -> list[dict]:
    """Test loss and edges of the top-k circuits for k on a geometric grid inside the kept set, ending
    with the whole kept set (its only point when `points` is 1)."""
    ranking = mask_ranking(mask)
    if len(ranking) == 0:
        return []
    exponents = [i / (points - 1) for i in range(points)] if points > 1 else [1.0]
    sizes = sorted({max(1, round(len(ranking) ** e)) for e in exponents})
    curve = []
    for k in sizes:
        gates = gates_of(mask, ranking[:k])
        loss = scores_with_gates(model, mask, gates, test)["loss"]
        curve.append({"nodes": k, "edges": count_edges(model, {s: g.bool() for s, g in gates.items()}), "loss": loss})
    return curve


def penalties(cfg: PruneConfig) -> list[float | None]:
    """The penalties one task on one model may be pruned with: the budget penalty once (None), or
    k_coef and then each fallback."""
    return [None] if cfg.penalty == "budget" else [cfg.k_coef, *cfg.k_coef_fallbacks]


def _prune(model, sites, means, task: TaskData, cfg: PruneConfig, on_step, on_attempt):
    """Train a mask with each penalty in turn until bisection finds a circuit; (mask, found, attempts)."""
    device = next(model.parameters()).device
    attempts = []
    for k_coef in penalties(cfg):
        if on_attempt is not None:
            on_attempt("budget penalty" if k_coef is None else f"k_coef={k_coef:g}")
        torch.manual_seed(cfg.seed)
        mask = NodeMask(sites, means, init_mean=cfg.init_tau).to(device)  # taus drawn on the CPU: any device
        per_node = train_mask(model, mask, task.train_examples(), cfg, on_step=on_step, k_coef=k_coef)
        log.info("%s: choosing the circuit's size on validation (bisection)", task.name)
        found = smallest_circuit(model, mask, mask_ranking(mask), task.validation, cfg.target_loss,
                                 cfg.validation_margin_se, len(task.test), cfg.size_tolerance)
        attempts.append(Attempt(per_node, int((mask.flat_taus() > 0).sum()), found is not None))
        if found is not None:
            break
    return mask, found, attempts


def find_circuit(model, sites: list[Site], means: dict[str, torch.Tensor], task: TaskData, cfg: PruneConfig,
                 *, prune_unsolved: bool = False, controls: bool = True, curve_points: int = CURVE_POINTS,
                 on_step=None, on_attempt=None) -> Found:
    """Prune `task` on `model`. A model that does not reach the target itself (on test) is reported
    as such and not pruned, unless `prune_unsolved` (the controls, whose point is that pruning alone
    must not make them reach the target).

    A mask that misses the target is retrained with each fallback penalty in turn, the same for
    every model (the controls too, so they get every chance the real models get). With `controls`,
    a circuit found also gets the nonsense twin and the attribution baseline (recipe switches). The
    loss-against-size curve has `curve_points` points, the last with every node the mask kept."""
    model.eval()
    start = time.time()
    full = two_way_scores(model, task.test)
    short = two_way_scores(model, last_tokens(task.test, cfg.short_range_tokens))
    result = TaskResult(full_loss=full["loss"], full_accuracy=full["accuracy"], short_range_loss=short["loss"],
                        short_range=short["loss"] <= cfg.target_loss, solved=full["loss"] <= cfg.target_loss,
                        device=str(next(model.parameters()).device),
                        examples={"train": len(task.train_examples()) if not callable(task.train) else None,
                                  "validation": len(task.validation), "test": len(task.test)})
    if not result.solved and not prune_unsolved:
        return Found(result, None, [])
    mask, found, result.attempts = _prune(model, sites, means, task, cfg, on_step, on_attempt)
    result.examples["train"] = len(task.train_examples())
    log.info("%s: loss against size along the mask's ranking, on test", task.name)
    curve = loss_edges_curve(model, mask, task.test, curve_points)  # along the ranking of the mask reported
    # the lowest test loss this mask offers, with every node it kept: the curve's last point
    result.mask_loss = curve[-1]["loss"] if curve else None
    gates = None
    if found is not None:
        gates, chosen_on = found
        log.info("%s: checking the circuit on test (sufficient, necessary, %d random circuits)", task.name,
                 cfg.random_draws)
        checks = check_circuit(model, mask, gates, task.test, cfg.target_loss, cfg.random_draws, cfg.seed)
        calibrated, calibration = calibrate_circuit(model, mask, gates, task.train_examples(), task.test)
        result.circuit = CircuitChecks.from_dict({
            **checks, "validation_loss": chosen_on["loss"], "validation_loss_se": chosen_on["loss_se"],
            "validation_bound": chosen_on["bound"],
            "fits_through_ablation": fits_through_ablation(checks["loss"], full["loss"]),
            "calibrated_loss": calibrated, "calibration": calibration.as_dict()})
        if controls and cfg.attribution_baseline:
            log.info("%s: the attribution-patching baseline", task.name)
            result.attribution = AttributionBaseline(**attribution_circuit(
                model, mask, task.train_examples(), task.validation, task.test, cfg.target_loss,
                cfg.validation_margin_se, cfg.size_tolerance))
        if controls and cfg.nonsense_control:
            result.nonsense = nonsense_control(model, sites, means, task, cfg, on_step, on_attempt)
        if controls and (registered := [c.name for c in CONTROLS if c.run is not None]):
            log.info("%s: the controls (%s)", task.name, ", ".join(registered))
            inputs = ControlInputs(model, mask, gates, task, cfg)
            result.controls = {c.name: c.run(inputs) for c in CONTROLS if c.run is not None}
    result.prune_seconds = time.time() - start
    return Found(result, gates, curve)


def nonsense_control(model, sites, means, task: TaskData, cfg: PruneConfig, on_step=None,
                     on_attempt=None) -> NonsenseControl:
    """Prune the task's nonsense twin with the same settings and retries; it should reach nothing."""
    def attempt(label: str) -> None:
        if on_attempt is not None:
            on_attempt(f"nonsense {label}")

    # only the curve's last point (the mask's loss) is reported: one test pass, not CURVE_POINTS
    twin = find_circuit(model, sites, means, task.nonsense(cfg.seed), cfg, prune_unsolved=True, controls=False,
                        curve_points=1, on_step=on_step, on_attempt=attempt).result
    circuit = twin.circuit
    return NonsenseControl(full_loss=twin.full_loss, mask_loss=twin.mask_loss, k_coef=[a.k_coef for a in twin.attempts],
                           chosen_on_validation=twin.reached_target, nodes=circuit.nodes if circuit else None,
                           loss=circuit.loss if circuit else None, reached_target=twin.sufficient)


def geometric_mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return math.exp(sum(math.log(max(v, 1)) for v in values) / len(values))
