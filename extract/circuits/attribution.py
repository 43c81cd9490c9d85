"""The attribution-patching baseline (METHOD.md section 3: learned masks must beat it).

Each node is scored by the first-order estimate of how much mean-ablating it changes the task loss:
the gradient of the loss with respect to the node's activation, times (mean - activation), summed
over positions and averaged over examples. With a gate g in `x * g + mean * (1 - g)`, that is
exactly minus d loss / d g at g = 1, so one backward pass through the masked model scores every
node. The circuit keeps the top-k nodes by the absolute score, with k chosen on validation by the
same rule as for learned masks, and is scored on test.
"""
from __future__ import annotations

import torch

from extract.circuits.checks import circuit_scores
from extract.circuits.masks import NodeMask
from extract.circuits.prune import smallest_circuit
from extract.tasks.examples import TaskExample, two_way_loss

ATTRIBUTION_EXAMPLES = 512  # training examples the gradients are averaged over


def attribution_scores(model, mask: NodeMask, examples: list[TaskExample], batch_size: int = 64) -> torch.Tensor:
    """Flat over the mask's sites (site order): the estimated rise in mean task loss when each node
    alone is mean-ablated."""
    device = next(model.parameters()).device
    model.eval().requires_grad_(False)
    gates = {s.key: torch.ones(s.width, device=device, requires_grad=True) for s in mask.sites}
    with mask.with_gates(model, gates):
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            (two_way_loss(model, batch)[0].sum() / len(examples)).backward()
    return torch.cat([-gates[s.key].grad for s in mask.sites]).detach()


def attribution_circuit(model, mask: NodeMask, train: list[TaskExample], validation: list[TaskExample],
                        test: list[TaskExample], target: float, margin_se: float, size_tolerance: float = 0.0) -> dict:
    """The baseline's circuit at the target: nodes, edges and test loss (None where no top-k reaches
    the target on validation)."""
    scores = attribution_scores(model, mask, train[:ATTRIBUTION_EXAMPLES]).abs()
    ranking = scores.argsort(descending=True)
    found = smallest_circuit(model, mask, ranking, validation, target, margin_se, len(test), size_tolerance)
    if found is None:
        return {"nodes": None, "edges": None, "loss": None, "sufficient": False}
    gates, chosen_on = found
    return {**circuit_scores(model, mask, gates, test, target), "validation_loss": chosen_on["loss"]}
