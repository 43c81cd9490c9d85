"""The terms that train bridges (METHOD.md section 7), and the same figures on held-out text.

Beside the sparse model's own cross-entropy and KL to the dense model, at each bridge site i:
- NMSE of the encoder's prediction of the sparse residual from the dense one, and of the decoder's
  prediction of the dense residual from the sparse one, each over the target's variance (the
  normaliser is held fixed, so no term gains by inflating its target);
- KL(dense || dense to i, encode, sparse from i) and KL(dense || sparse to i, decode, dense from i).
The dense model is frozen: its weights get no gradient, but the second hybrid pass carries one
through its layers back to the decoder and the sparse model.

The hybrid passes cost one partial model each. `hybrid_keys` draws one site per direction per step
(seeded by the step, so a resumed run draws the same), an unbiased estimate of the mean over sites.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from extract.bridges import Bridges, ResidualSite, recording, replacing, residual_sites, residual_stream
from extract.losses import kl_to_teacher, next_token_logp


@dataclass
class BridgedLosses:
    ce: torch.Tensor
    kl: torch.Tensor
    nmse: torch.Tensor  # mean over sites of the encoder's and the decoder's NMSE, summed
    kl_dense_to_sparse: torch.Tensor  # mean over the sites drawn
    kl_sparse_to_dense: torch.Tensor


def nmse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error over the target's variance about its mean (over positions, per channel, summed);
    the normaliser is a constant to the gradient."""
    flat = target.reshape(-1, target.shape[-1]).float()
    variance = (flat - flat.mean(0)).square().sum().detach().clamp(min=1e-12)
    return (prediction.reshape(flat.shape).float() - flat).square().sum() / variance


def hybrid_keys(keys: list[str], mode: str, seed: int, step: int, micro: int = 0) -> tuple[list[str], list[str]]:
    """The sites whose hybrid passes run this micro-step: (dense -> sparse, sparse -> dense)."""
    if mode == "all":
        return list(keys), list(keys)
    draw = random.Random(f"bridges/{seed}/{step}/{micro}")  # not the global generator: the data order stays
    return [draw.choice(keys)], [draw.choice(keys)]


def bridged_losses(student, teacher, bridges: Bridges, sites: list[ResidualSite], input_ids: torch.Tensor,
                   keys: tuple[list[str], list[str]], forward=None) -> BridgedLosses:
    """Every term for one batch. `student` is the plain module the hooks attach to; `forward` the one
    to call for the main pass (Accelerate's wrapper), by default `student` itself."""
    output, sparse_h, dense_h, dense_logits = _both_residuals(student, teacher, sites, input_ids, forward)
    student_logp = next_token_logp(output)
    del output  # the logits: the hybrid passes below need the memory
    ce = F.nll_loss(student_logp.flatten(0, 1), input_ids[:, 1:].flatten())
    kl = kl_to_teacher(student_logp, dense_logits)
    del student_logp
    reconstruction = torch.stack([nmse(bridges.encode(k, dense_h[k]), sparse_h[k])
                                  + nmse(bridges.decode(k, sparse_h[k]), dense_h[k]) for k in bridges.keys]).mean()
    into_sparse, into_dense = keys
    kl_d2s = torch.stack([_hybrid_kl(student, sites, k, lambda h, k=k: bridges.encode(k, dense_h[k]), input_ids,
                                     dense_logits) for k in into_sparse]).mean()
    kl_s2d = torch.stack([_hybrid_kl(teacher, sites, k, lambda h, k=k: bridges.decode(k, sparse_h[k]), input_ids,
                                     dense_logits) for k in into_dense]).mean()
    return BridgedLosses(ce, kl, reconstruction, kl_d2s, kl_s2d)


def _both_residuals(student, teacher, sites, input_ids, forward=None):
    """One pass of each model recording its residual at every site: (student output, sparse residuals,
    dense residuals, dense logits). The dense pass takes no gradient."""
    sparse_h, dense_h = {}, {}
    with residual_stream(student, sites, recording(sparse_h)), residual_stream(teacher, sites, recording(dense_h)):
        output = (forward or student)(input_ids=input_ids)
        with torch.no_grad():
            dense_logits = teacher(input_ids=input_ids).logits
    return output, sparse_h, dense_h, dense_logits


def _hybrid_kl(model, sites, key: str, value, input_ids, dense_logits) -> torch.Tensor:
    """KL from the dense logits to `model` run with site `key`'s residual replaced by `value(h)`."""
    with residual_stream(model, [s for s in sites if s.key == key], replacing(key, value)):
        return kl_to_teacher(next_token_logp(model(input_ids=input_ids)), dense_logits)


@torch.no_grad()
def bridge_metrics(student, teacher, bridges: Bridges, blocks: torch.Tensor, batch_size: int = 8) -> dict:
    """Per site, on `blocks` of held-out text: the encoder's and the decoder's NMSE and both hybrid KLs
    (every site, no sampling), each the mean over batches."""
    sites, device = residual_sites(student), next(student.parameters()).device
    sums: dict[str, dict[str, float]] = {k: {"encoder_nmse": 0.0, "decoder_nmse": 0.0, "kl_dense_to_sparse": 0.0,
                                             "kl_sparse_to_dense": 0.0} for k in bridges.keys}
    batches = [blocks[i : i + batch_size].to(device) for i in range(0, len(blocks), batch_size)]
    for ids in batches:
        _, sparse_h, dense_h, dense_logits = _both_residuals(student, teacher, sites, ids)
        for k in bridges.keys:
            row = sums[k]
            row["encoder_nmse"] += float(nmse(bridges.encode(k, dense_h[k]), sparse_h[k])) / len(batches)
            row["decoder_nmse"] += float(nmse(bridges.decode(k, sparse_h[k]), dense_h[k])) / len(batches)
            row["kl_dense_to_sparse"] += float(_hybrid_kl(student, sites, k, lambda h, k=k: bridges.encode(
                k, dense_h[k]), ids, dense_logits)) / len(batches)
            row["kl_sparse_to_dense"] += float(_hybrid_kl(teacher, sites, k, lambda h, k=k: bridges.decode(
                k, sparse_h[k]), ids, dense_logits)) / len(batches)
    return sums
