"""Learn a node mask for a task, then bisect for the smallest circuit that reaches the target loss.

Objective (METHOD.md section 3): two-way task loss + a penalty per kept node, with Heaviside gates
and a sigmoid straight-through gradient, AdamW, tau clamped to [-1, 1] after every step. The penalty
adapts to hold the task loss at a budget under the target (`BudgetPenalty`, the default), or is a
fixed k_coef ramped in over the first `prune.k_coef_ramp` of the steps (`penalty_weight`). The
discrete circuit is the top-k nodes by tau, with k bisected inside the set the
trained mask kept. The mask trains on the task's train split and bisection reads the validation
split; the test split is left for the checks (find.py).
"""
from __future__ import annotations

import math
import random

import torch

from extract.circuits.masks import NodeMask
from extract.recipe import PruneConfig
from extract.tasks.examples import TaskExample, two_way_loss, two_way_scores


def penalty_weight(step: int, steps: int, ramp: float) -> float:
    """The share of k_coef a mask step pays: rising linearly from 0 over the first `ramp` of the steps.

    With the full penalty from the first step, a model that solves the task almost perfectly (task
    loss 1e-4) gives every node a task gradient far below the penalty's; Adam's steps then carry every
    tau down together, the whole mask switches off in two steps, and whether it recovers depends on
    the machine's rounding. Ramped in, the penalty first exceeds the task gradient of the nodes that
    matter least, so nodes leave in order of importance (docs/circuits.md: measured)."""
    return 1.0 if ramp <= 0 else min(1.0, step / (ramp * steps))


class BudgetPenalty:
    """The node penalty's weight, adapted every step so the mask's task loss sits at a budget under the
    target: a multiplier for "as few nodes as possible with the task loss at most the budget", as
    Sparse Attention Post-Training's loss-budget controller adapts its own (arXiv 2512.05865).

    The penalty is `weight * kept / nodes`. It starts where the nodes' own task gradients are (`start`,
    set from the first step's), so that only the least important feel it, whatever the model's size
    and however well it does the task; it then grows by `rate` (in log space) per step while the
    smoothed task loss is under the budget and falls as fast while it is over, so nodes leave in order
    of importance until the loss reaches the budget. A fixed penalty per node does not carry over
    between models: on SmolLM2-135M, 1e-3 switched the mask off to chance within 10 steps (issue 30)."""

    def __init__(self, budget: float, nodes: int, rate: float, smoothing: float = 0.7):
        self.budget, self.nodes, self.rate, self.smoothing = budget, nodes, rate, smoothing
        self.log_weight = 0.0  # until `start` sets it from the first step's gradients
        self.smoothed: float | None = None

    @property
    def weight(self) -> float:
        return math.exp(self.log_weight)

    def start(self, task_gradients: torch.Tensor, quantile: float = 0.5) -> None:
        """Begin at the `quantile` of the nodes' task-gradient magnitudes (per node)."""
        scale = float(task_gradients.abs().float().quantile(quantile))
        self.log_weight = math.log(max(scale, 1e-12) * self.nodes)

    def per_node(self) -> float:
        """The weight as a penalty per kept node: what k_coef is to a fixed penalty."""
        return self.weight / self.nodes

    def update(self, task_loss: float) -> None:
        s = self.smoothing
        self.smoothed = task_loss if self.smoothed is None else s * self.smoothed + (1 - s) * task_loss
        error = (self.budget - self.smoothed) / self.budget
        self.log_weight += self.rate * max(-1.0, min(1.0, error))


