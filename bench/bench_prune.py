"""Time circuit pruning on the embedded dense model: one mask-training step, and one whole task.

    python bench/bench_prune.py                 # prints a table; --json PATH also writes it

A mask step is a forward and backward pass of a batch of task prompts through the hooked model.
The whole-task time covers mask training, the loss-vs-size curve, bisection and the checks, with
the recipe's prune settings (overridable: --steps, --batch-size).
"""
import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from extract.circuits.find import TaskData, find_circuit  # noqa: E402
from extract.circuits.masks import NodeMask  # noqa: E402
from extract.circuits.sites import node_sites, site_means  # noqa: E402
from extract.data import prepare_heldout  # noqa: E402
from extract.models import load_model, load_tokenizer  # noqa: E402
from extract.recipe import ModelConfig, load_recipe  # noqa: E402
from extract.tasks.builtin import builtin_task  # noqa: E402
from extract.tasks.examples import two_way_loss  # noqa: E402


def step_seconds(model, mask, examples, batch_size, repeats=5):
    samples = []
    with mask.applied(model):
        for i in range(repeats + 1):
            batch = examples[i * batch_size:(i + 1) * batch_size]
            start = time.perf_counter()
            loss = two_way_loss(model, batch)[0].mean() + 1e-3 * mask.kept()
            loss.backward()
            samples.append(time.perf_counter() - start)
    return statistics.median(samples[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="single_double_quote")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--json")
    args = parser.parse_args()
    recipe, _ = load_recipe("tiny-python", [])
    cfg = recipe.prune
    cfg.steps = args.steps or cfg.steps
    cfg.batch_size = args.batch_size or cfg.batch_size
    model = load_model(ModelConfig()).eval().requires_grad_(False)
    tokenizer = load_tokenizer(ModelConfig())
    sites = node_sites(model)
    blocks, _ = prepare_heldout(recipe, tokenizer)
    means = site_means(model, sites, blocks[: cfg.mean_blocks])
    train = builtin_task(args.task, tokenizer, "train", cfg.train_pairs)
    validation = builtin_task(args.task, tokenizer, "validation", cfg.validation_pairs)
    test = builtin_task(args.task, tokenizer, "test", cfg.test_pairs)
    rows = {"threads": torch.get_num_threads(), "task": args.task}
    for batch_size in (32, 64):
        rows[f"mask_step_seconds_batch{batch_size}"] = step_seconds(model, NodeMask(sites, means), train, batch_size)
    start = time.perf_counter()
    found = find_circuit(model, sites, means, TaskData(args.task, train, validation, test), cfg)
    rows.update(whole_task_seconds=time.perf_counter() - start, steps=cfg.steps, batch_size=cfg.batch_size,
                circuit=found.result.to_dict()["circuit"])
    print(json.dumps(rows, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
