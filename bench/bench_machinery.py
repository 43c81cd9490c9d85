"""What the sparsity machinery costs on the embedded default (issue 17, item 4).

    python bench/bench_machinery.py [--steps 40] [--eager] [--json bench/results/machinery.json]

1. A fine-tuning step with the projection and the schedules (the real loop's step) against the same
   step without them: the same model, batch and data, both students stepping in turn in one process
   (the order alternating), so drift in the machine's speed cancels. Reported as the median of the
   per-step time ratios, with its quartiles and range.
2. Peak memory of each kind of step, each measured in a fresh process (`--variant`): the resident
   set's peak above the process after set-up, after `--memory-steps` steps.
3. Mean estimation: the ablation means of every node on the recipe's `prune.mean_blocks` blocks.
4. A mask step at the recipe's batch, and one whole default task (`while_return_true` on the dense
   model) with the default controls and without them.

The recipe's settings throughout (tiny-python: batch 8 x 256 tokens, KL to the frozen teacher,
compiled unless --eager).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from default_runs import machine  # noqa: E402

from extract.circuits.find import TaskData, find_circuit  # noqa: E402
from extract.circuits.masks import NodeMask  # noqa: E402
from extract.circuits.sites import node_sites, site_means  # noqa: E402
from extract.data import prepare_data  # noqa: E402
from extract.losses import token_losses  # noqa: E402
from extract.models import load_model, load_tokenizer  # noqa: E402
from extract.recipe import load_recipe  # noqa: E402
from extract.sparsifier import Sparsifier  # noqa: E402
from extract.tasks.builtin import builtin_task  # noqa: E402
from extract.tasks.examples import two_way_loss  # noqa: E402
from extract.train import apply_gradients, build_optimizer  # noqa: E402

TASK = "while_return_true"  # the task every README run compares


class Student:
    """One student with its own optimizer; `machinery` adds the sparsifier (schedules and projection),
    the training loop's own (extract/sparsifier.py), over a run of `steps` steps."""

    def __init__(self, dense, recipe, machinery: bool, compile_: bool, steps: int):
        self.recipe, self.machinery = recipe, machinery
        self.model = copy.deepcopy(dense).train().requires_grad_(True)
        self.forward = torch.compile(self.model) if compile_ else self.model
        self.optimizer = build_optimizer(self.model, recipe.optim, torch.device("cpu"))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.sparsifier = Sparsifier(self.model, recipe.sparsity, steps)
        self.projection_seconds = 0.0  # of the last step

    def step(self, batch, teacher, step: int) -> float:
        """Training step `step` of the run; returns its wall seconds."""
        start = time.perf_counter()
        lr = self.recipe.optim.lr
        densities = self.sparsifier.before_step(step) if self.machinery else None
        if densities is not None:
            lr *= densities.lr_factor
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        _, kl = token_losses(self.forward, batch, teacher)
        kl.backward()
        apply_gradients(self.optimizer, self.params, self.recipe.optim)
        if densities is not None:
            projection = time.perf_counter()
            self.sparsifier.after_optimizer_step(densities)
            self.projection_seconds = time.perf_counter() - projection
        return time.perf_counter() - start


def setup(compile_: bool):
    recipe, _ = load_recipe("tiny-python")
    tokenizer = load_tokenizer(recipe.model)
    dense = load_model(recipe.model, vocab_size=len(tokenizer))
    teacher = copy.deepcopy(dense).eval().requires_grad_(False)
    if compile_:
        teacher = torch.compile(teacher)
    blocks, heldout, _ = prepare_data(recipe, tokenizer)
    ids = torch.tensor(blocks.with_format("numpy")["input_ids"][: 64 * recipe.train.batch_size])
    batches = ids.split(recipe.train.batch_size)
    return recipe, tokenizer, dense, teacher, batches, heldout


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_run(variant: str, steps: int, compile_: bool) -> dict:
    """In this (fresh) process: the peak resident set during `steps` steps of one variant, above the
    process after set-up. Linux's high-water mark is reset after set-up (/proc/self/clear_refs), so
    data preparation's own peak does not count."""
    recipe, _, dense, teacher, batches, _ = setup(compile_)
    student = Student(dense, recipe, variant == "full", compile_, steps)
    del dense
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    base = status_kib("VmRSS")
    for i in range(steps):
        student.step(batches[i % len(batches)], teacher, i)
    peak = status_kib("VmHWM")
    return {"variant": variant, "rss_after_setup_mib": base / 1024, "peak_rss_mib": peak / 1024,
            "peak_above_setup_mib": (peak - base) / 1024}


