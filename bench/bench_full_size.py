"""A shipped Hub recipe (gpt2-small by default) at full size, offline, on whatever device is present.

    python bench/bench_full_size.py                        # GPT-2 small, 2 CPU cores: about 4 minutes
    python bench/bench_full_size.py --recipe pythia-70m --json bench/results/full_size_pythia-70m_cpu.json

Builds a randomly initialised model of the recipe's checkpoint's shape (GPT-2 small, Pythia-70M or
SmolLM2-135M; the real GPT-2 tokenizer from the test extra), runs the real training loop
(`extract.train.train`) with the recipe's sparsify settings and the offline overrides a user without
Hub access would use, then prunes one built-in task for a few mask steps. Records: step time and the
projection's share of it; peak memory, per phase and against the 20 bytes per parameter that float32
weights, the frozen teacher, Adam's two moments and the gradients need; mean-estimation time; mask
step time; node count; edge-count time; and an estimate of the whole recipe on one H100, with how it
is derived.

Phases are timed through the training loop's phase hook (`extract.train.train(..., phase=...)`). On
a CPU, memory is the anonymous resident set sampled every millisecond (the sampler costs about 4% of
step time) and the kernel's exact peak resident set; on a GPU, torch's allocator peak. Run it alone:
two torch jobs side by side on 2 cores slow each other several-fold.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import json
import os
import platform
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from extract.arch import node_sites  # noqa: E402
from extract.circuits.edges import count_edges  # noqa: E402
from extract.circuits.masks import NodeMask  # noqa: E402
from extract.circuits.prune import train_mask  # noqa: E402
from extract.circuits.sites import count_nodes, site_means  # noqa: E402
from extract.models import load_model, load_tokenizer  # noqa: E402
from extract.recipe import load_recipe  # noqa: E402
from extract.tasks.builtin import builtin_task  # noqa: E402
from extract.testing import write_gpt2_tokenizer  # noqa: E402
from extract.train import make_accelerator, resolve_precision, train  # noqa: E402

# A random model of each Hub recipe's checkpoint, by its config's sizes. The GPT-2 tokenizer stands in
# for every model's own (none can be downloaded here), so SmolLM2's vocabulary is 50257, not 49152.
SHAPES = {
    "gpt2-small": ("gpt2", {}),  # GPT2Config's defaults are GPT-2 small
    "pythia-70m": ("gpt_neox", dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                                    intermediate_size=2048, vocab_size=50304, max_position_embeddings=2048,
                                    rotary_pct=0.25, tie_word_embeddings=False)),
    "smollm2-135m": ("llama", dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, intermediate_size=1536, vocab_size=50257,
                                   max_position_embeddings=8192, tie_word_embeddings=True)),
}
FLOOR_BYTES_PER_PARAM = 20  # float32 weights 4 + frozen teacher 4 + Adam moments 8 + gradients 4
H100_BF16_FLOPS = 989e12  # dense bf16 tensor-core peak (SXM)
ASSUMED_MFU = 0.4  # a typical model-FLOPs utilisation for a 124M model at batch 32 x 256 with torch.compile
ASSUMED_PRUNE_MFU = 0.1  # mask steps are small batches of short prompts


def offline_overrides(model_dir: Path, out: Path, steps: int, batch_size: int, heldout_blocks: int,
                      compile_model: bool, checkpointing: bool) -> list[str]:
    """The recipe with a local model and the shipped corpus in place of the Hub ones
    (README: running a Hub recipe offline), and a few steps."""
    return [f"model.name_or_path={model_dir}", "data.dataset=embedded", "data.text_column=text",
            "data.streaming=false", f"data.heldout_blocks={heldout_blocks}", f"train.steps={steps}",
            f"train.batch_size={batch_size}", f"train.eval_every={steps}", f"train.checkpoint_every={steps}",
            f"train.compile={str(compile_model).lower()}", f"train.gradient_checkpointing={str(checkpointing).lower()}",
            "eval.quote_examples=0", f"output_dir={out}"]


class Probe:
    """Time and peak memory per phase. Only the outermost phase counts, so the forward passes inside
    an evaluation are charged to the evaluation."""

    def __init__(self, cuda: bool, interval: float = 0.001):
        self.cuda, self.interval = cuda, interval
        self.stack: list[str] = []
        self.peak: dict[str, int] = {}
        self.start: dict[str, int] = {}  # memory when the phase first began
        self.seconds: dict[str, list[float]] = {}
        self.running = True
        if not cuda:
            threading.Thread(target=self._sample, daemon=True).start()

    def now(self) -> int:
        """Bytes in use: torch's allocations on a GPU; on a CPU the anonymous resident memory (heap and
        tensors, without the shared libraries and memory-mapped dataset files, which the kernel can
        drop and reread)."""
        if self.cuda:
            return torch.cuda.memory_allocated()
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))

    def _sample(self):
        while self.running:
            label = self.stack[0] if self.stack else "between phases"
            self.peak[label] = max(self.peak.get(label, 0), self.now())
            time.sleep(self.interval)

    @contextlib.contextmanager
    def phase(self, name: str):
        if self.stack:  # nested: charged to the outer phase
            yield
            return
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start.setdefault(name, self.now())
        self.stack.append(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
                self.peak[name] = max(self.peak.get(name, 0), torch.cuda.max_memory_allocated())
            self.seconds.setdefault(name, []).append(time.perf_counter() - start)
            self.stack.pop()

    def process_peak(self) -> int:
        """The highest `now()` seen so far (on a CPU sampled, so short spikes can be missed)."""
        if self.cuda:
            return torch.cuda.max_memory_allocated()
        return max(self.peak.values(), default=self.now())


def peak_rss() -> int:
    """The kernel's exact peak resident set of this process, shared libraries and mapped files included."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def build_model(recipe_name: str, model_dir: Path) -> int:
    """A model of the recipe's checkpoint's shape saved with the real GPT-2 tokenizer; returns its
    parameter count."""
    model_type, sizes = SHAPES[recipe_name]
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **{"bos_token_id": 50256, "eos_token_id": 50256, **sizes})
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(model_dir)
    write_gpt2_tokenizer(model_dir)
    return sum(p.numel() for p in model.parameters())


