"""Time the magnitude projection on the default model's shape (4 layers, d=256, vocab 2048).

    python bench/bench_projection.py            # prints a table; --json PATH also writes it

Compares `projection_mask` (the cut at the k-th largest magnitude, from torch.kthvalue) with the
torch.topk mask it replaced, the two ways to take a top-k. Single-threaded numbers are the relevant
ones for a 2-process gloo run on 2 cores. bench_full_size.py measures both on GPT-2 small's tensors.
"""
import argparse
import json
import math
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from extract.arch import sparse_tensors
from extract.projection import kept_count, projection_mask
from extract.sparsity import project_


def topk_mask(weight, k, unit_axis, min_per_unit):
    """The implementation kthvalue replaced (commit 15ab816), kept here to compare against."""
    scores = weight.detach().abs().float()
    if unit_axis is not None and min_per_unit > 0:
        other = 1 - unit_axis
        j = min(min_per_unit, scores.shape[other])
        top = scores.topk(j, dim=other).indices
        protected = torch.zeros_like(scores, dtype=torch.bool).scatter_(other, top, True)
        scores = scores.masked_fill(protected, math.inf)
        k = max(k, j * scores.shape[unit_axis])
    flat = scores.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k >= flat.numel():
        return mask.fill_(True).view_as(weight)
    mask[flat.topk(k, sorted=False).indices] = True
    return mask.view_as(weight)


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
            kth_s = timed(lambda: [projection_mask(t.param.data, kept_count(t.param.numel(), density), t.unit_axis, 4)
                                   for t in tensors])
            topk_s = timed(lambda: [topk_mask(t.param.data, kept_count(t.param.numel(), density), t.unit_axis, 4)
                                    for t in tensors])
            full_s = timed(lambda: project_(tensors, density, 4))
            key = f"threads={threads} density=1/{round(1 / density)}"
            results[key] = {"topk_mask_ms": topk_s * 1e3, "kthvalue_mask_ms": kth_s * 1e3, "project_ms": full_s * 1e3}
            print(f"{key:28s} projection_mask (kthvalue) {kth_s * 1e3:7.1f} ms   earlier topk masks "
                  f"{topk_s * 1e3:7.1f} ms   project_ (masks + zeroing) {full_s * 1e3:7.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