def train_mask(model, mask: NodeMask, examples: list[TaskExample], cfg: PruneConfig, on_step=None,
               k_coef: float | None = None) -> float:
    """Optimise the mask's taus with the model frozen and in eval mode (GPT-2 configs carry dropout).
    With `k_coef` (or cfg.penalty "fixed": cfg.k_coef), a fixed penalty per kept node, ramped in;
    otherwise the budget penalty. Returns the penalty per kept node at the last step."""
    if k_coef is None and cfg.penalty == "fixed":
        k_coef = cfg.k_coef
    model.eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(mask.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)
    nodes = sum(s.width for s in mask.sites)
    budget = None if k_coef is not None else BudgetPenalty(cfg.loss_budget * cfg.target_loss, nodes,
                                                           cfg.penalty_rate)
    per_node = k_coef
    with mask.applied(model):
        for step in range(cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * (1 - step / cfg.steps)  # linear decay
            batch = rng.sample(examples, min(cfg.batch_size, len(examples)))
            task_loss = two_way_loss(model, batch)[0].mean()
            kept = mask.kept()
            if budget is None:
                per_node = k_coef * penalty_weight(step, cfg.steps, cfg.k_coef_ramp)
            else:  # the first step measures the task gradients the budget penalty starts from
                per_node = budget.per_node() if step else 0.0
            loss = task_loss + per_node * kept
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if budget is not None and step == 0:
                budget.start(torch.cat([mask.tau(s).grad.flatten() for s in mask.sites]))
            optimizer.step()
            mask.clamp_()
            if budget is not None:
                budget.update(float(task_loss.detach()))
            if on_step is not None:
                on_step(step, float(task_loss.detach()), float(kept.detach()))
    return per_node


def mask_ranking(mask: NodeMask) -> torch.Tensor:
    """Flat node indices the trained mask kept (tau > 0), highest tau first: the order circuits grow in.
    Outside the kept set the tau ranking means nothing."""
    taus = mask.flat_taus()
    kept = torch.nonzero(taus > 0).flatten()
    return kept[taus[kept].argsort(descending=True)]


def gates_of(mask: NodeMask, chosen: torch.Tensor) -> dict[str, torch.Tensor]:
    """0/1 gates per site keeping the nodes at flat indices `chosen`."""
    flat = torch.zeros_like(mask.flat_taus())
    flat[chosen] = 1.0
    return {s.key: piece for s, piece in zip(mask.sites, flat.split([s.width for s in mask.sites]))}


def scores_with_gates(model, mask: NodeMask, gates: dict[str, torch.Tensor], examples) -> dict[str, float]:
    with mask.with_gates(model, gates):
        return two_way_scores(model, examples)


def smallest_k(loss_at, low: int, high: int, target: float, tolerance: float = 0.0) -> int | None:
    """Smallest k in [low, high] with loss_at(k) <= target, by bisection (loss assumed to fall as k
    grows), or a k at most `tolerance` (a fraction of k) above it; None when even k = high misses
    the target. The tolerance saves the last steps of a bisection over a large circuit: from 66,398
    kept nodes of SmolLM2-135M, 1% stops after about 7 of the 17 evaluations."""
    if high < low or loss_at(high) > target:
        return None
    while high - low > tolerance * high:
        middle = (low + high) // 2
        if loss_at(middle) <= target:
            high = middle
        else:
            low = middle + 1
    return high  # always evaluated, and within the target


def smallest_circuit(model, mask: NodeMask, ranking: torch.Tensor, validation: list[TaskExample], target: float,
                     margin_se: float, test_size: int | None = None, size_tolerance: float = 0.0):
    """(gates, validation scores) of the smallest top-k of `ranking` (or one at most `size_tolerance`
    larger) whose validation loss plus `margin_se` standard errors is at most `target`, or None. The
    scores carry that upper bound as "bound".

    The margin is what makes the choice hold on unseen examples: a circuit picked because it scores
    just under the target on validation would miss it on test about half the time. With
    `test_size`, the standard error is that of the difference between the validation mean and a
    test mean over `test_size` examples (both samples' noise, the test's estimated from the
    validation spread), so the bound predicts the test loss itself."""
    cache: dict[int, dict[str, float]] = {}
    inflation = math.sqrt(1 + len(validation) / test_size) if test_size else 1.0

    def loss_at(k: int) -> float:
        if k not in cache:
            scores = scores_with_gates(model, mask, gates_of(mask, ranking[:k]), validation)
            cache[k] = {**scores, "bound": scores["loss"] + margin_se * scores["loss_se"] * inflation}
        return cache[k]["bound"]

    k = smallest_k(loss_at, 1, len(ranking), target, size_tolerance)
    if k is None:
        return None
    return gates_of(mask, ranking[:k]), cache[k]
