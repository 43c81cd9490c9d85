"""Pruning penalties side by side: the fixed k_coef ladder against the budget penalty that adapts to the
model's size (`prune.penalty`), on the embedded model, a sparse model and any saved model.

    python bench/bench_penalty.py --json bench/results/penalty.json
    python bench/bench_penalty.py --models dense /tmp/smollm2 --tasks single_double_quote \\
        --variants "penalty=budget,init_tau=1.0,batch_size=8" "penalty=budget,batch_size=8" --steps-log 5

Each variant is a comma-separated list of `prune.` overrides on the tiny-python recipe's prune settings.
Each (model, task, variant) runs `find_circuit` with the controls off (they do not change the circuit;
`--controls` turns the recipe's on, to time a whole task):
the mask's task loss and kept nodes every `--steps-log` steps, the nodes it kept, and the circuit's
nodes, edges and test loss, sufficient and necessary. `bench/prepare_smollm2.py DIR` makes a real
135M checkpoint to pass as a model. Run it alone: two torch jobs on 2 cores slow each other.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402
from default_runs import machine  # noqa: E402

from extract.arch import node_sites  # noqa: E402
from extract.circuits.find import find_circuit  # noqa: E402
from extract.circuits.stage import _mean_blocks, cached_means, load_task  # noqa: E402
from extract.models import load_model, load_tokenizer  # noqa: E402
from extract.recipe import ModelConfig, PruneConfig, load_recipe  # noqa: E402

VARIANTS = ["penalty=fixed", "penalty=budget", "penalty=budget,init_tau=1.0"]
QUIET = ["prune.nonsense_control=false", "prune.attribution_baseline=false", "prune.random_draws=0"]


def parse_variant(text: str, base: PruneConfig) -> PruneConfig:
    values = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in text.split(",") if item)}
    unknown = set(values) - {f.name for f in fields(PruneConfig)}
    if unknown:
        raise SystemExit(f"--variants {text!r}: no prune setting {', '.join(sorted(unknown))}")
    return replace(base, **values)


def run(model_name: str, tasks: list[str], variants: list[str], steps_log: int, cache: Path,
        controls: bool = False) -> list[dict]:
    recipe, _ = load_recipe("tiny-python", [] if controls else QUIET)
    config = recipe.model if model_name == "dense" else ModelConfig(name_or_path=model_name)
    model, tokenizer = load_model(config).eval(), load_tokenizer(config)
    sites = node_sites(model)
    means = cached_means(model, sites, _mean_blocks(recipe, tokenizer), cache)
    rows = []
    for name in tasks:
        task = load_task(name, tokenizer, model.config.max_position_embeddings, recipe)
        for variant in variants:
            cfg, trace, start = parse_variant(variant, recipe.prune), [], time.time()
            result = find_circuit(model, sites, means, task, cfg,
                                  on_step=lambda step, loss, kept: trace.append([step, round(loss, 3), int(kept)]))
            result = result.result
            circuit = result.circuit
            rows.append({"model": model_name, "nodes_in_model": sum(s.width for s in sites), "task": name,
                         "variant": variant, "full_loss": result.full_loss, "solved": result.solved,
                         "attempts": [[a.k_coef, a.mask_kept_nodes] for a in result.attempts],
                         **({"nodes": circuit.nodes, "edges": circuit.edges, "test_loss": circuit.loss,
                             "sufficient": circuit.sufficient, "necessary": circuit.necessary} if circuit else {}),
                         "trace": [t for t in trace if t[0] % steps_log == 0] + trace[-1:],
                         "seconds": round(time.time() - start)})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "trace"}), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["dense"], help="'dense' (embedded) or model directories")
    parser.add_argument("--tasks", nargs="+", default=["while_return_true", "single_double_quote"])
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--steps-log", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--controls", action="store_true", help="the recipe's controls on (times a whole task)")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    cache = Path(os.environ.get("TMPDIR", "/tmp")) / "bench-penalty-means"
    rows = [row for model in args.models
            for row in run(model, args.tasks, args.variants, args.steps_log, cache, args.controls)]
    result = {"command": "python bench/bench_penalty.py " + " ".join(sys.argv[1:]), **machine(), "rows": rows,
              "wall_seconds": round(time.time() - start)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
