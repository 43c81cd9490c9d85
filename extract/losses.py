"""The training losses: next-token cross-entropy, KL divergence to the frozen dense teacher, and
optionally the normalised error of each block's output against the teacher's (SquareHead).

At a 50k vocabulary the (positions x vocabulary) tensors of these losses are the largest thing a
step makes beside the weights and activations (one is 103 MB at 2 x 256 tokens in float32), so
they are written to hold few at once: the student's logits are let go once their log-softmax
exists, and the KL is summed chunk by chunk from the teacher's raw logits by an autograd function
that keeps only those logits and one log-sum-exp per position (bench/README.md has the measurements).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

KL_CHUNK_FLOATS = 2**22  # a chunk of the KL sum spans this many (position, token) entries: 16 MB per temporary


class _KLToTeacher(torch.autograd.Function):
    """Sum over positions and vocabulary of p * (log p - log q): p the teacher's distribution, from
    its logits (batch, positions + 1, vocabulary), of which all but the last position are used; log q
    the student's log-probabilities (batch, positions, vocabulary). The subtraction happens element by
    element before the sum, as in F.kl_div (a difference of two large sums loses digits)."""

    @staticmethod
    def forward(ctx, student_logp: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        batch, positions, vocab = student_logp.shape
        rows = max(1, KL_CHUNK_FLOATS // vocab)
        lse = torch.empty(batch, positions, 1, dtype=torch.float32, device=student_logp.device)
        total = torch.zeros((), dtype=torch.float32, device=student_logp.device)
        for b in range(batch):
            for start in range(0, positions, rows):
                end = min(start + rows, positions)
                logits = teacher_logits[b, start:end].float()
                lse[b, start:end] = logits.logsumexp(-1, keepdim=True)
                teacher_logp = logits - lse[b, start:end]
                total += (teacher_logp.exp() * (teacher_logp - student_logp[b, start:end])).sum()
        ctx.save_for_backward(teacher_logits, lse)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        teacher_logits, lse = ctx.saved_tensors
        teacher_p = (teacher_logits[:, : lse.shape[1]].float() - lse).exp_()
        return teacher_p.mul_(-grad), None  # d/d(log q) of -p log q, in one new tensor


def token_losses(model, input_ids: torch.Tensor, teacher=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean next-token cross-entropy and, with a teacher, mean KL(teacher || model) per token."""
    ce, kl, _ = training_losses(model, input_ids, teacher)
    return ce, kl


def training_losses(model, input_ids: torch.Tensor, teacher=None, hidden: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """`token_losses`, and with `hidden` (and a teacher) the SquareHead term of the blocks' outputs."""
    states = {"output_hidden_states": True} if hidden else {}
    out = model(input_ids=input_ids, **states)
    student_logp = next_token_logp(out)
    ce = F.nll_loss(student_logp.flatten(0, 1), input_ids[:, 1:].flatten())
    if teacher is None:
        return ce, None, None
    with torch.no_grad():
        taught = teacher(input_ids=input_ids, **states)
    kl = kl_to_teacher(student_logp, taught.logits)
    return ce, kl, hidden_state_error(out.hidden_states, taught.hidden_states) if hidden else None


def next_token_logp(output) -> torch.Tensor:
    """Log-probabilities of every next token (all positions but the last), in float32. One log-softmax
    serves both losses (cross_entropy would compute its own); its backward needs only its output, so
    the output's logits are let go."""
    logp = F.log_softmax(output.logits[:, :-1].float(), dim=-1)
    output.logits = None
    return logp


def kl_to_teacher(student_logp: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) per position, from the teacher's raw logits."""
    positions = student_logp.shape[0] * student_logp.shape[1]
    return _KLToTeacher.apply(student_logp, teacher_logits) / positions


def hidden_state_error(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """SquareHead (Kurtic et al. 2023): each block's output error, squared and over the teacher's squared
    norm, so every block counts alike whatever its scale; the mean over blocks (the embeddings excluded)."""
    errors = [(s.float() - t.float()).square().sum() / t.float().square().sum().clamp(min=1e-12)
              for s, t in zip(student[1:], teacher[1:], strict=True)]
    return torch.stack(errors).mean()
