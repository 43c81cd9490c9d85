"""The price of bridges (issue 32): step time and loss reached, without bridges, with the sampled hybrid
estimator (one site per direction per step), with the full sum over sites, and with the sampled
estimator from randomly initialised bridges rather than the identity.

    python bench/bench_bridges.py [--steps 30] [--variants none sampled all random-init] [--work DIR] [--json FILE]

Each variant sparsifies the embedded default for `--steps` steps (eager, the recipe's seed, so every
variant sees the same batches) into WORK/VARIANT and reads its training log: the median time per step
after the first 10 (from the logged tokens per second), the held-out loss and KL at the last step, and
with bridges the last logged bridge terms. Run it alone: two torch jobs on 2 cores slow each other
several-fold, and the step-time ratio is only meaningful between variants of one run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from default_runs import finish, machine, run

VARIANTS = {"none": [], "sampled": ["bridges.enabled=true", "bridges.hybrid_sites=sampled"],
            "all": ["bridges.enabled=true", "bridges.hybrid_sites=all"],
            "random-init": ["bridges.enabled=true", "bridges.hybrid_sites=sampled", "bridges.init=random"]}


def measure(work: Path, variant: str, steps: int) -> dict:
    out = work / variant
    log = out / "train_log.jsonl"
    if not log.is_file() or not (out / "model").is_dir():
        run(out, [*VARIANTS[variant], f"train.steps={steps}", "train.log_every=1", f"train.eval_every={steps}",
                  f"train.checkpoint_every={steps}"], stage="sparsify")
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    logged = [r for r in rows if "tokens_per_s" in r and r["step"] > 10]
    tokens = rows[-1]["tokens"] / rows[-1]["step"]
    last = rows[-1]
    bridge_terms = {k: v for k, v in last.items() if k.startswith("bridge_")}
    return {"variant": variant, "steps": steps,
            "seconds_per_step": statistics.median(tokens / r["tokens_per_s"] for r in logged),
            "heldout_loss": last["heldout_loss"], "kl_to_dense": last["heldout_kl_to_dense"], **bridge_terms}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--work", type=Path, default=Path("bench-bridges"))
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = [measure(args.work, variant, args.steps) for variant in args.variants]
    plain = next((r["seconds_per_step"] for r in rows if r["variant"] == "none"), None)
    for row in rows:
        row["step_time_ratio"] = row["seconds_per_step"] / plain if plain else None
        print(f"{row['variant']:>8}: {row['seconds_per_step']:.2f} s/step"
              + (f" ({row['step_time_ratio']:.2f}x)" if plain else "")
              + f", held-out {row['heldout_loss']:.4f}, KL {row['kl_to_dense']:.4f}"
              + "".join(f", {k[7:]} {v:.4f}" for k, v in row.items() if k.startswith("bridge_")))
    finish({"command": " ".join(["python bench/bench_bridges.py", *sys.argv[1:]]),
            "steps": args.steps, **machine(), "rows": rows}, Path(args.json) if args.json else None)


if __name__ == "__main__":
    main()
