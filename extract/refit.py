"""Refit the kept weights of each matrix to the dense model's outputs, by least squares (issue 31).

Pruning a matrix to its top-k leaves the kept weights with the values they had among all the others;
they are no longer the best weights for that pattern. For one matrix, with X the sparse model's input
to it and Y the dense model's output of the same module on calibration text, each output unit j keeps
the inputs S_j and its weights are re-solved as

    w_j[S_j] = argmin ||X[:, S_j] w - (Y_j - b_j)||^2 + ridge ||w||^2,

the pattern unchanged (so every tensor still holds exactly its top-k count; a solved weight that comes
out exactly zero is the only way a count could fall, and is left to the next projection). Matrices are
refitted one at a time in forward order, each on inputs that already pass through the refitted ones
before it (SparseGPT's order). Embeddings are left as they are: they have no input to fit on.
"""
from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor

from extract.arch import family_of

RIDGE = 1e-3  # of the mean input variance: keeps the solve stable where kept inputs are nearly collinear


def _module(model, weight_name: str) -> torch.nn.Module:
    return model.get_submodule(weight_name.rsplit(".", 1)[0])


@torch.no_grad()
def _recorded(model, modules: list[torch.nn.Module], blocks: torch.Tensor, batch: int, want: str
              ) -> list[torch.Tensor]:
    """Each module's input (`want="input"`) or output over `blocks`, as (tokens, features), from one pass."""
    rows: list[list[torch.Tensor]] = [[] for _ in modules]

    def hook_for(i):
        def hook(_module, args, output):
            rows[i].append((args[0] if want == "input" else output).detach().float().flatten(0, -2))
        return hook

    handles = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(modules)]
    try:
        for start in range(0, len(blocks), batch):
            model(input_ids=blocks[start:start + batch])
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(r) for r in rows]


@torch.no_grad()
def refit_weights(weight_in_out: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The least-squares weights of `weight_in_out`'s pattern (in, out) mapping `inputs` (tokens, in) to
    `targets` (tokens, out), one output unit at a time; units with nothing kept stay zero."""
    x, y = inputs.double(), targets.double()
    gram, cross = x.T @ x, x.T @ y
    ridge = RIDGE * float(gram.diagonal().mean().clamp(min=1e-12))
    solved = torch.zeros_like(weight_in_out, dtype=torch.float64)
    kept = weight_in_out != 0
    for unit in range(weight_in_out.shape[1]):
        rows = kept[:, unit].nonzero().flatten()
        if len(rows):
            system = gram[rows][:, rows] + ridge * torch.eye(len(rows), dtype=gram.dtype)
            solved[rows, unit] = torch.linalg.solve(system, cross[rows, unit])
    return solved.to(weight_in_out.dtype)


@torch.no_grad()
def refit_to_teacher(student, teacher, blocks: torch.Tensor, batch: int = 8) -> float:
    """Refit every sparsified matrix of `student` to `teacher`'s module outputs on `blocks`, in forward
    order; returns the mean over matrices of the relative output error after the refit."""
    was_training = student.training
    student.eval()  # no dropout in the calibration pass
    matrices = family_of(student).edge_matrices(student)
    if any(isinstance(student.get_parameter(m.weight), DTensor) for m in matrices):
        raise NotImplementedError("refitting FSDP2-sharded weights is not supported yet")
    dense_outputs = _recorded(teacher, [_module(teacher, m.weight) for m in matrices], blocks, batch, "output")
    errors = []
    for matrix, y in zip(matrices, dense_outputs):
        param, module = student.get_parameter(matrix.weight), _module(student, matrix.weight)
        x = _recorded(student, [module], blocks, batch, "input")[0]  # through the matrices refitted before it
        bias = getattr(module, "bias", None)
        target = y - bias.float() if bias is not None else y
        in_out = param.data if matrix.stored == "in_out" else param.data.T
        new = refit_weights(in_out.float(), x, target)
        errors.append(float((x @ new - target).square().sum() / target.square().sum().clamp(min=1e-12)))
        param.data.copy_(new if matrix.stored == "in_out" else new.T)
    student.train(was_training)
    return sum(errors) / len(errors) if errors else 0.0
