"""One task on one model: score the full model, prune a circuit, check it, trace loss against size.

The same function runs for the dense model, the sparse model and the random-init control, so
nothing special-cases either (DESIGN.md). Everything returned is plain data for the report and the
circuit file.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from extract.circuits.calibrate import calibrate_circuit
from extract.circuits.checks import check_circuit
from extract.circuits.edges import count_edges
from extract.circuits.masks import NodeMask
from extract.circuits.prune import discretise, scores_with_gates, top_k_gates, train_mask
from extract.circuits.sites import Site
from extract.recipe import PruneConfig
from extract.tasks.examples import TaskExample, two_way_scores

# A circuit scoring under half the full model's loss (and at least this much under it) does the task
# better than the model does: the mean ablation is fitting the task, not exposing a mechanism.
ABLATION_FIT_MARGIN = 0.05
CURVE_POINTS = 8


@dataclass
class TaskData:
    name: str
    train: list[TaskExample] | Callable[[], list[TaskExample]]  # a callable builds them when first needed
    heldout: list[TaskExample]

    def train_examples(self) -> list[TaskExample]:
        if callable(self.train):
            self.train = self.train()
        return self.train


@dataclass
class Found:
    result: dict  # the report entry: full_loss, full_accuracy, solved, circuit (or None), ...
    gates: dict[str, torch.Tensor] | None  # the circuit's 0/1 gates per site, None without one
    curve: list[dict]  # [{"nodes", "edges", "loss"}] along the tau ranking


def fits_through_ablation(circuit_loss: float, full_loss: float) -> bool:
    return circuit_loss < 0.5 * full_loss and full_loss - circuit_loss > ABLATION_FIT_MARGIN


def loss_edges_curve(model, mask: NodeMask, heldout: list[TaskExample], points: int = CURVE_POINTS) -> list[dict]:
    """Held-out loss and edges of the top-k circuits for k on a geometric grid inside the kept set."""
    candidates = torch.nonzero(mask.flat_taus() > 0).flatten()
    if len(candidates) == 0:
        return []
    sizes = sorted({max(1, round(len(candidates) ** (i / (points - 1)))) for i in range(points)})
    curve = []
    for k in sizes:
        gates = top_k_gates(mask, k, candidates)
        loss = scores_with_gates(model, mask, gates, heldout)["loss"]
        curve.append({"nodes": k, "edges": count_edges(model, {s: g.bool() for s, g in gates.items()}), "loss": loss})
    return curve


def penalties(cfg: PruneConfig) -> list[float]:
    """k_coef, then each fallback: the penalties one task on one model may be pruned with."""
    return [cfg.k_coef, *cfg.k_coef_fallbacks]


def find_circuit(model, sites: list[Site], means: dict[str, torch.Tensor], task: TaskData, cfg: PruneConfig,
                 *, prune_unsolved: bool = False, on_step=None, on_attempt=None) -> Found:
    """Prune `task` on `model`. A model that does not reach the target itself is reported as such
    and not pruned, unless `prune_unsolved` (the random-init control, whose point is that pruning
    alone must not make it reach the target).

    A mask that misses the target is retrained with each fallback penalty in turn, the same for
    every model (the control too, so it gets every chance the real models get)."""
    model.eval()
    device = next(model.parameters()).device
    start = time.time()
    full = two_way_scores(model, task.heldout)
    result = {"full_loss": full["loss"], "full_accuracy": full["accuracy"],
              "solved": full["loss"] <= cfg.target_loss, "circuit": None, "device": str(device)}
    if not result["solved"] and not prune_unsolved:
        return Found(result, None, [])
    attempts = []
    for k_coef in penalties(cfg):
        if on_attempt is not None:
            on_attempt(k_coef)
        torch.manual_seed(cfg.seed)
        mask = NodeMask(sites, means).to(device)  # taus drawn on the CPU: the same circuit on any device
        train_mask(model, mask, task.train_examples(), replace(cfg, k_coef=k_coef), on_step=on_step)
        found = discretise(model, mask, task.heldout, cfg.target_loss)
        attempts.append({"k_coef": k_coef, "mask_kept_nodes": int((mask.flat_taus() > 0).sum()),
                         "reached_target": found is not None})
        if found is not None:
            break
    result.update(k_coef=attempts[-1]["k_coef"], mask_kept_nodes=attempts[-1]["mask_kept_nodes"], attempts=attempts)
    curve = loss_edges_curve(model, mask, task.heldout)  # along the ranking of the mask reported
    if found is not None:
        gates, scores = found  # bisection already scored this circuit on the held-out examples
        circuit = check_circuit(model, mask, gates, task.heldout, cfg.target_loss, alone=scores)
        circuit["fits_through_ablation"] = fits_through_ablation(circuit["loss"], full["loss"])
        calibrated, calibration = calibrate_circuit(model, mask, gates, task.train_examples(), task.heldout)
        circuit["calibrated_loss"], circuit["calibration"] = calibrated, calibration.as_dict()
        result["circuit"] = circuit
    else:
        gates = None
    result["reached_target"] = found is not None
    result["prune_seconds"] = time.time() - start
    return Found(result, gates, curve)


def geometric_mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return math.exp(sum(math.log(max(v, 1)) for v in values) / len(values))