def sparsify(recipe, probe: Probe) -> dict:
    """The real training loop, timed through its phase hook; returns step times and the projection's."""
    step_ends: list[float] = []

    @contextlib.contextmanager
    def phase(name: str):
        with probe.phase(name):
            yield
        if name == "projection":  # a step ends with its projection
            step_ends.append(time.perf_counter())

    accelerator = make_accelerator(recipe)
    start = time.perf_counter()
    train(recipe, accelerator, phase=phase)
    accelerator.free_memory()  # it holds the model and optimizer: let them go before pruning
    gc.collect()
    steps = [b - a for a, b in zip(step_ends, step_ends[1:])]  # projection end to projection end
    return {"wall_seconds": time.perf_counter() - start, "step_seconds": steps,
            "projection_seconds": probe.seconds["projection"]}


def prune(model_dir: Path, recipe, mask_steps: int, mean_blocks: int, device: torch.device, probe: Probe) -> dict:
    from extract.data import prepare_heldout

    cfg = recipe.prune
    tokenizer = load_tokenizer(recipe.model)
    model = load_model(recipe.model).to(device).requires_grad_(False)
    sites = node_sites(model)
    blocks, _ = prepare_heldout(recipe, tokenizer)
    blocks = blocks[:mean_blocks]
    with probe.phase("mean estimation"):
        start = time.perf_counter()
        means = site_means(model, sites, blocks)
        mean_seconds = time.perf_counter() - start
    examples = builtin_task("single_double_quote", tokenizer, "train", max(cfg.batch_size, 64), cfg.seed)
    mask = NodeMask(sites, means).to(device)
    marks = [time.perf_counter()]

    def on_step(step, task_loss, kept):
        if device.type == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    with probe.phase("mask training"):
        train_mask(model, mask, examples, dataclasses.replace(cfg, steps=mask_steps), on_step=on_step)
    kept = {s.key: torch.ones(s.width, dtype=torch.bool, device=device) for s in sites}
    with probe.phase("edge count"):
        start = time.perf_counter()
        edges = count_edges(model, kept)
        edge_seconds = time.perf_counter() - start
    prompt_tokens = statistics.mean(len(e.prompt_ids) for e in examples)
    return {"nodes": count_nodes(sites), "dense_edges_all_nodes_kept": edges, "edge_count_seconds": edge_seconds,
            "mean_blocks": len(blocks), "mean_estimation_seconds": mean_seconds,
            "mean_estimation_seconds_per_block": mean_seconds / len(blocks),
            "mask_batch_size": cfg.batch_size, "mean_prompt_tokens": prompt_tokens,
            "mask_step_seconds": [b - a for a, b in zip(marks, marks[1:])]}


