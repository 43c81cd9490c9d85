"""The Accelerate training loop: sparsity-inducing fine-tuning, and dense pretraining with sparsity off.

One optimizer step is, in METHOD.md's order: forward/backward over the micro-batches, rescale the
gradients to RMS 1, AdamW step, magnitude projection to the scheduled density, then the learning
rate and density move on. Checkpoints are complete Accelerate states renamed into place, and a
rerun of the same command resumes from the newest one.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from extract import checkpoints, fsdp
from extract.arch import sparse_tensors
from extract.data import CorpusSpec, heldout_tensor, load_text_splits, pack_blocks
from extract.errors import UserError
from extract.losses import token_losses
from extract.models import load_model, load_tokenizer
from extract.outputs import RECIPE_FILE, recipe_yaml, save_recipe
from extract.paths import MODEL_DIRNAME
from extract.recipe import OptimConfig, Recipe, RecipeError
from extract.sparsity import (
    base_lr_factor,
    density_at,
    density_floor,
    measured_density,
    project_,
    rescale_gradients_to_unit_rms,
    scheduled_densities,
    sharkfin_factor,
    tensor_targets,
)

CHECKPOINT_DIRNAME = "checkpoints"
TRAIN_LOG = "train_log.jsonl"
EVAL_LOGITS_BUDGET = 2**25  # floats of held-out logits per batch (128 MB)


class CheckpointError(UserError, RuntimeError):
    """Every checkpoint of a run to resume is unreadable; they have been set aside."""


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
    if fsdp.enable_on_cpu(accelerator):
        accelerator.print("no GPU: FSDP2 runs over gloo on the CPU (Accelerate itself would fall back to DDP)")
    return accelerator


def corpus_spec(recipe: Recipe) -> CorpusSpec:
    d = recipe.data
    return CorpusSpec(d.dataset, d.config, d.text_column, d.key_column or ("path" if d.dataset == "embedded" else None),
                      d.train_split, d.heldout_split, d.heldout_fraction, d.streaming)


def prepare_heldout(recipe: Recipe, tokenizer, splits=None):
    """(held-out LongTensor of `data.heldout_blocks` blocks, held-out text dataset)."""
    splits = splits or load_text_splits(corpus_spec(recipe))
    blocks = pack_blocks(splits["heldout"], tokenizer, recipe.data.block_size, recipe.data.text_column)
    return heldout_tensor(blocks, recipe.data.heldout_blocks), splits["heldout"]


def prepare_data(recipe: Recipe, tokenizer):
    """(packed training blocks, held-out LongTensor, held-out texts)."""
    splits = load_text_splits(corpus_spec(recipe))
    train = pack_blocks(splits["train"], tokenizer, recipe.data.block_size, recipe.data.text_column)
    heldout, heldout_texts = prepare_heldout(recipe, tokenizer, splits)
    return train, heldout, heldout_texts


def eval_batch_size(sequence_length: int, vocab_size: int) -> int:
    """Sequences per held-out batch: 16, or fewer where their logits would pass EVAL_LOGITS_BUDGET
    floats (16 x 256 x 50257 would be 823 MB per copy, and the losses make several)."""
    return max(1, min(16, EVAL_LOGITS_BUDGET // (sequence_length * vocab_size)))


@torch.no_grad()
def heldout_metrics(model, heldout: torch.Tensor, teacher=None, batch_size: int | None = None,
                    accelerator: Accelerator | None = None) -> dict[str, float]:
    """Held-out loss (and KL to the teacher), sharded over processes when an accelerator is given."""
    batch_size = batch_size or eval_batch_size(heldout.shape[1], model.config.vocab_size)
    was_training = model.training
    model.eval()
    rows, world = heldout, 1
    if accelerator is not None and accelerator.num_processes > 1:
        world = accelerator.num_processes
        rows = heldout[accelerator.process_index :: world]
    device = next(model.parameters()).device
    sums = torch.zeros(3, device=device)  # ce*n, kl*n, n
    # every process runs as many forwards as the one with the most rows: under FSDP each forward
    # gathers the weights from all of them; a process out of rows runs one row and counts nothing
    for start in range(0, math.ceil(len(heldout) / world), batch_size):
        batch = rows[start : start + batch_size]
        n = len(batch)
        ce, kl = token_losses(model, (batch if n else heldout[:1]).to(device), teacher)
        sums += torch.tensor([float(ce) * n, float(kl or 0.0) * n, n], device=device)
    fsdp.reshard(model)
    if world > 1:
        sums = accelerator.reduce(sums, reduction="sum")
    model.train(was_training)
    result = {"loss": float(sums[0] / sums[2])}
    if teacher is not None:
        result["kl_to_dense"] = float(sums[1] / sums[2])
    return result


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    wall_seconds: float = 0.0
    dense_heldout_loss: float | None = None
    processes: int = 1
    distributed_type: str = "NO"

    def save(self, path: Path) -> None:
        checkpoints.write_json_atomic(path, self.__dict__)

    @classmethod
    def load(cls, path: Path) -> "TrainState":
        return cls(**json.loads(Path(path).read_text()))


def _optimizer(model, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    # Weight decay on matrices (and embeddings), none on biases and norm gains.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    o = recipe.optim
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr, betas=o.betas, eps=o.eps,
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


def _enable_activation_checkpointing(model) -> None:
    """transformers' per-layer recomputation (renamed from gradient_checkpointing in 5.x)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _batches(dataloader, epoch: int, skip: int):
    """Endless batches, reshuffled each epoch, starting `skip` batches into `epoch` (for resume)."""
    while True:
        dataloader.set_epoch(epoch)
        yield from (dataloader if skip == 0 else skip_first_batches(dataloader, skip))
        epoch, skip = epoch + 1, 0


