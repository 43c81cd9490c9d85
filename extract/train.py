"""The Accelerate training loop: sparsity-inducing fine-tuning, and dense pretraining with sparsity off.

torchtune's recipe shape: `setup()` builds everything a run needs (the model and its frozen dense
teacher, the data, the optimizer, the sparsifier, the state resumed from the newest checkpoint),
`train()` runs the steps, and `save_final()` writes the model. One step is, in METHOD.md's order:
forward/backward over the micro-batches, rescale the gradients to RMS 1, AdamW step, projection to
the step's density; then the step is logged, evaluated and checkpointed. A rerun of the same command
resumes from the newest checkpoint (extract/checkpoints.py).

`phase(name)` is a hook around each part of a step and of the set-up (a context manager; none by
default): bench/bench_full_size.py times and measures memory through it.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ContextManager

import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from extract import atomic, fsdp
from extract.arch import sparse_tensors
from extract.bridge_losses import bridged_losses, hybrid_keys
from extract.bridges import Bridges, residual_sites
from extract.checkpoints import TrainState, append_log, latest_checkpoint, resume, save_checkpoint
from extract.data import prepare_data
from extract.errors import UserError
from extract.evaluation import heldout_metrics
from extract.losses import training_losses
from extract.models import load_model, load_tokenizer, random_like
from extract.outputs import RECIPE_FILE, recipe_yaml, save_recipe
from extract.paths import CHECKPOINTS_DIRNAME, MODEL_DIRNAME
from extract.recipe import OptimConfig, Recipe, RecipeError
from extract.refit import refit_to_teacher
from extract.sparsifier import Sparsifier, StepDensities, budget_densities
from extract.sparsity import base_lr_factor, density_floor, rescale_gradients_to_unit_rms
from extract.widen import widen

Phase = Callable[[str], ContextManager]


def no_phases(name: str) -> ContextManager:
    return contextlib.nullcontext()


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite; the last checkpoint is left untouched."""


