"""How the circuit size is chosen: margins on validation, against sufficiency on unseen test examples.

    python bench/bench_selection.py [--model PATH] [--json PATH]

For every built-in task the model solves (test loss at most the target), one mask is trained with
the recipe's prune settings; then, for each margin z, bisection picks the smallest top-k whose
validation loss plus z standard errors of the predicted test loss is at most the target, and that
circuit is scored on test.
With z = 0 the choice sits right at the target on validation, so on test it misses about half the
time; the recipe's `prune.validation_margin_se` is chosen from this table (docs/circuits.md).
"""
import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from extract.circuits.masks import NodeMask  # noqa: E402
from extract.circuits.prune import mask_ranking, scores_with_gates, smallest_circuit, train_mask  # noqa: E402
from extract.circuits.sites import node_sites, site_means  # noqa: E402
from extract.circuits.stage import _mean_blocks, load_task  # noqa: E402
from extract.models import load_model, load_tokenizer  # noqa: E402
from extract.recipe import ModelConfig, load_recipe  # noqa: E402
from extract.tasks.builtin import TASKS  # noqa: E402
from extract.tasks.examples import two_way_scores  # noqa: E402

MARGINS = (0.0, 1.0, 2.0, 3.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="model directory (default: the embedded dense model)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    recipe, _ = load_recipe("tiny-python", [])
    cfg = recipe.prune
    model_cfg = ModelConfig(name_or_path=args.model)
    model, tokenizer = load_model(model_cfg).eval(), load_tokenizer(model_cfg)
    sites = node_sites(model)
    means = site_means(model, sites, _mean_blocks(recipe, tokenizer))
    rows = []
    for name in TASKS:
        task = load_task(name, tokenizer, model.config.max_position_embeddings, recipe)
        if two_way_scores(model, task.test)["loss"] > cfg.target_loss:
            continue
        torch.manual_seed(cfg.seed)
        mask = NodeMask(sites, means)
        train_mask(model, mask, task.train_examples(), cfg)
        for z in MARGINS:
            found = smallest_circuit(model, mask, mask_ranking(mask), task.validation, cfg.target_loss, z,
                                     len(task.test))
            row = {"task": name, "margin_se": z, "nodes": None, "validation_loss": None, "test_loss": None}
            if found is not None:
                gates, chosen_on = found
                row.update(nodes=int(sum(g.sum() for g in gates.values())), validation_loss=chosen_on["loss"],
                           test_loss=scores_with_gates(model, mask, gates, task.test)["loss"])
            row["sufficient_on_test"] = row["test_loss"] is not None and row["test_loss"] <= cfg.target_loss
            rows.append(row)
            print(json.dumps(row), flush=True)
    for z in MARGINS:
        chosen = [r for r in rows if r["margin_se"] == z]
        print(f"margin {z:g} SE: {sum(r['sufficient_on_test'] for r in chosen)} of {len(chosen)} circuits "
              f"sufficient on test; nodes {[r['nodes'] for r in chosen]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "target_loss": cfg.target_loss, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
