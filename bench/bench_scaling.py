"""How sparsify and prune time grow with width and depth (issue 17, item 6), up to GPT-2 small.

    python bench/bench_scaling.py [--sizes 4x256 4x768 12x256 12x768] [--json bench/results/scaling.json]

Random GPT-2 models with the real GPT-2 vocabulary (50,257 tokens; the test extra's tokenizer), so
12x768 is GPT-2 small's shape. Per size: a sparsify step of 2 x 256 tokens with the gpt2-small
recipe's settings (KL to a frozen copy, the projection and schedules; eager), its projection share,
and a mask step at batch 32 on `single_double_quote` prompts. The step time against the model's FLOPs
per token (8N: student forward and backward, teacher forward) gives the CPU's throughput, which is
what a GPU estimate divides by instead. A pruned task is estimated as the recipe's mask steps times
the mask step, times the whole-task overhead measured on the embedded model (bench_machinery.py:
bisection, checks and curve; without the controls). About 5 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_machinery import Student  # noqa: E402  (run from bench/: the same step the machinery benchmark times)
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel  # noqa: E402

from extract.circuits.masks import NodeMask  # noqa: E402
from extract.circuits.sites import node_sites  # noqa: E402
from extract.recipe import load_recipe  # noqa: E402
from extract.tasks.builtin import builtin_task  # noqa: E402
from extract.tasks.examples import two_way_loss  # noqa: E402
from extract.testing import write_gpt2_tokenizer  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def measure(layers: int, width: int, tokenizer, recipe, steps: int, mask_batch: int) -> dict:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=layers, n_embd=width, n_head=width // 64,
                        n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    dense = GPT2LMHeadModel(config)
    params = sum(p.numel() for p in dense.parameters())
    teacher = copy.deepcopy(dense).eval().requires_grad_(False)
    student = Student(dense, recipe, True, False)
    batch = torch.randint(0, len(tokenizer), (2, 256))
    times, projection = [], []
    for i in range(steps + 1):  # the first step warms up
        times.append(student.step(batch, teacher, (i + 1) / (steps + 1)))
        projection.append(student.projection_seconds)
    step = statistics.median(times[1:])
    del student, teacher

    model = dense.eval().requires_grad_(False)
    sites = node_sites(model)
    means = {s.key: torch.zeros(s.width) for s in sites}  # the values do not change the cost
    examples = builtin_task("single_double_quote", tokenizer, "train", 4 * mask_batch)
    mask, mask_times = NodeMask(sites, means), []
    with mask.applied(model):
        for i in range(4):
            batch_examples = examples[i * mask_batch:(i + 1) * mask_batch]
            start = time.perf_counter()
            (two_way_loss(model, batch_examples)[0].mean() + 1e-3 * mask.kept()).backward()
            mask_times.append(time.perf_counter() - start)
    flops_per_token = 8 * params
    return {"layers": layers, "width": width, "params": params, "nodes": sum(s.width for s in sites),
            "sparsify_step_seconds": step, "tokens_per_second": 512 / step,
            "projection_share": statistics.median(p / t for p, t in zip(projection[1:], times[1:])),
            "cpu_gflops_per_second": flops_per_token * 512 / step / 1e9,
            "mask_step_seconds": statistics.median(mask_times[1:]),
            "mean_prompt_tokens": statistics.mean(len(e.prompt_ids) for e in examples[:mask_batch])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["4x256", "4x768", "12x256", "12x768"],
                        help="LAYERSxWIDTH, heads of 64")
    parser.add_argument("--steps", type=int, default=3, help="timed sparsify steps per size (after one warm-up)")
    parser.add_argument("--json")
    args = parser.parse_args()
    recipe, _ = load_recipe("gpt2-small")
    tokenizer = AutoTokenizer.from_pretrained(write_gpt2_tokenizer(Path(tempfile.mkdtemp()) / "gpt2"))
    machinery = json.loads((RESULTS / "machinery.json").read_text())
    overhead = machinery["task_seconds_without_controls"] / (100 * machinery["mask_step_seconds"])
    started, rows = time.time(), []
    for size in args.sizes:
        layers, width = map(int, size.split("x"))
        row = measure(layers, width, tokenizer, recipe, args.steps, recipe.prune.batch_size)
        row["prune_task_seconds_estimate"] = recipe.prune.steps * row["mask_step_seconds"] * overhead
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"command": "python bench/bench_scaling.py " + " ".join(sys.argv[1:]), "rows": rows,
              "task_overhead_from_machinery_json": overhead, "mask_batch": recipe.prune.batch_size,
              "mask_steps": recipe.prune.steps,
              "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                          "processor": platform.processor()},
              "versions": {"torch": torch.__version__, "python": platform.python_version()},
              "wall_seconds": time.time() - started}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