def h100_estimate(recipe_name: str, params: int, measured: dict, on_cuda: bool) -> dict:
    """The whole recipe (its own steps and batch, not this run's) on one H100: measured step times
    scaled to the recipe's batch on a GPU, else a FLOP count at an assumed utilisation (the
    assumptions are returned with the numbers)."""
    recipe, _ = load_recipe(recipe_name)
    t, p = recipe.train, recipe.prune
    tokens = t.steps * t.batch_size * t.gradient_accumulation_steps * recipe.data.block_size
    flops_per_token = 8 * params  # student forward + backward (6N) and the frozen teacher's forward (2N)
    train_seconds = tokens * flops_per_token / (H100_BF16_FLOPS * ASSUMED_MFU)
    # a mask step: forward and backward of the batch through the frozen model (no weight gradients)
    mask_flops = p.batch_size * measured["prune"]["mean_prompt_tokens"] * 6 * params
    masks = len(recipe.tasks) * 2  # every task on the dense and the sparse model, one penalty each
    prune_seconds = masks * p.steps * mask_flops / (H100_BF16_FLOPS * ASSUMED_PRUNE_MFU)
    estimate = {
        "tokens": tokens, "flops_per_token": flops_per_token,
        "sparsify_seconds_from_flops": train_seconds, "prune_seconds_from_flops": prune_seconds,
        "assumptions": f"H100 SXM bf16 peak {H100_BF16_FLOPS / 1e12:.0f} TFLOP/s; sparsify at {ASSUMED_MFU:.0%} of it "
                       f"(8N FLOPs per token: student forward and backward, teacher forward); "
                       f"pruning at {ASSUMED_PRUNE_MFU:.0%} ({masks} masks of {p.steps} steps, batch {p.batch_size}, "
                       "6N FLOPs per prompt token; the random-init control's retries not counted); "
                       "the projection and evaluation are not in the FLOP count",
    }
    if on_cuda:  # measured here: scale this run's step time to the recipe's tokens per step
        step = statistics.median(measured["sparsify"]["step_seconds"][1:] or measured["sparsify"]["step_seconds"])
        measured_tokens = measured["batch_size"] * recipe.data.block_size
        estimate["sparsify_seconds_from_measured_steps"] = step * tokens / measured_tokens
    return estimate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=sorted(SHAPES), default="gpt2-small")
    parser.add_argument("--steps", type=int, default=6, help="sparsify steps (default 6)")
    parser.add_argument("--batch-size", type=int, default=2, help="sequences of 256 tokens per step (default 2)")
    parser.add_argument("--heldout-blocks", type=int, default=8)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="torch.compile the model as the recipe does (default off: minutes to compile on a CPU)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute activations in the backward pass (train.gradient_checkpointing)")
    parser.add_argument("--mask-steps", type=int, default=4)
    parser.add_argument("--mean-blocks", type=int, default=8)
    parser.add_argument("--sample-ms", type=float, default=1.0,
                        help="memory sampling interval on a CPU (default 1; the sampler costs a little step time)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    probe = Probe(cuda, args.sample_ms / 1000)
    model_type = SHAPES[args.recipe][0]
    importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    baseline = probe.now()  # the process with torch, transformers, accelerate and the model's code imported
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, out = Path(tmp) / args.recipe, Path(tmp) / "out"
        params = build_model(args.recipe, model_dir)
        recipe, _ = load_recipe(args.recipe, offline_overrides(model_dir, out, args.steps, args.batch_size,
                                                                args.heldout_blocks, args.compile,
                                                                args.gradient_checkpointing))
        device_name = torch.cuda.get_device_name() if cuda else f"{platform.processor() or 'cpu'}, " \
            f"{torch.get_num_threads()} threads"
        results = {"recipe": args.recipe, "device": device_name, "torch": torch.__version__, "params": params,
                   "batch_size": args.batch_size, "block_size": recipe.data.block_size, "compile": args.compile,
                   "gradient_checkpointing": args.gradient_checkpointing,
                   "precision": resolve_precision(recipe.train.mixed_precision),
                   "sparsify": sparsify(recipe, probe)}
        sparsify_peak, sparsify_rss = probe.process_peak(), peak_rss()
        results["prune"] = prune(model_dir, recipe, args.mask_steps, args.mean_blocks, device, probe)
    probe.running = False
    s = results["sparsify"]
    step = statistics.median(s["step_seconds"][1:] or s["step_seconds"])
    projection = statistics.median(s["projection_seconds"][1:] or s["projection_seconds"])
    floor = FLOOR_BYTES_PER_PARAM * params
    results.update(
        step_seconds_median=step, tokens_per_second=args.batch_size * recipe.data.block_size / step,
        projection_seconds_median=projection, projection_share=projection / step,
        memory_baseline_bytes=baseline, sparsify_peak_bytes=sparsify_peak, floor_bytes=floor,
        sparsify_peak_above_baseline_bytes=sparsify_peak - baseline,
        peak_over_floor=(sparsify_peak - baseline) / floor, sparsify_peak_rss_bytes=sparsify_rss,
        malloc_env={k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        phase_peak_bytes=probe.peak, phase_start_bytes=probe.start,
        phase_seconds={k: sum(v) for k, v in probe.seconds.items()},
        mask_step_seconds_median=statistics.median(results["prune"]["mask_step_seconds"][1:]
                                                   or results["prune"]["mask_step_seconds"]))
    results["h100_estimate"] = h100_estimate(args.recipe, params, results, cuda)
    print(json.dumps(results, indent=2))
    gib = 2**30
    what = "allocated by torch" if cuda else "anonymous resident memory"
    print(f"\n{params / 1e6:.1f}M parameters on {results['device']}: {step:.2f} s per step of {args.batch_size} x 256 "
          f"tokens ({results['tokens_per_second']:.0f} tokens/s), projection {projection:.2f} s "
          f"({results['projection_share']:.0%})")
    print(f"sparsify peak ({what}) {sparsify_peak / gib:.2f} GiB: {(sparsify_peak - baseline) / gib:.2f} GiB above the "
          f"{baseline / gib:.2f} GiB after imports, {results['peak_over_floor']:.2f}x the {floor / gib:.2f} GiB floor "
          f"({FLOOR_BYTES_PER_PARAM} bytes/param); whole-process peak RSS {sparsify_rss / gib:.2f} GiB "
          f"({sparsify_rss / params:.0f} bytes/param)")
    for name, peak in sorted(probe.peak.items(), key=lambda kv: -kv[1]):
        rise = f" (+{(peak - probe.start[name]) / gib:4.2f} over its start)" if name in probe.start else ""
        print(f"  {name:>24}: peak {peak / gib:5.2f} GiB{rise}, {sum(probe.seconds.get(name, [0])):7.1f} s")
    e = results["h100_estimate"]
    print(f"H100 estimate: sparsify {e['sparsify_seconds_from_flops'] / 60:.0f} min, prune "
          f"{e['prune_seconds_from_flops'] / 60:.0f} min ({e['assumptions']})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
