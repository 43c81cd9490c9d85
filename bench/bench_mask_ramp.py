"""The penalty ramp (`prune.k_coef_ramp`): does pruning find a circuit on a model that solves its task
almost perfectly, and what does the ramp cost in circuit size on the default tasks?

    python bench/bench_mask_ramp.py --json bench/results/mask_ramp.json
    python bench/bench_mask_ramp.py --sparse outputs/tiny-python/model --json bench/results/mask_ramp.json

Robustness (always):
The model is the test suite's quote model (tests/conftest.py `make_quote_model`: a 2-layer GPT-2
trained on a closing-quote task file to a loss of about 1e-4), pruned as `tests/test_prune_stage.py`
prunes it (80 mask steps, batch 32, lr 0.05, the default penalty and fallbacks, means on 8 held-out
blocks of the test corpus). A different thread count changes the order of floating-point sums, which
stands in for another machine's rounding. Reported per run: the penalties tried, the nodes each mask
kept, and whether the circuit is sufficient and necessary on test.

Size (with `--sparse DIR`, a sparse model of the default recipe): `while_return_true` and
`single_double_quote` pruned on the embedded dense model and on DIR at each ramp, with the default
prune settings and the controls off (they do not change the circuit): nodes, edges and test loss.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402
from default_runs import machine  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from extract.arch import node_sites  # noqa: E402
from extract.circuits.find import find_circuit  # noqa: E402
from extract.circuits.sites import site_means  # noqa: E402
from extract.circuits.stage import _mean_blocks, load_task  # noqa: E402
from extract.recipe import TaskFileRef, load_recipe  # noqa: E402
from tests.conftest import make_quote_model, make_tiny_corpus, tiny_recipe_dict  # noqa: E402

PRUNE = ["prune.steps=80", "prune.batch_size=32", "prune.lr=0.05", "prune.mean_blocks=8",
         "prune.nonsense_control=false", "prune.attribution_baseline=false", "prune.random_draws=0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--ramps", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--sparse", help="a sparse model of the default recipe: also measure circuit sizes")
    parser.add_argument("--json")
    args = parser.parse_args()
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, task_file = make_quote_model(Path(tmp) / "quote")
        corpus = make_tiny_corpus(Path(tmp) / "corpus" / "code.jsonl")
        recipe_file = Path(tmp) / "recipe.yaml"
        recipe_file.write_text(yaml.safe_dump(tiny_recipe_dict(model_dir, corpus, Path(tmp) / "out")))
        recipe, _ = load_recipe(str(recipe_file), PRUNE)
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        sites = node_sites(model)
        means = site_means(model, sites, _mean_blocks(recipe, tokenizer))
        task = load_task(TaskFileRef(str(task_file)), tokenizer, 64, recipe)
        rows = []
        for ramp in args.ramps:
            for threads in args.threads:
                torch.set_num_threads(threads)
                for seed in range(args.seeds):
                    found = find_circuit(model, sites, means, task, replace(recipe.prune, seed=seed, k_coef_ramp=ramp))
                    result = found.result
                    circuit = result.circuit
                    rows.append({"ramp": ramp, "threads": threads, "seed": seed,
                                 "attempts": [[a.k_coef, a.mask_kept_nodes] for a in result.attempts],
                                 **({"nodes": circuit.nodes, "test_loss": circuit.loss,
                                     "validation_loss": circuit.validation_loss} if circuit else {}),
                                 "ok": bool(circuit and circuit.sufficient and circuit.necessary)})
                    print(json.dumps(rows[-1]), flush=True)
    summary = {f"ramp {ramp}": f"{sum(r['ok'] for r in rows if r['ramp'] == ramp)} of "
                               f"{sum(r['ramp'] == ramp for r in rows)} sufficient and necessary on test"
               for ramp in args.ramps}
    result = {"command": "python bench/bench_mask_ramp.py " + " ".join(sys.argv[1:]), **machine(),
              "full_model_test_loss": found.result.full_loss, "rows": rows, "summary": summary}
    if args.sparse:
        torch.set_num_threads(args.threads[0])
        result["sizes"] = sizes(args.ramps, args.sparse)
    result["wall_seconds"] = time.time() - start
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def sizes(ramps: list[float], sparse_dir: str) -> list[dict]:
    """Circuit size and test loss of two default tasks on the embedded dense model and `sparse_dir`."""
    from extract.models import load_model, load_tokenizer
    from extract.recipe import ModelConfig

    recipe, _ = load_recipe("tiny-python", ["prune.nonsense_control=false", "prune.attribution_baseline=false",
                                            "prune.random_draws=0"])
    rows = []
    for role, config in (("dense", recipe.model), ("sparse", ModelConfig(name_or_path=sparse_dir))):
        model, tokenizer = load_model(config).eval(), load_tokenizer(config)
        sites = node_sites(model)
        means = site_means(model, sites, _mean_blocks(recipe, tokenizer))
        for name in ("while_return_true", "single_double_quote"):
            task = load_task(name, tokenizer, model.config.max_position_embeddings, recipe)
            for ramp in ramps:
                result = find_circuit(model, sites, means, task, replace(recipe.prune, k_coef_ramp=ramp)).result
                circuit = result.circuit
                rows.append({"task": name, "model": role, "ramp": ramp, "full_loss": result.full_loss,
                             "solved": result.solved, "k_coef": result.k_coef,
                             **({"nodes": circuit.nodes, "edges": circuit.edges, "test_loss": circuit.loss,
                                 "sufficient": circuit.sufficient, "necessary": circuit.necessary}
                                if circuit else {})})
                print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
