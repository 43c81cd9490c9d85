"""FSDP2 through Accelerate's plugin: what sparsifying needs beyond plain data parallelism.

A launch with `--config_file configs/fsdp2.yaml` (or `--use_fsdp --fsdp_version 2`) shards every
parameter's rows across the processes. What that needs beyond data parallelism lives here:

- Accelerate turns FSDP on for GPUs (and other accelerators) only: on a CPU it silently falls back
  to DDP. FSDP2 itself runs over gloo, so a launch that asks for FSDP on a CPU gets FSDP2 from
  `enable_on_cpu`: the same command runs on a laptop and on GPUs, and the tests run it.
- FSDP1 is refused (`check_version`): its flat parameters hide each tensor's shape, so the
  projection could not rank each tensor's entries (SparseML wrote masks to stale references there
  and logged 0%). FSDP2 keeps each parameter a DTensor of its rows, which `sparsity.project_`
  projects exactly (extract/sharded.py).
- The frozen teacher is sharded like the student (`shard_frozen`) but not handed to
  `accelerator.prepare`: a prepared model is saved in every checkpoint, and the teacher is the dense
  model the run started from, which a resume loads again.
- FSDP2 leaves the root module's parameters (embeddings, final norm, head) gathered after a forward,
  expecting the backward to need them. After a forward without one (the teacher's, an evaluation's)
  they would stay gathered, and `model.parameters()` would list the gathered copies: a gradient
  rescale over those saw no gradients for 4 of GPT-2's 28 tensors. `reshard` puts them back.
- A gathered state dict holds tied weights as two copies (`retied`).
"""
from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, parse_flag_from_env
from torch.distributed.tensor import DTensor

from extract.errors import UserError


class FSDPVersionError(UserError, ValueError):
    """FSDP1 was asked for; the projection needs FSDP2's per-tensor shards."""


def check_version() -> None:
    """Refuse an FSDP launch that asks for FSDP1, before Accelerate builds its plugin from the launch's
    settings (which on a CPU fails with a message about devices)."""
    version = os.environ.get("FSDP_VERSION", "1")
    if parse_flag_from_env("ACCELERATE_USE_FSDP") and version != "2":
        raise FSDPVersionError(
            f"FSDP version {version} was asked for (the accelerate config's fsdp_version, or --fsdp_version); "
            "sparsifying needs FSDP2, whose parameters keep their shapes: use configs/fsdp2.yaml or --fsdp_version 2")


def enable_on_cpu(accelerator: Accelerator) -> bool:
    """Turn on FSDP2 where the launch asked for FSDP but Accelerate fell back to DDP for want of a
    GPU; True if it did. The plugin is built from the launch's FSDP_* settings, as Accelerate builds
    it on GPUs."""
    if accelerator.distributed_type != DistributedType.MULTI_CPU or not parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return False
    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    # AcceleratorState copies PartialState's fields each time it is constructed: set both
    PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    return True


def shard_frozen(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The frozen teacher, sharded with the student's FSDP2 settings (or moved to the device)."""
    if not accelerator.is_fsdp2:
        return model.to(accelerator.device)
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    model = fsdp2_prepare_model(accelerator, model)
    model.register_forward_hook(lambda module, args, output: reshard(module))
    return model


def reshard(model: torch.nn.Module) -> None:
    """Free the gathered weights an FSDP2 forward without a backward leaves on the root module."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.reshard()


def held_share(model: torch.nn.Module) -> float:
    """The fraction of the model's parameter entries this process holds (1 when not sharded)."""
    held = total = 0
    for p in model.parameters():
        held += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
        total += p.numel()
    return held / max(total, 1)


def retied(model: torch.nn.Module, weights: dict) -> dict:
    """A gathered state dict holds a tied parameter (GPT-2's wte and lm_head) as separate copies,
    which save_pretrained, looking for shared storage, cannot tell are tied: point every name of a
    tied parameter at one tensor again, and save_pretrained keeps the name the model expects."""
    first = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        main = first.setdefault(id(param), name)
        if main != name and main in weights:
            weights[name] = weights[main]
    return weights
