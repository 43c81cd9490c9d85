"""Circuit size against the pruning budget (issue 17, item 5): edges at the target loss after 100,
200, 400 and 800 mask-training steps, for the dense and the sparse model of a finished run.

    python bench/bench_prune_budget.py --run outputs/tiny-python [--tasks while_return_true]
        [--steps 100 200 400 800] [--json bench/results/prune_budget.json]

The run's recipe settings throughout (penalty and its fallbacks, batch, lr, splits, means), with the
controls off: the circuit is chosen on validation and scored on test exactly as the prune stage does.
The tasks default to the ones the run compares (both models solve them). About 7 minutes per task
and model on 2 CPU cores for the default four budgets.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from default_runs import machine  # noqa: E402

from extract.circuits.find import find_circuit, geometric_mean  # noqa: E402
from extract.circuits.sites import node_sites  # noqa: E402
from extract.circuits.stage import _mean_blocks, cached_means, load_task  # noqa: E402
from extract.models import (  # noqa: E402
    load_model,
    load_tokenizer,
    weights_fingerprint,  # noqa: E402
)
from extract.paths import CIRCUITS_DIRNAME, MODEL_DIRNAME  # noqa: E402
from extract.recipe import ModelConfig, load_recipe  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run's output folder (report.json, model/)")
    parser.add_argument("--tasks", nargs="+", help="default: the tasks the run compares")
    parser.add_argument("--steps", nargs="+", type=int, default=[100, 200, 400, 800])
    parser.add_argument("--json")
    args = parser.parse_args()
    run = Path(args.run)
    recipe, _ = load_recipe(str(run / "recipe.yaml"), [f"output_dir={run}"])
    report = json.loads((run / "report.json").read_text())
    tasks = args.tasks or report["summary"]["tasks_compared"]
    if not tasks:
        sys.exit(f"{run}: the run compares no task; name some with --tasks")
    models = {"dense": recipe.model, "sparse": ModelConfig(name_or_path=str(run / MODEL_DIRNAME))}
    started = time.time()
    rows = []
    for role, cfg in models.items():
        model, tokenizer = load_model(cfg).eval(), load_tokenizer(cfg)
        sites = node_sites(model)
        means = cached_means(model, sites, _mean_blocks(recipe, tokenizer), run / CIRCUITS_DIRNAME / "means",
                             weights_fingerprint(model))
        for task in tasks:
            data = load_task(task, tokenizer, model.config.max_position_embeddings, recipe)
            for steps in args.steps:
                settings = replace(recipe.prune, steps=steps, random_draws=0, nonsense_control=False,
                                   attribution_baseline=False)
                start = time.perf_counter()
                found = find_circuit(model, sites, means, data, settings)
                circuit = found.result.to_dict()["circuit"] or {}
                rows.append({"task": task, "model": role, "steps": steps, "edges": circuit.get("edges"),
                             "nodes": circuit.get("nodes"), "test_loss": circuit.get("loss"),
                             "sufficient": circuit.get("sufficient"), "k_coef": found.result.k_coef,
                             "seconds": time.perf_counter() - start})
                print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for steps in args.steps:
        edges = {role: geometric_mean([r["edges"] for r in rows if r["model"] == role and r["steps"] == steps])
                 for role in models}
        seconds = sum(r["seconds"] for r in rows if r["steps"] == steps) / (len(models) * len(tasks))
        summary[str(steps)] = {"edges_geomean": edges, "seconds_per_task": seconds,
                               "edge_ratio": edges["dense"] / edges["sparse"] if all(edges.values()) else None}
    result = {"command": "python bench/bench_prune_budget.py " + " ".join(sys.argv[1:]), "run": str(run),
              "recipe": report.get("recipe"), "tasks": tasks, "rows": rows, "by_steps": summary,
              **machine(), "wall_seconds": time.time() - started}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
