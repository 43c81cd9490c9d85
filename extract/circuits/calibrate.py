"""Logit scale-and-shift calibration of a discrete circuit (METHOD.md section 3, "Discretise").

Mean-ablating most of a model often leaves a circuit that picks the right token with badly scaled
or shifted final logits. The authors fit a scale and a shift of the final logits (16 LBFGS steps)
before scoring. Here the fit uses training examples and the calibrated loss is measured on test
ones. It is reported beside the raw loss; the checks (sufficient, necessary) use the raw loss, so
a circuit never passes because of the fit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from extract.circuits.masks import NodeMask
from extract.tasks.examples import TaskExample, last_position_logits

FIT_STEPS = 16
FIT_EXAMPLES = 256  # the first training pairs; a 1 + (answer tokens) parameter fit needs few


@dataclass
class Calibration:
    scale: float
    shift: dict[int, float]  # per answer token; only differences between a task's tokens matter

    def as_dict(self) -> dict:
        return {"scale": self.scale, "shift": {str(t): b for t, b in sorted(self.shift.items())}}


def _answer_tokens(examples: list[TaskExample]) -> torch.Tensor:
    """(n, 2) token ids: the target in column 0, the alternative in column 1."""
    return torch.tensor([[e.target_id, e.alternative_id] for e in examples])


@torch.no_grad()
def answer_logits(model, mask: NodeMask, gates: dict[str, torch.Tensor], examples: list[TaskExample],
                  batch_size: int = 64) -> torch.Tensor:
    """(n, 2) final logits of the target and the alternative with only the circuit kept."""
    rows = []
    with mask.with_gates(model, gates):
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            last = last_position_logits(model, batch)
            rows.append(last.gather(1, _answer_tokens(batch).to(last.device)).cpu())
    return torch.cat(rows)


def _loss(logits: torch.Tensor, tokens: torch.Tensor, scale, shift_of) -> torch.Tensor:
    """Mean two-way cross-entropy of `scale * logits + shift[token]` (target in column 0)."""
    calibrated = scale * logits + shift_of(tokens)
    return -F.log_softmax(calibrated, dim=1)[:, 0].mean()


def fit_calibration(logits: torch.Tensor, examples: list[TaskExample], steps: int = FIT_STEPS) -> Calibration:
    tokens = _answer_tokens(examples)
    vocab = sorted(set(tokens.flatten().tolist()))
    column = {t: i for i, t in enumerate(vocab)}
    local = tokens.clone().apply_(column.__getitem__)
    scale = torch.ones((), requires_grad=True)
    shift = torch.zeros(len(vocab), requires_grad=True)
    optimizer = torch.optim.LBFGS([scale, shift], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = _loss(logits, local, scale, lambda t: shift[t])
        loss.backward()
        return loss

    optimizer.step(closure)
    scale, shift = scale.detach(), shift.detach()
    return Calibration(float(scale), {t: float(shift[column[t]]) for t in vocab})


def calibrated_loss(calibration: Calibration, logits: torch.Tensor, examples: list[TaskExample]) -> float:
    tokens = _answer_tokens(examples)
    shift = tokens.clone().float().apply_(lambda t: calibration.shift.get(int(t), 0.0))
    return float(_loss(logits, tokens, calibration.scale, lambda _: shift))


def calibrate_circuit(model, mask: NodeMask, gates: dict[str, torch.Tensor], train: list[TaskExample],
                      test: list[TaskExample]) -> tuple[float, Calibration]:
    """(test loss after the fit, the fitted calibration)."""
    fit_on = train[:FIT_EXAMPLES]
    calibration = fit_calibration(answer_logits(model, mask, gates, fit_on), fit_on)
    return calibrated_loss(calibration, answer_logits(model, mask, gates, test), test), calibration
