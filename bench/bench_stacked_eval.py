"""Would scoring K circuits in one batched forward (their gates stacked along the batch) save time?

    python bench/bench_stacked_eval.py --json bench/results/stacked_eval.json
    python bench/bench_stacked_eval.py --model /tmp/smollm2 --task single_double_quote --repeats 1

The random circuits of a check (10) and the points of a loss-against-size curve (8) are each a pass
over the same test examples with other gates. Stacking K gate sets along the batch does K times the
work per forward in fewer, larger forwards: it pays only where a forward of the usual batch leaves
the hardware idle. This times the same examples scored K times one after another (batch 64, as
`two_way_scores` does) against once with each example repeated K times in batches of 64 x K, with
the circuit masks applied (all nodes kept: the gate arithmetic is the same for any gates), on the
embedded dense model or any saved model. Run it alone.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from default_runs import machine  # noqa: E402

from extract.arch import node_sites  # noqa: E402
from extract.circuits.masks import NodeMask  # noqa: E402
from extract.circuits.stage import load_task  # noqa: E402
from extract.models import load_model, load_tokenizer  # noqa: E402
from extract.recipe import ModelConfig, load_recipe  # noqa: E402
from extract.tasks.examples import two_way_scores  # noqa: E402


def seconds(work, repeats: int) -> float:
    """The fastest of `repeats` runs of `work`."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dense", help="'dense' (embedded) or a model directory")
    parser.add_argument("--task", default="single_double_quote")
    parser.add_argument("--stack", type=int, nargs="+", default=[2, 4, 10])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    recipe, _ = load_recipe("tiny-python")
    config = recipe.model if args.model == "dense" else ModelConfig(name_or_path=args.model)
    model, tokenizer = load_model(config).eval(), load_tokenizer(config)
    sites = node_sites(model)
    mask = NodeMask(sites, {s.key: torch.zeros(s.width) for s in sites})
    gates = {s.key: torch.ones(s.width) for s in sites}
    test = load_task(args.task, tokenizer, model.config.max_position_embeddings, recipe).test
    rows = []
    with mask.with_gates(model, gates):
        two_way_scores(model, test)  # warm-up
        for k in args.stack:
            one_by_one = seconds(lambda: [two_way_scores(model, test) for _ in range(k)], args.repeats)
            stacked = seconds(lambda: two_way_scores(model, [e for e in test for _ in range(k)], 64 * k), args.repeats)
            rows.append({"circuits": k, "one_by_one_s": round(one_by_one, 3), "stacked_s": round(stacked, 3),
                         "speed_up": round(one_by_one / stacked, 2)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"command": "python bench/bench_stacked_eval.py " + " ".join(sys.argv[1:]), **machine(),
              "model": args.model, "task": args.task, "test_examples": len(test), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
