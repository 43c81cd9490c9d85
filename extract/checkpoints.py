"""Resumable training: the run's state, Accelerate checkpoints renamed into place whole, resuming from the
newest one that loads, and the training log kept in step with it.

A checkpoint is written under a scratch name and renamed to `step-N` once complete; the two newest
are kept. A rerun of the same command loads the newest one that loads, sets a damaged one aside, and
drops the log lines written after it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from extract import atomic
from extract.errors import UserError
from extract.paths import CHECKPOINTS_DIRNAME, TRAIN_LOG_FILE

CHECKPOINT_PATTERN = re.compile(r"step-(\d+)")


class CheckpointError(UserError, RuntimeError):
    """Every checkpoint of a run to resume is unreadable; they have been set aside."""


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    wall_seconds: float = 0.0
    dense_heldout_loss: float | None = None
    processes: int = 1
    distributed_type: str = "NO"

    def save(self, path: Path) -> None:
        atomic.write_json_atomic(path, self.__dict__)

    @classmethod
    def load(cls, path: Path) -> TrainState:
        return cls(**json.loads(Path(path).read_text()))


def latest_checkpoint(directory: Path) -> Path | None:
    """The complete checkpoint with the highest step (scratch folders start with a dot)."""
    if not Path(directory).is_dir():
        return None
    found = [(int(m.group(1)), p) for p in Path(directory).iterdir()
             if (m := CHECKPOINT_PATTERN.fullmatch(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def prune_checkpoints(directory: Path, keep: int = 2) -> None:
    found = sorted((int(m.group(1)), p) for p in Path(directory).iterdir()
                   if (m := CHECKPOINT_PATTERN.fullmatch(p.name)))
    for _, path in found[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(accelerator: Accelerator, out: Path, state: TrainState,
                    modules: dict[str, torch.nn.Module] | None = None) -> None:
    """Every process writes its part of the Accelerate state, and the main process `modules` (trained
    beside the model, replicated on every process) as NAME.safetensors; the folder is renamed into
    place once whole."""
    ckpt_dir = Path(out) / CHECKPOINTS_DIRNAME
    scratch = ckpt_dir / f".step-{state.step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(scratch, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(scratch))
    if accelerator.is_main_process:
        state.save(scratch / "trainer_state.json")
        for name, module in (modules or {}).items():
            save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()},
                      scratch / f"{name}.safetensors")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        os.replace(scratch, ckpt_dir / f"step-{state.step}")
        prune_checkpoints(ckpt_dir)
    accelerator.wait_for_everyone()


def resume(accelerator: Accelerator, out: Path, steps: int, modules: dict[str, torch.nn.Module] | None = None
           ) -> TrainState:
    """The state to go on from: the newest checkpoint that loads (its model, optimizer, scheduler and
    random states loaded into `accelerator`'s prepared objects, and `modules` from their files), or a
    fresh start with an empty log."""
    out = Path(out)
    resumed_from, state = _load_newest_good_checkpoint(accelerator, out / CHECKPOINTS_DIRNAME, modules or {})
    log = out / TRAIN_LOG_FILE
    if resumed_from is not None:
        accelerator.print(f"resuming from {resumed_from} (step {state.step}/{steps})")
        if accelerator.is_main_process:
            _truncate_log(log, state.step)
    elif accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        log.unlink(missing_ok=True)
    state.processes, state.distributed_type = accelerator.num_processes, str(accelerator.distributed_type.value)
    return state


def append_log(out: Path, record: dict) -> None:
    with open(Path(out) / TRAIN_LOG_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, last_step: int) -> None:
    """On resume, drop log lines written after the checkpoint we resume from."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= last_step]
    atomic.write_text_atomic(path, "".join(line + "\n" for line in kept))


def _load_newest_good_checkpoint(accelerator: Accelerator, ckpt_dir: Path, modules: dict[str, torch.nn.Module]
                                 ) -> tuple[Path | None, TrainState]:
    """Load the newest checkpoint that loads. One that does not (a file cut short or corrupted on disk)
    is set aside as `.broken-step-N`, with a warning, and the one before it is tried; when none is left
    the run stops and says so, since a half-loaded checkpoint may have overwritten the model."""
    broken = []
    while (ckpt := latest_checkpoint(ckpt_dir)) is not None:
        try:
            state = TrainState.load(ckpt / "trainer_state.json")
            accelerator.load_state(str(ckpt))
            for name, module in modules.items():
                module.load_state_dict(load_file(ckpt / f"{name}.safetensors"))
            return ckpt, state
        # what a damaged file raises depends on which file and how (safetensors, the restricted
        # unpickler, json, the OS); any of them means this checkpoint cannot be trusted
        except Exception as error:  # noqa: BLE001
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                shutil.rmtree(ckpt.parent / f".broken-{ckpt.name}", ignore_errors=True)  # from an earlier rerun
                os.replace(ckpt, ckpt.parent / f".broken-{ckpt.name}")
            accelerator.wait_for_everyone()
            broken.append(ckpt.name)
            accelerator.print(f"warning: {ckpt} cannot be loaded ({type(error).__name__}: {str(error)[:200]}); "
                              f"set aside as {ckpt.parent / ('.broken-' + ckpt.name)}")
    if broken:
        raise CheckpointError(f"{ckpt_dir}: no checkpoint loads ({', '.join(broken)} set aside as .broken-*); "
                              "rerun the same command to start this run's training over")
    return None, TrainState()
