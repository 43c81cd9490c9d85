"""Is the sparse model still the dense one? (METHOD.md section 6.)

A fine-tune into a weight-sparse model can turn into training a new model that imitates the dense
one's outputs; its circuits then describe the new model, not the one the user brought. Measured on
every run, from the saved weights:

- weight overlap, per sparsified tensor and over all of them: the share of the sparse tensor's
  nonzeros that are among the dense tensor's largest magnitudes at the same count (1.0: the sparse
  model kept the dense model's own largest weights; the share a random pick would get is the
  density), the share with the dense weight's sign, and the sparse tensor's norm over the norm of
  the dense tensor cut to its largest at that count (what one-shot magnitude pruning keeps);
- representation match, per residual site (the embeddings and the output of each block): how much
  of the dense model's activation a linear map of the sparse one's predicts (R^2), the map fitted on
  the first half of the held-out blocks and scored on the other half, which it never saw.

The tasks kept (those the dense model solves that the sparse model still solves, on test) come from
the prune stage's summary (extract/report_view.py).
"""
from __future__ import annotations

import torch

from extract.arch import sparse_tensors
from extract.sparsity import units_at_minimum

RIDGE = 1e-4  # of the mean feature variance: keeps the fit stable on a rank-deficient (sparse) stream
BATCH = 8


@torch.no_grad()
def weight_overlap(dense, sparse, embeddings: bool = True) -> dict:
    """{"among_dense_largest", "sign_agreement", "norm_ratio"} over every sparsified tensor (weighted by
    its nonzeros), the same over the attention and MLP matrices alone under "matrices" (the embeddings,
    denser, otherwise weigh most), and "tensors": one row per tensor."""
    dense_params = dict(dense.named_parameters())
    rows, matrix = [], []
    for tensor in sparse_tensors(sparse, embeddings):
        s = tensor.param.detach().float().flatten()
        d = dense_params[tensor.name].detach().float().flatten().to(s.device)
        kept = s != 0
        count = int(kept.sum())
        if count == 0:
            continue
        largest = torch.zeros_like(kept)
        largest[d.abs().topk(count).indices] = True
        rows.append({"tensor": tensor.name, "nonzero": count, "density": count / s.numel(),
                     "among": int((kept & largest).sum()), "signs": int((kept & (s.sign() == d.sign())).sum()),
                     "sparse_sq": float(s.square().sum()), "pruned_dense_sq": float(d[largest].square().sum())})
        matrix.append(tensor.unit_axis is not None)  # embeddings have no unit axis
    return {**_overall(rows), "matrices": _overall([r for r, m in zip(rows, matrix) if m]),
            "tensors": [{"tensor": r["tensor"], "nonzero": r["nonzero"], "density": r["density"], **_overall([r])}
                        for r in rows]}


def _overall(rows: list[dict]) -> dict:
    """The three figures over `rows` together: shares of all their nonzeros, and the norm of them all."""
    kept, dense_sq = sum(r["nonzero"] for r in rows), sum(r["pruned_dense_sq"] for r in rows)
    return {"among_dense_largest": sum(r["among"] for r in rows) / kept if kept else None,
            "sign_agreement": sum(r["signs"] for r in rows) / kept if kept else None,
            "norm_ratio": (sum(r["sparse_sq"] for r in rows) / dense_sq) ** 0.5 if dense_sq else None}


@torch.no_grad()
def _residual_streams(model, blocks: torch.Tensor) -> list[torch.Tensor]:
    """Per residual site (hidden_states: the embeddings, then each block's output), (tokens, width)."""
    device = next(model.parameters()).device
    sites: list[list[torch.Tensor]] = []
    for start in range(0, len(blocks), BATCH):
        states = model(input_ids=blocks[start:start + BATCH].to(device), output_hidden_states=True).hidden_states
        if not sites:
            sites = [[] for _ in states]
        for site, state in zip(sites, states):
            site.append(state.float().flatten(0, 1).cpu())
    return [torch.cat(site) for site in sites]


def linear_r2(fit_x: torch.Tensor, fit_y: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """R^2 on (x, y) of the ridge-regularised least-squares affine map fitted on (fit_x, fit_y)."""
    fit_x, x = fit_x.double(), x.double()
    fit_y, y = fit_y.double(), y.double()
    x_mean, y_mean = fit_x.mean(0), fit_y.mean(0)
    xc = fit_x - x_mean
    gram = xc.T @ xc
    ridge = RIDGE * float(gram.diagonal().mean().clamp(min=1e-12))
    weights = torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ (fit_y - y_mean))
    predicted = (x - x_mean) @ weights + y_mean
    total = float((y - y.mean(0)).square().sum())
    return 1.0 - float((y - predicted).square().sum()) / total if total > 0 else float("nan")


def representation_match(dense, sparse, blocks: torch.Tensor) -> list[dict]:
    """Per residual site: R^2 of the dense activation from the sparse one on held-out blocks the map
    was not fitted on (the first half of `blocks` fits it, the second half scores it)."""
    if len(blocks) < 2:
        raise ValueError("representation match needs at least 2 held-out blocks (one to fit, one to score)")
    half = len(blocks) // 2
    dense_sites, sparse_sites = _residual_streams(dense, blocks), _residual_streams(sparse, blocks)
    if len(dense_sites) != len(sparse_sites):
        raise ValueError(f"the dense model has {len(dense_sites)} residual sites, the sparse one {len(sparse_sites)}")
    split = half * blocks.shape[1]
    return [{"site": "embeddings" if i == 0 else f"block {i - 1}",
             "r2": linear_r2(s[:split], d[:split], s[split:], d[split:])}
            for i, (d, s) in enumerate(zip(dense_sites, sparse_sites))]


def fidelity(dense, sparse, blocks: torch.Tensor, embeddings: bool = True, min_per_unit: int = 0) -> dict:
    """Weight overlap and representation match of `sparse` with `dense` (report.json's "fidelity"), and
    how many units keep only the per-unit minimum (a floor that binds keeps weights by position)."""
    sites = representation_match(dense, sparse, blocks)
    return {"weights": {**weight_overlap(dense, sparse, embeddings),
                        "units_at_minimum": units_at_minimum(sparse_tensors(sparse, embeddings), min_per_unit)},
            "representation": {"mean_r2": sum(s["r2"] for s in sites) / len(sites), "sites": sites,
                               "fit_blocks": len(blocks) // 2, "scored_blocks": len(blocks) - len(blocks) // 2}}