def timing(args) -> dict:
    recipe, tokenizer, dense, teacher, batches, heldout = setup(not args.eager)
    full = Student(dense, recipe, True, not args.eager, args.steps)
    plain = Student(dense, recipe, False, not args.eager, args.steps)
    for i in range(args.warmup):  # compile and warm both, half-way through the schedule
        full.step(batches[i], teacher, args.steps // 2 - 1)
        plain.step(batches[i], teacher, args.steps // 2 - 1)
    ratios, full_s, plain_s = [], [], []
    for i in range(args.steps):
        batch = batches[(args.warmup + i) % len(batches)]
        # the whole schedule: dense at first, the target by mid-run
        pair = [(full, full_s), (plain, plain_s)][:: 1 if i % 2 == 0 else -1]
        for student, times in pair:
            times.append(student.step(batch, teacher, i))
        ratios.append(full_s[-1] / plain_s[-1])
    quartiles = statistics.quantiles(ratios, n=4)
    result = {"steps": args.steps, "warmup": args.warmup, "compiled": not args.eager,
              "batch": [recipe.train.batch_size, recipe.data.block_size],
              "median_step_seconds": {"with_machinery": statistics.median(full_s),
                                      "without": statistics.median(plain_s)},
              "median_ratio": statistics.median(ratios), "ratio_quartiles": [quartiles[0], quartiles[2]],
              "ratio_range": [min(ratios), max(ratios)]}
    del full, plain

    # mean estimation, a mask step and a whole task, on the dense model as the prune stage runs it
    model = dense.eval().requires_grad_(False)
    sites = node_sites(model)
    cfg = recipe.prune
    blocks = heldout[:: max(1, len(heldout) // cfg.mean_blocks)][: cfg.mean_blocks]
    start = time.perf_counter()
    means = site_means(model, sites, blocks)
    result["mean_estimation_seconds"] = time.perf_counter() - start
    result["mean_blocks"] = [len(blocks), blocks.shape[1]]
    train = builtin_task(TASK, tokenizer, "train", cfg.train_pairs)
    mask, samples = NodeMask(sites, means), []
    with mask.applied(model):
        for i in range(6):
            batch = train[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            start = time.perf_counter()
            (two_way_loss(model, batch)[0].mean() + cfg.k_coef * mask.kept()).backward()
            samples.append(time.perf_counter() - start)
    result["mask_step_seconds"] = statistics.median(samples[1:])
    data = TaskData(TASK, train, builtin_task(TASK, tokenizer, "validation", cfg.validation_pairs),
                    builtin_task(TASK, tokenizer, "test", cfg.test_pairs))
    for label, settings in (("with_controls", cfg), ("without_controls",
                            replace(cfg, nonsense_control=False, attribution_baseline=False, random_draws=0))):
        start = time.perf_counter()
        found = find_circuit(model, sites, means, data, settings)
        result[f"task_seconds_{label}"] = time.perf_counter() - start
        result[f"task_circuit_edges_{label}"] = found.result.circuit.edges if found.result.circuit else None
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps of each kind (default 40)")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--memory-steps", type=int, default=8)
    parser.add_argument("--eager", action="store_true", help="no torch.compile (the recipe compiles)")
    parser.add_argument("--variant", choices=["full", "plain"], help=argparse.SUPPRESS)  # the memory subprocesses
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(memory_run(args.variant, args.memory_steps, not args.eager)))
        return
    started = time.time()
    result = {"command": "python bench/bench_machinery.py " + " ".join(sys.argv[1:]), **machine()}
    result.update(timing(args))
    for variant in ("full", "plain"):
        cmd = [sys.executable, __file__, "--variant", variant, "--memory-steps", str(args.memory_steps)]
        cmd += ["--eager"] if args.eager else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        result[f"memory_{variant}"] = json.loads(out.strip().splitlines()[-1])
    result["wall_seconds"] = time.time() - started
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
