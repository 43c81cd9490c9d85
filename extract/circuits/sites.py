"""Node sites per architecture family, reached through forward hooks on the unmodified modules.

A site is a set of channels at one place in a layer (METHOD.md section 3). Each site is a slice
of one module's output, so q, k and v share the `c_attn` hook and GPT-2 needs no forked code.
Adding a family is one more entry in SITE_MAPS.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from extract.models import family_of

SITE_NAMES = ("attn_in", "q", "k", "v", "attn_out", "mlp_in", "mlp", "mlp_out")


@dataclass(frozen=True)
class Site:
    layer: int
    name: str  # one of SITE_NAMES
    module: str  # dotted path from the model root
    start: int  # channel slice of the module's output
    width: int

    @property
    def key(self) -> str:
        return f"{self.layer}.{self.name}"


def gpt2_sites(model) -> list[Site]:
    config = model.config
    d, d_mlp = config.n_embd, config.n_inner or 4 * config.n_embd
    sites = []
    for layer in range(config.n_layer):
        block = f"transformer.h.{layer}"
        sites += [
            Site(layer, "attn_in", f"{block}.ln_1", 0, d),  # the residual read into attention
            Site(layer, "q", f"{block}.attn.c_attn", 0, d),
            Site(layer, "k", f"{block}.attn.c_attn", d, d),
            Site(layer, "v", f"{block}.attn.c_attn", 2 * d, d),
            Site(layer, "attn_out", f"{block}.attn", 0, d),  # the attention residual write
            Site(layer, "mlp_in", f"{block}.ln_2", 0, d),
            Site(layer, "mlp", f"{block}.mlp.act", 0, d_mlp),  # neurons, after the activation
            Site(layer, "mlp_out", f"{block}.mlp", 0, d),  # the MLP residual write
        ]
    return sites


SITE_MAPS = {"gpt2": gpt2_sites}


def node_sites(model) -> list[Site]:
    family_of(model)  # a clear error for an unmapped family
    return SITE_MAPS[model.config.model_type](model)


def count_nodes(sites: list[Site]) -> int:
    return sum(s.width for s in sites)


def _main_output(output):
    """The tensor a module returns (GPT-2 attention returns (output, weights))."""
    return output[0] if isinstance(output, tuple) else output


def _replace_main_output(output, tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


@contextmanager
def hooked(model, sites: list[Site], edit):
    """Inside the block, `edit(site, x)` sees each site's channels on every forward pass and
    returns their replacement; one forward hook per module, removed on exit."""
    by_module: dict[str, list[Site]] = {}
    for site in sites:
        by_module.setdefault(site.module, []).append(site)
    handles = []
    for path, module_sites in by_module.items():
        def hook(module, args, output, module_sites=module_sites):
            x = _main_output(output)
            pieces, cursor = [], 0
            for site in sorted(module_sites, key=lambda s: s.start):
                pieces += [x[..., cursor : site.start], edit(site, x[..., site.start : site.start + site.width])]
                cursor = site.start + site.width
            pieces.append(x[..., cursor:])
            return _replace_main_output(output, torch.cat(pieces, dim=-1))

        handles.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def site_means(model, sites: list[Site], blocks: torch.Tensor, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Mean activation of every node over `blocks` (pooled over sequences and positions): the
    value a removed node is held at."""
    sums = {s.key: torch.zeros(s.width, dtype=torch.float64) for s in sites}
    count = 0

    def record(site, x):
        sums[site.key] += x.detach().double().reshape(-1, site.width).sum(0).cpu()
        return x

    device = next(model.parameters()).device
    with hooked(model, sites, record):
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start : start + batch_size].to(device)
            model(input_ids=batch)
            count += batch.numel()
    return {key: (value / count).float() for key, value in sums.items()}
