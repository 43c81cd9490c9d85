"""Is the same command on the same machine bit-reproducible? (issue 18, item 2)

    python bench/bench_determinism.py [--steps 60] [--out outputs/bench-determinism]
        [--json bench/results/determinism.json]

Runs `extract/run.py --stage sparsify train.steps=N` on the default recipe twice compiled (the
recipe's `train.compile: true`) and twice eager (`train.compile=false`), one after the other, and
compares each pair: identical files or not, the largest weight difference, how many weights are
zero in one run and not the other, the held-out losses, and the step time of each mode (median
tokens/s from the training log). About 6 minutes on 2 CPU cores at 60 steps.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from default_runs import ROOT, final_eval, machine, run


def compare(a: Path, b: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    pattern = sum(int(((wa[k] != 0) != (wb[k] != 0)).sum()) for k in wa)
    digest = [hashlib.sha256((d / "model" / "model.safetensors").read_bytes()).hexdigest() for d in (a, b)]
    logs = [[json.loads(line) for line in (d / "train_log.jsonl").read_text().splitlines()] for d in (a, b)]
    first = next((row_a["step"] for row_a, row_b in zip(*logs) if row_a.get("kl") != row_b.get("kl")), None)
    return {"identical_files": digest[0] == digest[1], "max_weight_difference": diff,
            "sparsity_pattern_differences": pattern, "total_weights": sum(v.numel() for v in wa.values()),
            "first_logged_step_whose_kl_differs": first,
            "heldout_loss": [final_eval(d)["heldout_loss"] for d in (a, b)],
            "median_tokens_per_second": statistics.median(r["tokens_per_s"] for log in logs for r in log
                                                          if "tokens_per_s" in r),
            "torch_equal": all(torch.equal(wa[k], wb[k]) for k in wa)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-determinism")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    start, result = time.time(), {}
    for mode, compiled in (("compiled", True), ("eager", False)):
        dirs = [args.out / f"{mode}-{name}" for name in "ab"]
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)  # two fresh runs, never a resumed one
            run(d, [f"train.steps={args.steps}", f"train.compile={str(compiled).lower()}", "eval.quote_examples=0",
                    f"train.eval_every={args.steps}"], stage="sparsify")
        result[mode] = compare(*dirs)
        print(mode, json.dumps(result[mode]), flush=True)
    out = {"command": "python bench/bench_determinism.py " + " ".join(sys.argv[1:]), **machine(),
           "steps": args.steps, "wall_seconds": time.time() - start, **result,
           "eager_speed_vs_compiled": result["eager"]["median_tokens_per_second"]
           / result["compiled"]["median_tokens_per_second"]}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