def native_cpu_bf16() -> bool:
    """True where the CPU does bf16 matrix work in hardware (AVX512-BF16 or AMX); elsewhere
    autocast to bf16 is emulated and slower than float32 (measured: 1.7k vs 2.3k tokens/s)."""
    cpu = getattr(torch._C, "_cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if native_cpu_bf16() else "no"


def make_accelerator(recipe: Recipe) -> Accelerator:
    fsdp.check_version()
    # No GPU: cpu=True makes `--multi_gpu` on CPU a real gloo process group.
    accelerator = Accelerator(
        mixed_precision=resolve_precision(recipe.train.mixed_precision),
        cpu=not torch.cuda.is_available(),
        dynamo_backend="inductor" if recipe.train.compile else "no",
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    if accelerator.device.type == "cpu":
        # The cores shared among the processes (`accelerate launch` sets OMP_NUM_THREADS=1). Set here, for
        # every stage: a stage rerun on its own then sums in the same order and repeats its numbers exactly.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    if fsdp.enable_on_cpu(accelerator):
        accelerator.print("no GPU: FSDP2 runs over gloo on the CPU (Accelerate itself would fall back to DDP)")
    return accelerator


def build_optimizer(model, optim: OptimConfig, device: torch.device, bridges=None) -> torch.optim.Optimizer:
    # Weight decay on matrices (and embeddings), none on biases and norm gains. Bridges get groups of
    # their own (marked "bridges"), with their own learning rate and no decay.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if bridges is not None:
        groups.append({"params": list(bridges.parameters()), "weight_decay": 0.0, "bridges": True})
    return torch.optim.AdamW(
        groups, lr=optim.lr, betas=optim.betas, eps=optim.eps,
        # On a GPU torch's default (foreach) makes full-size temporaries of the moments, 4 or more
        # bytes per parameter at the step; the fused kernel makes none. CPUs keep the per-tensor loop.
        fused=device.type == "cuda",
    )


def apply_gradients(optimizer, params, optim: OptimConfig, scaler=None) -> None:
    """After backward: rescale the gradients to RMS 1 (and clip), take the optimizer step, zero them.

    Under fp16 the gradients still carry the GradScaler's factor (2**16 to start). Rescaling those to
    RMS 1 and letting the step unscale them afterwards would leave Adam gradients 2**16 times too
    small, which with eps = 0.1 barely move the weights. So they are unscaled first; the scaler then
    sees that and only skips a step whose gradients overflowed."""
    if scaler is not None:
        scaler.unscale_(getattr(optimizer, "optimizer", optimizer))  # the optimizer Accelerate wraps
    if optim.grad_rescale_rms:
        rescale_gradients_to_unit_rms(params)
    if optim.clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, optim.clip_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def learning_rate(recipe: Recipe, step: int, densities: StepDensities | None) -> float:
    """Warm-up then linear decay, times the sharkfin factor while sparsifying (METHOD.md section 2)."""
    lr = recipe.optim.lr * base_lr_factor(step / recipe.train.steps, recipe.optim.warmup_fraction)
    if densities is not None:
        lr *= densities.lr_factor
    return lr


def bridges_learning_rate(recipe: Recipe, step: int) -> float:
    """The bridges' own lr, with the run's warm-up and decay but not the sharkfin: Adam moves every
    weight by about the lr a step, and bridges that start exact at the sparsifying lr are noise within
    a few hundred steps (docs/bridges.md)."""
    return recipe.bridges.lr * base_lr_factor(step / recipe.train.steps, recipe.optim.warmup_fraction)


def hidden_weight(recipe: Recipe, step: int) -> float:
    """SquareHead's weight at `step`: loss.hidden_weight at the first step, falling linearly to 0 at the
    end of the anneal, so the sparse model ends distilled from the outputs alone."""
    anneal_steps = recipe.sparsity.anneal_fraction * recipe.train.steps if recipe.sparsity.enabled else 0
    if recipe.loss.hidden_weight == 0 or anneal_steps == 0:
        return 0.0
    return recipe.loss.hidden_weight * max(0.0, 1.0 - step / anneal_steps)


@dataclass
class Run:
    """Everything `setup()` builds for one training run."""

    recipe: Recipe
    accelerator: Accelerator
    tokenizer: object
    model: torch.nn.Module  # as Accelerate prepared it (DDP, FSDP2, compiled)
    raw_model: torch.nn.Module  # the plain module: parameter names without the wrappers' prefixes
    teacher: torch.nn.Module | None  # the frozen dense model, for the KL term
    optimizer: torch.optim.Optimizer
    batches: Iterator[torch.Tensor]  # endless, starting where a resumed run stopped
    heldout: torch.Tensor
    sparsifier: Sparsifier | None  # None: dense pretraining
    calibration: torch.Tensor | None  # training blocks the kept weights are refitted on (sparsity.refit_every)
    state: TrainState
    session_start: float  # wall time counts set-up (data, models, compilation) too
    phase: Phase = no_phases
    bridges: Bridges | None = None  # trained beside the model (recipe bridges:), outside Accelerate's wrappers
    bridge_sites: list = field(default_factory=list)  # the residual sites the bridges join, found once

    @property
    def saved_modules(self) -> dict[str, torch.nn.Module]:
        """What checkpoints hold beside Accelerate's own state."""
        return {"bridges": self.bridges} if self.bridges is not None else {}

    @property
    def out(self) -> Path:
        return Path(self.recipe.output_dir)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        bridges = list(self.bridges.parameters()) if self.bridges is not None else []
        return [p for p in self.model.parameters() if p.requires_grad] + bridges


def setup(recipe: Recipe, accelerator: Accelerator, phase: Phase = no_phases) -> Run:
    """Load the model, teacher and data, claim the output folder, prepare everything with Accelerate
    and resume from the newest checkpoint. Any user error (a model, a dataset, a density budget)
    is raised before the folder is claimed."""
    session_start = time.time()
    set_seed(recipe.train.seed)
    with phase("load model"):
        tokenizer = load_tokenizer(recipe.model)
        model = load_model(recipe.model, vocab_size=len(tokenizer))
    if recipe.sparsity.enabled and recipe.sparsity.refit_every and accelerator.is_fsdp2:
        raise RecipeError("sparsity.refit_every: not supported under FSDP2 yet (a refit solves whole matrices, "
                          "which FSDP2 shards); set it to 0")
    _check_bridges_supported(recipe, accelerator)
    teacher = None
    if recipe.loss.kl_weight > 0:  # sharded like the student under FSDP
        teacher = fsdp.shard_frozen(accelerator, copy.deepcopy(model).eval().requires_grad_(False))
        if recipe.train.compile:  # the teacher's forward runs every step too
            teacher = torch.compile(teacher)
    if recipe.model.random_start:  # the control: the checkpoint's shape and teacher, not its weights
        with torch.random.fork_rng():  # drawn without moving the generator, so the data order is the same
            model = random_like(model)
    model = widen(model, recipe.model.width_multiplier, recipe.train.seed)  # the same function, m times wider
    if recipe.sparsity.enabled:  # before the data: a budget error then costs seconds
        budget_densities(sparse_tensors(model, recipe.sparsity.embeddings), recipe.sparsity,
                         recipe.model.name_or_path)
    bridges = None
    if recipe.bridges.enabled:
        with torch.random.fork_rng():  # as above: a run with bridges sees the same batches as one without
            b = recipe.bridges
            bridges = Bridges.for_models(teacher, model, b.topk, b.init).to(accelerator.device)
    with accelerator.main_process_first(), phase("tokenise and pack data"):  # build the datasets cache once
        train_blocks, heldout, _ = prepare_data(recipe, tokenizer)
    if accelerator.is_main_process:  # the inputs have loaded: now the run claims its output folder
        save_recipe(recipe, Path(recipe.output_dir))
    model.train()
    if recipe.train.gradient_checkpointing:
        _enable_activation_checkpointing(model)
    optimizer = build_optimizer(model, recipe.optim, accelerator.device, bridges)
    with phase("prepare (shard)"):
        model, optimizer, loader = accelerator.prepare(model, optimizer, _loader(train_blocks, recipe))
    raw_model = accelerator.unwrap_model(model, keep_torch_compile=False)
    sparsifier = (Sparsifier(raw_model, recipe.sparsity, recipe.train.steps, recipe.model.name_or_path)
                  if recipe.sparsity.enabled else None)
    _announce(accelerator, raw_model, teacher, sparsifier)
    state = resume(accelerator, Path(recipe.output_dir), recipe.train.steps, {"bridges": bridges} if bridges else {})
    if state.dense_heldout_loss is None and recipe.model.init_config is None:
        with phase("held-out evaluation"):
            dense = teacher if recipe.model.random_start else raw_model  # the checkpoint, before any step
            state.dense_heldout_loss = heldout_metrics(dense, heldout, accelerator=accelerator)["loss"]
        accelerator.print(f"dense held-out loss {state.dense_heldout_loss:.4f}")
    micro_done = state.step * recipe.train.gradient_accumulation_steps  # micro-batches already consumed
    epoch, skip = (0, micro_done) if recipe.data.streaming else divmod(micro_done, len(loader))
    calibration = None
    if sparsifier is not None and recipe.sparsity.refit_every:
        rows = itertools.islice(train_blocks.with_format("torch"), recipe.sparsity.refit_blocks)
        calibration = torch.stack([row["input_ids"] for row in rows]).to(accelerator.device)
    return Run(recipe, accelerator, tokenizer, model, raw_model, teacher, optimizer, _batches(loader, epoch, skip),
               heldout, sparsifier, calibration, state, session_start, phase, bridges,
               residual_sites(raw_model) if bridges is not None else [])


def _check_bridges_supported(recipe: Recipe, accelerator: Accelerator) -> None:
    """Bridges run hooked partial passes beside the main one: what that has not been built for yet."""
    if not recipe.bridges.enabled:
        return
    unsupported = [(accelerator.is_fsdp2, "FSDP2 (the hybrid passes splice whole residual streams)"),
                   (recipe.train.compile, "train.compile (the passes are hooked differently every step)"),
                   (recipe.train.gradient_checkpointing, "train.gradient_checkpointing (recomputation re-runs hooks)")]
    for unsupported_here, what in unsupported:
        if unsupported_here:
            raise RecipeError(f"bridges.enabled: not supported with {what} yet; turn one of them off")


def train(recipe: Recipe, accelerator: Accelerator, phase: Phase = no_phases) -> Path:
    """Run (or resume) training; returns the directory of the saved final model."""
    final_dir = Path(recipe.output_dir) / MODEL_DIRNAME
    if (final_dir / "config.json").is_file():
        accelerator.print(f"{final_dir} already holds the trained model; skipping training")
        if accelerator.is_main_process:
            save_recipe(recipe, Path(recipe.output_dir))  # the task and prune settings this run goes on with
        return final_dir
    run = setup(recipe, accelerator, phase)
    state, t = run.state, recipe.train
    tokens_per_step = t.batch_size * recipe.data.block_size * t.gradient_accumulation_steps * accelerator.num_processes
    bar = tqdm(total=t.steps, initial=state.step, desc="sparsify" if run.sparsifier else "train",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    window_start, window_tokens = time.time(), 0
    while state.step < t.steps:
        # this step's densities and learning rate, computed once
        densities = run.sparsifier.before_step(state.step) if run.sparsifier else None
        lr = learning_rate(recipe, state.step, densities)
        for group in run.optimizer.param_groups:
            group["lr"] = bridges_learning_rate(recipe, state.step) if group.get("bridges") else lr
        # forward and backward over the micro-batches
        losses = _forward_backward(run, hidden_weight(recipe, state.step))
        # rescale to RMS 1, optimizer step, then the projection to the step's densities
        with phase("optimizer step"):
            apply_gradients(run.optimizer, run.params, recipe.optim, accelerator.scaler)
        if densities is not None:
            with phase("projection"):
                run.sparsifier.after_optimizer_step(densities)
            if run.sparsifier.refit_due(state.step):
                with phase("refit"):
                    _refit(run, bar)
        state.step += 1
        state.tokens += tokens_per_step
        window_tokens += tokens_per_step
        density = densities.overall if densities else 1.0
        # log the step's losses and speed, evaluate on held-out text, write them to the log
        record = None
        if state.step % t.log_every == 0 or state.step == t.steps:
            tok_s, window_start, window_tokens = window_tokens / max(time.time() - window_start, 1e-9), time.time(), 0
            record = _step_record(run, bar, _mean_over_processes(accelerator, losses), lr, density, tok_s)
        if state.step % t.eval_every == 0 or state.step == t.steps:
            record = {**(record or {"step": state.step, "tokens": state.tokens, "density": density}),
                      **_evaluate(run, bar, density)}
        if record is not None and accelerator.is_main_process:
            append_log(run.out, record)
        bar.update(1)
        # a resumable checkpoint, renamed into place whole
        if state.step % t.checkpoint_every == 0 and state.step < t.steps:
            state.wall_seconds += time.time() - run.session_start
            run.session_start = time.time()
            with phase("checkpoint"):
                save_checkpoint(accelerator, run.out, state, run.saved_modules)
    bar.close()
    state.wall_seconds += time.time() - run.session_start
    return save_final(run)


def _step_record(run: Run, bar, losses: dict[str, float], lr: float, density: float, tok_s: float) -> dict:
    """The log line of a logged step, also shown on the progress bar."""
    if run.teacher is None:
        losses["kl"] = None
    bar.set_postfix(ce=f"{losses['ce']:.3f}", kl=f"{losses['kl']:.3f}" if run.teacher is not None else "-",
                    density=f"{density:.4f}", tok_s=f"{tok_s:,.0f}")
    return {"step": run.state.step, "tokens": run.state.tokens, "lr": lr, "density": density, **losses,
            "tokens_per_s": tok_s}


def _refit(run: Run, bar) -> None:
    """Re-solve the kept weights to the dense model's outputs (extract/refit.py)."""
    teacher = getattr(run.teacher, "_orig_mod", run.teacher)  # the plain module under torch.compile
    error = refit_to_teacher(run.raw_model, teacher, run.calibration)
    bar.write(f"step {run.state.step + 1}: refitted the kept weights to the dense model's outputs "
              f"(relative error {error:.4f})")


def _forward_backward(run: Run, hidden_scale: float = 0.0) -> dict[str, float]:
    """The step's gradients over its micro-batches; returns its mean losses on this process (ce, kl, and
    with bridges their terms)."""
    recipe, accelerator = run.recipe, run.accelerator
    accum = recipe.train.gradient_accumulation_steps
    means: dict[str, float] = {}
    for micro in range(accum):
        batch = next(run.batches)
        sync = accelerator.no_sync(run.model) if micro < accum - 1 else contextlib.nullcontext()
        with sync:
            with run.phase("forward and loss"):
                loss, terms = (_bridged_loss(run, batch, micro) if run.bridges is not None
                               else _plain_loss(run, batch, hidden_scale))
            if not torch.isfinite(loss):
                _stop_on_non_finite(run, loss, terms)
            with run.phase("backward"):
                accelerator.backward(loss / accum)
        for name, value in terms.items():
            means[name] = means.get(name, 0.0) + (float(value.detach()) if value is not None else 0.0) / accum
    if run.bridges is not None and accelerator.num_processes > 1:  # Accelerate's wrapper reduces the model's
        for param in run.bridges.parameters():
            param.grad = accelerator.reduce(param.grad, reduction="mean")
    return means


def _plain_loss(run: Run, batch: torch.Tensor, hidden_scale: float) -> tuple[torch.Tensor, dict]:
    weights = run.recipe.loss
    ce, kl, hidden = training_losses(run.model, batch, run.teacher, hidden=hidden_scale > 0)
    loss = weights.ce_weight * ce + (weights.kl_weight * kl if kl is not None else 0.0)
    if hidden is not None:
        loss = loss + hidden_scale * hidden  # SquareHead, this step's weight
    return loss, {"ce": ce, "kl": kl}


def _bridged_loss(run: Run, batch: torch.Tensor, micro: int) -> tuple[torch.Tensor, dict]:
    """The model's own loss plus the bridges' terms (extract/bridge_losses.py)."""
    b, weights = run.recipe.bridges, run.recipe.loss
    keys = hybrid_keys(run.bridges.keys, b.hybrid_sites, run.recipe.train.seed, run.state.step, micro)
    terms = bridged_losses(run.raw_model, run.teacher, run.bridges, run.bridge_sites, batch, keys, forward=run.model)
    loss = (weights.ce_weight * terms.ce + weights.kl_weight * terms.kl + b.nmse_weight * terms.nmse
            + b.hybrid_kl_weight * (terms.kl_dense_to_sparse + terms.kl_sparse_to_dense))
    return loss, {"ce": terms.ce, "kl": terms.kl, "bridge_nmse": terms.nmse,
                  "bridge_kl_dense_to_sparse": terms.kl_dense_to_sparse,
                  "bridge_kl_sparse_to_dense": terms.kl_sparse_to_dense}


def _stop_on_non_finite(run: Run, loss, terms: dict) -> None:
    last = latest_checkpoint(run.out / CHECKPOINTS_DIRNAME)
    parts = ", ".join(f"{name}={None if value is None else value.item()}" for name, value in terms.items())
    raise NonFiniteLossError(
        f"loss is {loss.item()} at step {run.state.step + 1} ({parts}); "
        f"nothing was saved from this step. Last complete checkpoint: {last or 'none'}. "
        f"Try a lower optim.lr (now {run.recipe.optim.lr}).")


def _mean_over_processes(accelerator: Accelerator, losses: dict[str, float]) -> dict[str, float]:
    """The step's losses over every process's rows, not process 0's alone."""
    if accelerator.num_processes == 1:
        return losses
    values = accelerator.reduce(torch.tensor(list(losses.values()), device=accelerator.device), reduction="mean")
    return dict(zip(losses, values.tolist()))


def _evaluate(run: Run, bar, density: float) -> dict:
    with run.phase("held-out evaluation"):
        metrics = heldout_metrics(run.raw_model, run.heldout, run.teacher, accelerator=run.accelerator)
    bar.write(f"step {run.state.step}: held-out loss {metrics['loss']:.4f}"
              + (f", KL to dense {metrics['kl_to_dense']:.4f}" if run.teacher is not None else "")
              + f", density {density:.4f}")
    return {f"heldout_{k}": v for k, v in metrics.items()}


def save_final(run: Run) -> Path:
    """The trained model as one plain `from_pretrained` folder, written whole or not at all."""
    accelerator, final_dir = run.accelerator, run.out / MODEL_DIRNAME
    # every process takes part: under FSDP the whole weights are gathered to the main process's CPU
    # memory, and the density counts every process's rows
    with run.phase("gather for the final save"):
        weights = fsdp.retied(run.raw_model, accelerator.get_state_dict(run.raw_model))
    achieved = run.sparsifier.measured_density() if run.sparsifier else None
    if accelerator.is_main_process:
        with atomic.atomic_directory(final_dir) as scratch:
            run.raw_model.save_pretrained(scratch, state_dict=weights, safe_serialization=True)
            if run.bridges is not None:
                run.bridges.save(scratch)  # beside the model: from_pretrained ignores them
            run.tokenizer.save_pretrained(scratch)
            (scratch / RECIPE_FILE).write_text(recipe_yaml(run.recipe))  # the model folder travels alone
            run.state.save(scratch / "trainer_state.json")
        if achieved is not None:
            accelerator.print(f"saved {final_dir}: density {achieved:.5f} over the sparsified tensors")
    accelerator.wait_for_everyone()
    return final_dir


def _loader(train_blocks, recipe: Recipe) -> DataLoader:
    return DataLoader(train_blocks.with_format("torch"), batch_size=recipe.train.batch_size,
                      shuffle=not recipe.data.streaming, drop_last=True,
                      collate_fn=lambda rows: torch.stack([r["input_ids"] for r in rows]))


def _batches(dataloader, epoch: int, skip: int):
    """Endless batches, reshuffled each epoch, starting `skip` batches into `epoch` (for resume)."""
    while True:
        dataloader.set_epoch(epoch)
        yield from (dataloader if skip == 0 else skip_first_batches(dataloader, skip))
        epoch, skip = epoch + 1, 0


def _enable_activation_checkpointing(model) -> None:
    """transformers' per-layer recomputation (renamed from gradient_checkpointing in 5.x)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _announce(accelerator: Accelerator, raw_model, teacher, sparsifier: Sparsifier | None) -> None:
    """What this process holds under FSDP2, and what is sparsified to what."""
    if accelerator.is_fsdp2:
        teacher_share = f" and {fsdp.held_share(teacher):.1%} of the frozen teacher" if teacher is not None else ""
        accelerator.print(f"FSDP2 over {accelerator.num_processes} processes: this one holds "
                          f"{fsdp.held_share(raw_model):.1%} of the model{teacher_share}")
    if sparsifier is None:
        return
    s, tensors = sparsifier.config, sparsifier.tensors
    accelerator.print(f"sparsifying {len(tensors)} tensors, {sparsifier.total:,} weights; target density "
                      f"{s.target_density:.5f}, per-unit minimum floor {density_floor(tensors, s.min_per_unit):.5f}")
    if s.embedding_density is not None:
        matrices = next(f for x, f in zip(tensors, sparsifier.finals) if x.unit_axis is not None)
        accelerator.print(f"embeddings at {s.embedding_density:.5f}, matrices at {matrices:.5f}")
