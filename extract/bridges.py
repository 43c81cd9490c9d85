"""Bridges between the dense model and its sparse extraction (METHOD.md section 7, Gao et al. 2025).

A bridge site is the residual stream before one attention or one MLP. At each, an encoder maps the
dense model's residual to the sparse model's (linear, then AbsTopK) and a decoder maps it back
(linear). The residual is reached through hooks on the unmodified modules, like the node sites:
before attention it is the block's input; before the MLP it is the block's input plus the attention's
output, so a replacement there is written as the attention output that adds up to it. Where attention
and MLP read the same stream in parallel (GPT-NeoX's `use_parallel_residual`) the sites are the block
inputs alone.

The bridges are saved beside the sparse model as `bridges.safetensors` and `bridges.json`; the sparse
model itself stays a plain `from_pretrained` folder.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from extract import atomic
from extract.arch import family_of, node_sites
from extract.errors import UserError

BRIDGES_WEIGHTS = "bridges.safetensors"
BRIDGES_CONFIG = "bridges.json"


class BridgesError(UserError, ValueError):
    """Bridges that do not fit the models they are used with, or files that do not hold bridges."""


@dataclass(frozen=True)
class ResidualSite:
    """The residual stream before layer `layer`'s attention (`kind` "attn") or MLP ("mlp")."""

    layer: int
    kind: str
    block: str  # the layer's module path
    attention: str  # its attention module's path (an MLP site is written through its output)

    @property
    def key(self) -> str:
        return f"{self.layer}.{self.kind}"


def residual_sites(model) -> list[ResidualSite]:
    """The bridge sites of a model, in forward order."""
    by_layer: dict[int, dict[str, str]] = {}
    for site in node_sites(model):
        by_layer.setdefault(site.layer, {})[site.name] = site.module
    parallel = family_of(model).parallel_residual(model.config)
    out = []
    for layer, modules in sorted(by_layer.items()):
        block = modules["attn_in"].rsplit(".", 1)[0]  # the pre-attention norm sits in the block
        kinds = ("attn",) if parallel else ("attn", "mlp")
        out += [ResidualSite(layer, kind, block, modules["attn_out"]) for kind in kinds]
    return out


def _main(output):
    return output[0] if isinstance(output, tuple) else output


Edit = Callable[[str, torch.Tensor], torch.Tensor]


