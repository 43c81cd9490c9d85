"""A sparse model wider than the dense one (issue 32, item 3): `model.width_multiplier`.

Gao et al. find that a larger sparse model at the same number of nonzeros reaches a better loss with
smaller circuits; bridges make the two widths independent. `widen` builds a GPT-2 whose residual
stream, attention and MLP are m times wider and which computes the dense model's function exactly at
step 0 (up to rounding), so sparsifying still starts from the dense model:

- the dense weights sit in the first channels of every residual, attention and MLP axis; each
  attention head keeps its channels at the front of its wider slot, with its queries scaled by
  sqrt(m) so that GPT-2's 1/sqrt(head_dim) scaling is unchanged;
- the extra residual channels carry the mean of the original ones: every residual write (embeddings,
  attention and MLP outputs) writes its own mean there. A LayerNorm over the wider stream then sees
  the same mean and 1/m of the variance, which the norms' gains (divided by sqrt(m)) and epsilon
  (divided by m) undo; the normalised extra channels are exactly zero, and nothing reads them yet;
- what the extra width reads is drawn at random (GPT-2's initializer range, from a generator seeded by
  `seed`), and what it writes is zero: extra MLP neurons read the stream and write nothing; extra
  attention channels have random queries and values but zero keys (so no score changes) and write
  nothing; the queries, values and MLP inputs take random weights from the extra residual channels
  too (the keys zero there as well), which are exactly zero after the norms at step 0, and the norms'
  gains there are the original channels' mean. Zeros on both sides would be a saddle the gradient
  never leaves (a neuron with no input weights has no activation, so its output weights get no
  gradient, and the other way round): the extra width would stay dead and its per-unit minimum would
  spend the budget on zeros.
The bridges' encoders start as that map (the dense residual, then its mean in the extra channels) and
the decoders as the projection onto the first channels (extract/bridges.py).
"""
from __future__ import annotations

import copy
import math

import torch

from extract.arch import family_of
from extract.errors import UserError


class WidenError(UserError, ValueError):
    """A model the width multiplier cannot widen exactly."""


def _with_mean_channels(weight: torch.Tensor, extra: int) -> torch.Tensor:
    """(rows, d) -> (rows, d + extra): each row's mean over its d columns, repeated in the new columns."""
    return torch.cat([weight, weight.mean(-1, keepdim=True).expand(*weight.shape[:-1], extra)], dim=-1)


def _padded(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """`t` in the leading corner of a zero tensor of `shape`."""
    out = torch.zeros(shape, dtype=t.dtype)
    out[tuple(slice(0, n) for n in t.shape)] = t
    return out


def _head_positions(heads: int, head_dim: int, multiplier: int) -> torch.Tensor:
    """Where each original attention channel (head h, channel c) sits in the wider layout."""
    return torch.tensor([h * head_dim * multiplier + c for h in range(heads) for c in range(head_dim)])


def _random_readers(name: str, t: torch.Tensor, d: int, d_mlp: int, positions: torch.Tensor,
                    draw) -> torch.Tensor:
    """`t` (already in the wider layout) with random weights wherever the extra width reads (module
    docstring); its writes stay zero. Other tensors come back as they are."""
    if not name.endswith(("c_fc.weight", "c_attn.weight")):
        return t
    t = t.clone()
    if name.endswith("c_fc.weight"):  # (residual in, neurons out)
        t[d:] = draw(t[d:].shape)
        t[:, d_mlp:] = draw(t[:, d_mlp:].shape)
    elif name.endswith("c_attn.weight"):  # (residual in, q | k | v out)
        width = t.shape[1] // 3
        t[d:, :width], t[d:, 2 * width:] = draw((t.shape[0] - d, width)), draw((t.shape[0] - d, width))
        extra = torch.ones(width, dtype=torch.bool).index_fill(0, positions, False)
        for part in (0, 2):  # queries and values; keys stay zero, so no attention score moves
            columns = part * width + torch.nonzero(extra).squeeze(1)
            t[:, columns] = draw((t.shape[0], len(columns)))
    return t


@torch.no_grad()
def widen(model, multiplier: int, seed: int = 0):
    """A copy of `model` (a GPT-2) `multiplier` times wider that computes the same function."""
    if multiplier == 1:
        return model
    if family_of(model).name != "gpt2":
        raise WidenError(f"model.width_multiplier: only GPT-2 models can be widened yet, got a "
                         f"{model.config.model_type} model")
    c = model.config
    d, heads = c.n_embd, c.n_head
    head_dim, d_mlp = d // heads, c.n_inner or 4 * d
    config = copy.deepcopy(c)
    config.n_embd, config.n_inner, config.layer_norm_epsilon = d * multiplier, d_mlp * multiplier, \
        c.layer_norm_epsilon / multiplier
    with torch.random.fork_rng():  # every weight is overwritten; the data order must not move
        wide = type(model)(config).to(next(model.parameters()).dtype)
    old, new = model.state_dict(), {}
    extra, positions = d * (multiplier - 1), _head_positions(heads, head_dim, multiplier)
    q_scale = math.sqrt(multiplier) if c.scale_attn_weights else 1.0
    generator = torch.Generator().manual_seed(seed)  # not the global one: the data order must not move

    def draw(shape):
        return torch.randn(shape, generator=generator, dtype=model.dtype) * c.initializer_range
    for name, t in old.items():
        target = wide.state_dict()[name].shape
        if name.endswith(("wte.weight", "wpe.weight")) or name.endswith(("c_proj.weight", "c_proj.bias")):
            t = _with_mean_channels(t, extra)  # residual writes: their mean in the extra channels
            if name.endswith("attn.c_proj.weight"):  # rows are value channels: into the wider head layout
                t = torch.zeros(target, dtype=t.dtype).index_copy(0, positions, t)
        elif ".ln_" in name or name.startswith("transformer.ln_f"):
            if name.endswith("weight"):  # the extra channels' gains: the mean (they read exactly 0 at step 0)
                t = torch.cat([t, t.mean().expand(extra)]) / math.sqrt(multiplier)
        elif name.endswith(("c_attn.weight", "c_attn.bias")):
            parts = list(t.split(d, dim=-1))  # q | k | v
            parts[0] = parts[0] * q_scale
            wider = [torch.zeros(*t.shape[:-1], d * multiplier, dtype=t.dtype).index_copy(-1, positions, p)
                     for p in parts]
            t = torch.cat(wider, dim=-1)
        elif name == "lm_head.weight":
            continue  # tied to wte
        new[name] = _random_readers(name, _padded(t, target), d, d_mlp, positions, draw)
    wide.load_state_dict(new, strict=False)
    wide.tie_weights()
    return wide.train(model.training)
