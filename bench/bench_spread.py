"""Run-to-run spread of the default recipe over data orders (issue 17, item 3).

    python bench/bench_spread.py [--seeds 0 1 2] [--out outputs/bench-spread] [--json bench/results/spread.json]

Runs the README command once per `train.seed` (each in OUTPUT/seed-K, resumable: rerun the same
command after an interruption) and reports, as mean and range over the seeds, the sparse model's
held-out loss and ratio to dense, its closing-quote accuracy, the tasks it solves, and the edge ratio
over the tasks both models solve. Circuits are chosen exactly as the README run chooses them; the
controls, which never change the chosen circuit, are off to save time. The dense model is the same
in every run, so it is pruned once (seed 0's run) and its circuits are paired with each seed's
sparse ones. About 15 minutes per seed on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from default_runs import FAST_PRUNE, ROOT, report, run

from extract.circuits.results import tasks_from_dict
from extract.circuits.stage import summarise


def run_seed(seed: int, out: Path) -> dict:
    models = "[dense, sparse]" if seed == 0 else "[sparse]"
    seconds = run(out, [f"train.seed={seed}", f"prune.models={models}", *FAST_PRUNE])
    return {**report(out), "bench_seconds": seconds}


def spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values), "values": values}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-spread")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.seeds[0] != 0:
        sys.exit("--seeds must start with 0: seed 0's run prunes the dense model for every seed")
    reports = {seed: run_seed(seed, args.out / f"seed-{seed}") for seed in args.seeds}
    dense = {task: by_role["dense"] for task, by_role in reports[0]["tasks"].items()}
    rows = []
    for seed, rep in reports.items():
        tasks = {task: {"dense": dense[task], "sparse": by_role["sparse"]} for task, by_role in rep["tasks"].items()}
        summary = summarise(tasks_from_dict(tasks))
        sparse = rep["sparse"]
        rows.append({"seed": seed, "heldout_loss": sparse["heldout_loss"], "loss_ratio": sparse["loss_ratio"],
                     "quote_accuracy": sparse["quote_accuracy"], "solved": summary["solved"]["sparse"],
                     "tasks_compared": summary["tasks_compared"], "edge_ratio": summary["edge_ratio"],
                     "edges_geomean": summary["edges_geomean"],
                     "seconds": rep["bench_seconds"]})
        print(json.dumps(rows[-1]), flush=True)
    ratios = [r["edge_ratio"] for r in rows if r["edge_ratio"]]
    result = {"command": "python bench/bench_spread.py " + " ".join(sys.argv[1:]), "rows": rows,
              "dense_heldout_loss": reports[0]["dense"]["heldout_loss"],
              "heldout_loss": spread([r["heldout_loss"] for r in rows]),
              "loss_ratio": spread([r["loss_ratio"] for r in rows]),
              "quote_accuracy": spread([r["quote_accuracy"] for r in rows]),
              "tasks_solved": spread([len(r["solved"]) for r in rows]),
              "edge_ratio": spread(ratios) if ratios else None,
              "runs_without_a_compared_task": sum(not r["edge_ratio"] for r in rows)}
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
