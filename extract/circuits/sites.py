"""Node sites reached through hooks on the unmodified modules, and their mean activations.

A site (extract/arch) is a set of channels of one module's output, or input, so q, k and v can share
GPT-2's fused `c_attn` hook and no family needs forked modeling code. Which modules and channels
each family uses lives in its own module under extract/arch.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from extract.arch import SITE_NAMES, Site, node_sites

__all__ = ["SITE_NAMES", "Site", "count_nodes", "hooked", "node_sites", "site_means"]


def count_nodes(sites: list[Site]) -> int:
    return sum(s.width for s in sites)


def _main_output(output):
    """The tensor a module returns (attention modules return (output, weights))."""
    return output[0] if isinstance(output, tuple) else output


def _replace_main_output(output, tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def _channel_editor(sites: list[Site], edit):
    """x -> x with each site's channels replaced by `edit(site, channels)`, for the sites of one hook."""
    ordered = sorted(sites, key=lambda s: s.start)
    positions: dict[tuple[str, torch.device], torch.Tensor] = {}  # index tensors, made once per device

    def index(site, device):
        if (site.key, device) not in positions:
            positions[site.key, device] = torch.tensor(site.positions, device=device)
        return positions[site.key, device]

    def rewrite(x: torch.Tensor) -> torch.Tensor:
        if all(s.is_slice for s in ordered):  # one concatenation of untouched and edited slices
            pieces, cursor = [], 0
            for site in ordered:
                pieces += [x[..., cursor : site.start], edit(site, x[..., site.start : site.start + site.width])]
                cursor = site.start + site.width
            pieces.append(x[..., cursor:])
            x = torch.cat(pieces, dim=-1)
        else:
            for site in ordered:
                where = index(site, x.device)
                x = x.index_copy(-1, where, edit(site, x.index_select(-1, where)))
        return x

    return rewrite


@contextmanager
def hooked(model, sites: list[Site], edit):
    """Inside the block, `edit(site, x)` sees each site's channels (last axis) on every forward pass
    and returns their replacement; one hook per module and side, removed on exit."""
    groups: dict[tuple[str, bool], list[Site]] = {}
    for site in sites:
        groups.setdefault((site.module, site.on_input), []).append(site)
    handles = []
    for (path, on_input), group in groups.items():
        module, rewrite = model.get_submodule(path), _channel_editor(group, edit)
        if on_input:
            def pre_hook(module, args, rewrite=rewrite):
                return (rewrite(args[0]), *args[1:])

            handles.append(module.register_forward_pre_hook(pre_hook))
        else:
            def hook(module, args, output, rewrite=rewrite):
                return _replace_main_output(output, rewrite(_main_output(output)))

            handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def site_means(model, sites: list[Site], blocks: torch.Tensor, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Mean activation of every node over `blocks` (pooled over sequences and positions): the
    value a removed node is held at."""
    device = next(model.parameters()).device
    sums = {s.key: torch.zeros(s.width, dtype=torch.float64, device=device) for s in sites}
    count = 0

    def record(site, x):
        sums[site.key] += x.detach().double().reshape(-1, site.width).sum(0)
        return x

    with hooked(model, sites, record):
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start : start + batch_size].to(device)
            model(input_ids=batch)
            count += batch.numel()
    return {key: (value / count).float().cpu() for key, value in sums.items()}
