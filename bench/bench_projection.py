"""Time the magnitude projection on the default model's shape (4 layers, d=256, vocab 2048).

    python bench/bench_projection.py            # prints a table; --json PATH also writes it

Compares torch.topk on each tensor against a threshold from torch.kthvalue, the two ways to take
a top-k. Single-threaded numbers are the relevant ones for a 2-process gloo run on 2 cores.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from extract.models import sparse_tensors
from extract.sparsity import kept_count, project_, projection_mask


def kthvalue_mask(weight, k, unit_axis, min_per_unit):
    """Alternative: protected entries, then a magnitude threshold from kthvalue (ties may add a few)."""
    scores = weight.abs()
    if unit_axis is not None and min_per_unit > 0:
        top = scores.topk(min_per_unit, dim=1 - unit_axis).indices
        scores = scores.scatter(1 - unit_axis, top, float("inf"))
    threshold = scores.flatten().kthvalue(scores.numel() - k + 1).values
    return scores >= threshold


def timed(fn, repeats=7):
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=2048, n_layer=4, n_embd=256, n_head=16, n_positions=256,
                                       bos_token_id=0, eos_token_id=0))
    tensors = sparse_tensors(model)
    results = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for density in (1 / 8, 1 / 32):
            topk_s = timed(lambda: [projection_mask(t.param.data, kept_count(t.param.numel(), density), t.unit_axis, 4)
                                    for t in tensors])
            kth_s = timed(lambda: [kthvalue_mask(t.param.data, kept_count(t.param.numel(), density), t.unit_axis, 4)
                                   for t in tensors])
            full_s = timed(lambda: project_(tensors, density, 4))
            key = f"threads={threads} density=1/{round(1 / density)}"
            results[key] = {"topk_mask_ms": topk_s * 1e3, "kthvalue_mask_ms": kth_s * 1e3, "project_ms": full_s * 1e3}
            print(f"{key:28s} topk masks {topk_s * 1e3:7.1f} ms   kthvalue masks {kth_s * 1e3:7.1f} ms   "
                  f"project_ (topk + zeroing) {full_s * 1e3:7.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