def _save_checkpoint(accelerator: Accelerator, ckpt_dir: Path, state: TrainState) -> None:
    scratch = ckpt_dir / f".step-{state.step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(scratch, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(scratch))
    if accelerator.is_main_process:
        state.save(scratch / "trainer_state.json")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        os.replace(scratch, ckpt_dir / f"step-{state.step}")
        checkpoints.prune_checkpoints(ckpt_dir)
    accelerator.wait_for_everyone()


def _append_log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, last_step: int) -> None:
    """On resume, drop log lines written after the checkpoint we resume from."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= last_step]
    checkpoints.write_text_atomic(path, "".join(line + "\n" for line in kept))


def _load_newest_good_checkpoint(accelerator: Accelerator, ckpt_dir: Path) -> tuple[Path | None, TrainState]:
    """Load the newest checkpoint that loads. One that does not (a file cut short or corrupted on disk)
    is set aside as `.broken-step-N`, with a warning, and the one before it is tried; when none is left
    the run stops and says so, since a half-loaded checkpoint may have overwritten the model."""
    broken = []
    while (ckpt := checkpoints.latest_checkpoint(ckpt_dir)) is not None:
        try:
            state = TrainState.load(ckpt / "trainer_state.json")
            accelerator.load_state(str(ckpt))
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


def step_schedule(recipe: Recipe, step: int, sparsifying: bool = True) -> tuple[float, float]:
    """(learning rate, density after the projection) of the step from `step` to `step + 1`: warm-up
    then linear decay, times the sharkfin factor while the density anneals (METHOD.md section 2)."""
    s, steps = recipe.sparsity, recipe.train.steps
    density = 1.0
    if sparsifying:
        density = density_at((step + 1) / steps, s.target_density, s.anneal_fraction, s.anneal_shape)
    lr = recipe.optim.lr * base_lr_factor(step / steps, recipe.optim.warmup_fraction)
    if sparsifying and s.sharkfin:
        lr *= sharkfin_factor(density, s.target_density, s.sharkfin_power)
    return lr, density


def final_densities(model, recipe: Recipe) -> list[float]:
    """Each sparsified tensor's final density, or a RecipeError naming the key when the embeddings'
    share leaves the matrices nothing."""
    s = recipe.sparsity
    if not s.enabled:
        return []
    tensors = sparse_tensors(model, s.embeddings)
    try:
        return tensor_targets(tensors, s.target_density, s.embedding_density)
    except ValueError as error:
        embedding = sum(t.param.numel() for t in tensors if t.unit_axis is None)
        most = s.target_density * sum(t.param.numel() for t in tensors) / embedding
        raise RecipeError(f"sparsity.embedding_density: {error} ({recipe.model.name_or_path}); "
                          f"it must be below {most:.5f}") from None


def train(recipe: Recipe, accelerator: Accelerator) -> Path:
    """Run (or resume) training; returns the directory of the saved final model."""
    out = Path(recipe.output_dir)
    final_dir = out / MODEL_DIRNAME
    if (final_dir / "config.json").is_file():
        accelerator.print(f"{final_dir} already holds the trained model; skipping training")
        if accelerator.is_main_process:
            save_recipe(recipe, out)  # the task and prune settings this run goes on with
        return final_dir
    session_start = time.time()  # wall time counts set-up (data, models, compilation) too
    ckpt_dir = out / CHECKPOINT_DIRNAME
    log_path = out / TRAIN_LOG
    set_seed(recipe.train.seed)
    t = recipe.train
    world = accelerator.num_processes
    if accelerator.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))

    tokenizer = load_tokenizer(recipe.model)
    model = load_model(recipe.model, vocab_size=len(tokenizer))
    finals = final_densities(model, recipe)  # before the data: a budget error then costs seconds
    teacher = None
    if recipe.loss.kl_weight > 0:  # sharded like the student under FSDP
        teacher = fsdp.shard_frozen(accelerator, copy.deepcopy(model).eval().requires_grad_(False))
        if t.compile:  # the teacher's forward runs every step too
            teacher = torch.compile(teacher)
    with accelerator.main_process_first():  # build the datasets cache once
        train_blocks, heldout, _ = prepare_data(recipe, tokenizer)
    if accelerator.is_main_process:  # the inputs have loaded: now the run claims its output folder
        save_recipe(recipe, out)
    train_blocks = train_blocks.with_format("torch")
    loader = DataLoader(train_blocks, batch_size=t.batch_size, shuffle=not recipe.data.streaming, drop_last=True,
                        collate_fn=lambda rows: torch.stack([r["input_ids"] for r in rows]))

    model.train()
    if t.gradient_checkpointing:
        _enable_activation_checkpointing(model)
    optimizer = _optimizer(model, recipe, accelerator.device)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    # the plain module: parameter names without DDP's or torch.compile's prefixes
    raw_model = accelerator.unwrap_model(model, keep_torch_compile=False)
    params = [p for p in model.parameters() if p.requires_grad]
    targets = sparse_tensors(raw_model, recipe.sparsity.embeddings) if recipe.sparsity.enabled else []
    s = recipe.sparsity
    if accelerator.is_fsdp2:
        teacher_share = f" and {fsdp.held_share(teacher):.1%} of the frozen teacher" if teacher is not None else ""
        accelerator.print(f"FSDP2 over {world} processes: this one holds {fsdp.held_share(raw_model):.1%} "
                          f"of the model{teacher_share}")
    if targets:
        floor = density_floor(targets, s.min_per_unit)
        accelerator.print(f"sparsifying {len(targets)} tensors, {sum(x.param.numel() for x in targets):,} weights; "
                          f"target density {s.target_density:.5f}, per-unit minimum floor {floor:.5f}")
        if s.embedding_density is not None:
            accelerator.print(f"embeddings at {s.embedding_density:.5f}, matrices at "
                              f"{next(f for x, f in zip(targets, finals) if x.unit_axis is not None):.5f}")

    resume_from, state = _load_newest_good_checkpoint(accelerator, ckpt_dir)
    if resume_from is not None:
        accelerator.print(f"resuming from {resume_from} (step {state.step}/{t.steps})")
        if accelerator.is_main_process:
            _truncate_log(log_path, state.step)
    elif accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)
    state.processes, state.distributed_type = world, str(accelerator.distributed_type.value)
    if state.dense_heldout_loss is None and recipe.model.init_config is None:
        state.dense_heldout_loss = heldout_metrics(raw_model, heldout, accelerator=accelerator)["loss"]
        accelerator.print(f"dense held-out loss {state.dense_heldout_loss:.4f}")

    accum = t.gradient_accumulation_steps
    micro_done = state.step * accum  # micro-batches already consumed, for resume
    epoch, skip = (0, micro_done) if recipe.data.streaming else divmod(micro_done, len(loader))
    batches = _batches(loader, epoch, skip)
    tokens_per_step = t.batch_size * recipe.data.block_size * accum * world
    bar = tqdm(total=t.steps, initial=state.step, desc="sparsify" if targets else "train",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    window_start, window_tokens = time.time(), 0

    while state.step < t.steps:
        lr, density = step_schedule(recipe, state.step, sparsifying=bool(targets))
        for group in optimizer.param_groups:
            group["lr"] = lr

        ce_sum = kl_sum = 0.0
        for micro in range(accum):
            batch = next(batches)
            sync = accelerator.no_sync(model) if micro < accum - 1 else contextlib.nullcontext()
            with sync:
                ce, kl = token_losses(model, batch, teacher)
                loss = recipe.loss.ce_weight * ce + (recipe.loss.kl_weight * kl if kl is not None else 0.0)
                if not torch.isfinite(loss):
                    last = checkpoints.latest_checkpoint(ckpt_dir)
                    raise NonFiniteLossError(
                        f"loss is {loss.item()} at step {state.step + 1} (ce={ce.item()}, "
                        f"kl={None if kl is None else kl.item()}); "
                        f"nothing was saved from this step. Last complete checkpoint: {last or 'none'}. "
                        f"Try a lower optim.lr (now {recipe.optim.lr}).")
                accelerator.backward(loss / accum)
            ce_sum += float(ce.detach()) / accum
            kl_sum += float(kl.detach()) / accum if kl is not None else 0.0

        apply_gradients(optimizer, params, recipe.optim, accelerator.scaler)
        if targets:
            progress = (state.step + 1) / t.steps
            project_(targets, scheduled_densities(finals, progress, s.anneal_fraction, s.anneal_shape),
                     s.min_per_unit)
        state.step += 1
        state.tokens += tokens_per_step
        window_tokens += tokens_per_step

        record = None
        if state.step % t.log_every == 0 or state.step == t.steps:
            now = time.time()
            tok_s = window_tokens / max(now - window_start, 1e-9)
            window_start, window_tokens = now, 0
            if world > 1:  # the step's loss over every process's rows, not process 0's alone
                ce_sum, kl_sum = accelerator.reduce(torch.tensor([ce_sum, kl_sum], device=accelerator.device),
                                                    reduction="mean").tolist()
            record = {"step": state.step, "tokens": state.tokens, "lr": lr, "density": density,
                      "ce": ce_sum, "kl": kl_sum if teacher is not None else None, "tokens_per_s": tok_s}
            bar.set_postfix(ce=f"{ce_sum:.3f}", kl=f"{kl_sum:.3f}" if teacher is not None else "-",
                            density=f"{density:.4f}", tok_s=f"{tok_s:,.0f}")
        if state.step % t.eval_every == 0 or state.step == t.steps:
            metrics = heldout_metrics(raw_model, heldout, teacher, accelerator=accelerator)
            record = {**(record or {"step": state.step, "tokens": state.tokens, "density": density}),
                      **{f"heldout_{k}": v for k, v in metrics.items()}}
            bar.write(f"step {state.step}: held-out loss {metrics['loss']:.4f}"
                      + (f", KL to dense {metrics['kl_to_dense']:.4f}" if teacher is not None else "")
                      + f", density {density:.4f}")
        if record is not None and accelerator.is_main_process:
            _append_log(log_path, record)
        bar.update(1)
        if state.step % t.checkpoint_every == 0 and state.step < t.steps:
            state.wall_seconds += time.time() - session_start
            session_start = time.time()
            _save_checkpoint(accelerator, ckpt_dir, state)
    bar.close()
    state.wall_seconds += time.time() - session_start

    # every process takes part: under FSDP the whole weights are gathered to the main process's CPU
    # memory, and the density counts every process's rows
    weights = fsdp.retied(raw_model, accelerator.get_state_dict(raw_model))
    achieved = measured_density(targets)[0] if targets else None
    if accelerator.is_main_process:
        with checkpoints.atomic_directory(final_dir) as scratch:
            raw_model.save_pretrained(scratch, state_dict=weights, safe_serialization=True)
            tokenizer.save_pretrained(scratch)
            (scratch / RECIPE_FILE).write_text(recipe_yaml(recipe))  # the model folder travels alone
            state.save(scratch / "trainer_state.json")
        if targets:
            accelerator.print(f"saved {final_dir}: density {achieved:.5f} over the sparsified tensors")
    accelerator.wait_for_everyone()
    return final_dir