@contextmanager
def residual_stream(model, sites: list[ResidualSite], edit: Edit):
    """Inside the block, `edit(key, h)` sees the residual stream `h` (batch, positions, width) at each
    site on every forward pass and returns it (the pass goes on untouched) or its replacement."""
    handles, block_input = [], {}
    for site in sites:
        if site.kind == "attn":
            def before_block(module, args, kwargs, site=site):
                h = args[0] if args else kwargs["hidden_states"]
                new = edit(site.key, h)
                block_input[site.layer] = new
                if new is h:
                    return None
                return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

            handles.append(model.get_submodule(site.block).register_forward_pre_hook(before_block, with_kwargs=True))
        else:
            def after_attention(module, args, output, site=site):
                written = _main(output)
                before = block_input[site.layer]
                h = before + written  # what the block adds next, bit for bit
                new = edit(site.key, h)
                if new is h:
                    return None
                return (new - before, *output[1:]) if isinstance(output, tuple) else new - before

            handles.append(model.get_submodule(site.attention).register_forward_hook(after_attention))
            if not any(s.kind == "attn" and s.layer == site.layer for s in sites):  # the block input is needed
                def remember(module, args, kwargs, layer=site.layer):
                    block_input[layer] = args[0] if args else kwargs["hidden_states"]

                handles.append(model.get_submodule(site.block).register_forward_pre_hook(remember, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def recording(into: dict[str, torch.Tensor]) -> Edit:
    """An edit that stores every site's residual in `into` and changes nothing."""
    def record(key: str, h: torch.Tensor) -> torch.Tensor:
        into[key] = h
        return h

    return record


def replacing(key: str, value: Callable[[torch.Tensor], torch.Tensor]) -> Edit:
    """An edit that replaces site `key`'s residual by `value(h)` and leaves the other sites alone."""
    return lambda site, h: value(h) if site == key else h


def abs_topk(x: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest-magnitude channels of each position (the paper's AbsTopK); all with k None."""
    if k is None or k >= x.shape[-1]:
        return x
    kept = x.abs().topk(k, dim=-1).indices
    return torch.zeros_like(x).scatter(-1, kept, x.gather(-1, kept))


def _name(key: str) -> str:
    return key.replace(".", "_")  # ModuleDict names cannot hold dots


class Bridges(torch.nn.Module):
    """One encoder (dense -> sparse, then AbsTopK) and one decoder (sparse -> dense) per site key."""

    def __init__(self, keys: list[str], dense_width: int, sparse_width: int, topk: int | None = None):
        super().__init__()
        self.keys, self.dense_width, self.sparse_width, self.topk = list(keys), dense_width, sparse_width, topk
        self.encoders = torch.nn.ModuleDict({_name(k): torch.nn.Linear(dense_width, sparse_width) for k in keys})
        self.decoders = torch.nn.ModuleDict({_name(k): torch.nn.Linear(sparse_width, dense_width) for k in keys})

    @classmethod
    def for_models(cls, dense, sparse, topk: int | None = None, init: str = "identity") -> Bridges:
        """Bridges at every site of `sparse`, which must have the dense model's layers and sites."""
        keys = [s.key for s in residual_sites(sparse)]
        dense_keys = [s.key for s in residual_sites(dense)]
        if keys != dense_keys:
            raise BridgesError(f"the sparse model's bridge sites {keys[:4]}... differ from the dense model's "
                               f"{dense_keys[:4]}...: bridges join models of the same layers")
        bridges = cls(keys, dense.config.hidden_size, sparse.config.hidden_size, topk)
        if init == "identity":
            bridges.set_identity()
        return bridges

    @torch.no_grad()
    def set_identity(self) -> None:
        """Bridges that are exact at step 0: the identity at equal widths. Into a wider sparse model
        (extract/widen.py) the encoder copies the dense residual into the first channels and its mean
        into the rest, as the widened model carries it; the decoder reads the first channels back."""
        for linear in (*self.encoders.values(), *self.decoders.values()):
            linear.weight.copy_(torch.eye(*linear.weight.shape))
            linear.bias.zero_()
        for encoder in self.encoders.values():
            encoder.weight[self.dense_width :] = 1.0 / self.dense_width

    def encode(self, key: str, dense_h: torch.Tensor) -> torch.Tensor:
        return abs_topk(self.encoders[_name(key)](dense_h), self.topk)

    def decode(self, key: str, sparse_h: torch.Tensor) -> torch.Tensor:
        return self.decoders[_name(key)](sparse_h)

    def config(self) -> dict:
        return {"sites": self.keys, "dense_width": self.dense_width, "sparse_width": self.sparse_width,
                "topk": self.topk}

    def save(self, folder: Path) -> None:
        """`bridges.safetensors` and `bridges.json` into `folder`, each written whole or not at all."""
        folder = Path(folder)
        weights = {name: t.detach().contiguous().cpu() for name, t in self.state_dict().items()}
        with atomic.atomic_file(folder / BRIDGES_WEIGHTS) as scratch:
            save_file(weights, scratch)
        atomic.write_json_atomic(folder / BRIDGES_CONFIG, self.config())

    @classmethod
    def load(cls, folder: Path) -> Bridges:
        folder = Path(folder)
        config_path, weights_path = folder / BRIDGES_CONFIG, folder / BRIDGES_WEIGHTS
        if not config_path.is_file() or not weights_path.is_file():
            raise BridgesError(f"{folder}: no bridges ({BRIDGES_CONFIG} and {BRIDGES_WEIGHTS}); the run was "
                               "sparsified without bridges.enabled")
        try:
            config = json.loads(config_path.read_text())
            bridges = cls(config["sites"], config["dense_width"], config["sparse_width"], config.get("topk"))
            bridges.load_state_dict(load_file(weights_path))
        except (KeyError, ValueError, RuntimeError, OSError, SafetensorError) as error:
            raise BridgesError(f"{folder}: the bridges do not load ({type(error).__name__}: {error})") from error
        return bridges


def has_bridges(folder: Path) -> bool:
    return (Path(folder) / BRIDGES_CONFIG).is_file()


def check_fits(bridges: Bridges, sparse) -> None:
    """BridgesError unless the bridges were trained for a model with `sparse`'s sites and width."""
    keys = [s.key for s in residual_sites(sparse)]
    if keys != bridges.keys or sparse.config.hidden_size != bridges.sparse_width:
        raise BridgesError(f"the bridges are for sites {bridges.keys[:3]}... at width {bridges.sparse_width}, the "
                           f"model has {keys[:3]}... at width {sparse.config.hidden_size}")
