"""What the dense start is worth, and recipe A/Bs judged by it (issue 31).

    python bench/bench_init.py [--steps 300] [--seeds 0 1] [--inits dense random]
        [--variant NAME [key=value ...]] ... [--work DIR] [--json bench/results/init.json]

For each variant (a name and recipe overrides on the default recipe; default: one variant, `default`,
with none), each seed (`train.seed`: the data order) and each start, sparsify into
WORK/NAME-START-sSEED and write its report, then score on test every task of the recipe with the
unpruned dense and sparse models. The starts: `dense` (the checkpoint, as every run does) and
`random` (`model.random_start=true`: a fresh model of the same shape, the same dense teacher, data
order and budget). Per run: held-out loss, KL to dense, the tasks the dense model solves that the
sparse one still solves (task loss at most prune.target_loss, on test), and the report's fidelity
figures. Per variant: means over seeds, and what the dense start is worth (random-start held-out loss
minus dense-start, seed by seed).

Runs are resumable: rerun the same command after an interruption; finished runs are read back.
About 5.5 minutes per 300-step run and 12 per 900-step run on 2 CPU cores, eager, so two runs of the
same settings are bit-identical.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from default_runs import DEFAULT_RECIPE, ROOT, finish, machine, report, run

from extract.atomic import write_json_atomic

STARTS = {"dense": [], "random": ["model.random_start=true"]}


def run_overrides(overrides: list[str], steps: int, seed: int, start: str) -> list[str]:
    return [*overrides, f"train.steps={steps}", f"train.seed={seed}", *STARTS[start]]


def task_losses(recipe, model_dir: Path | None = None) -> dict[str, float]:
    """Test loss of every recipe task on an unpruned model (the recipe's dense model when `model_dir` is None)."""
    import torch

    from extract.circuits.stage import load_task, task_name
    from extract.models import load_model, load_tokenizer
    from extract.recipe import ModelConfig
    from extract.tasks.examples import two_way_scores

    cfg = recipe.model if model_dir is None else ModelConfig(name_or_path=str(model_dir))
    tokenizer, model = load_tokenizer(cfg), load_model(cfg)
    context = model.config.max_position_embeddings
    with torch.no_grad():
        return {task_name(t): two_way_scores(model, load_task(t, tokenizer, context, recipe).test)["loss"]
                for t in recipe.tasks}


def run_row(work: Path, name: str, overrides: list[str], steps: int, seed: int, start: str, recipe,
            dense_tasks: dict[str, float]) -> dict:
    out = work / f"{name}-{start}-s{seed}"
    args = run_overrides(overrides, steps, seed, start)
    saved = out / "bench_init_row.json"  # a finished row is read back, not scored again
    if saved.is_file() and json.loads(saved.read_text())["overrides"] == args:
        return json.loads(saved.read_text())
    if not (out / "model" / "config.json").is_file():
        run(out, args, stage="sparsify")
    if not (out / "report.json").is_file():
        run(out, args, stage="report")
    rep = report(out)
    sparse, weights = rep["sparse"], rep["fidelity"]["weights"]
    tasks, target = task_losses(recipe, out / "model"), recipe.prune.target_loss
    solved = sorted(t for t, loss in dense_tasks.items() if loss <= target)
    units = weights["units_at_minimum"]
    row = {"variant": name, "start": start, "seed": seed, "overrides": args, "heldout_loss": sparse["heldout_loss"],
           "loss_ratio": sparse["loss_ratio"], "kl_to_dense": sparse["kl_to_dense"],
           "kept": [t for t in solved if tasks[t] <= target], "dense_solves": solved, "task_losses": tasks,
           "among_dense_largest": weights["among_dense_largest"],
           "matrices_among": weights["matrices"]["among_dense_largest"],
           "sign_agreement": weights["sign_agreement"], "norm_ratio": weights["norm_ratio"],
           "mean_r2": rep["fidelity"]["representation"]["mean_r2"],
           "units_at_minimum": units["at_minimum"] / units["units"], "wall_seconds": sparse["wall_seconds"]}
    write_json_atomic(saved, row)
    return row


MEANS = ("heldout_loss", "loss_ratio", "kl_to_dense", "among_dense_largest", "matrices_among", "sign_agreement",
         "norm_ratio", "mean_r2", "units_at_minimum", "wall_seconds")


def summarise(rows: list[dict]) -> dict:
    """Per variant and start: means over seeds (and tasks kept per seed); per variant, the dense start's worth."""
    summary = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        by_start = {}
        for start in dict.fromkeys(r["start"] for r in rows if r["variant"] == name):
            mine = [r for r in rows if r["variant"] == name and r["start"] == start]
            by_start[start] = {**{key: statistics.mean(r[key] for r in mine) for key in MEANS},
                               "kept": [len(r["kept"]) for r in mine], "seeds": [r["seed"] for r in mine]}
        pairs = [(d, r) for d in rows for r in rows if d["variant"] == r["variant"] == name and d["seed"] == r["seed"]
                 and d["start"] == "dense" and r["start"] == "random"]
        if pairs:
            worth = [r["heldout_loss"] - d["heldout_loss"] for d, r in pairs]
            by_start["dense_start_worth"] = {"mean": statistics.mean(worth), "per_seed": worth}
        summary[name] = by_start
    return summary


def table(rows: list[dict]) -> list[str]:
    """One markdown row per run (for docs/sparsify-experiments.md)."""
    lines = ["| variant | start | seed | held-out loss | KL | tasks kept | among dense largest (matrices) | "
             "sign | norm | mean R^2 | units at minimum |", "|" + " --- |" * 11]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['start']} | {r['seed']} | {r['heldout_loss']:.3f} | "
                     f"{r['kl_to_dense']:.3f} | {len(r['kept'])} of {len(r['dense_solves'])} | "
                     f"{r['among_dense_largest']:.1%} "
                     f"({r['matrices_among']:.1%}) | {r['sign_agreement']:.1%} | {r['norm_ratio']:.2f}x | "
                     f"{r['mean_r2']:.3f} | {r['units_at_minimum']:.0%} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--inits", nargs="+", choices=list(STARTS), default=list(STARTS))
    parser.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                        help="a name and its recipe overrides (repeatable; default: `default` with none)")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench-init")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    variants = {v[0]: v[1:] for v in args.variant or [["default"]]}
    from extract.recipe import load_recipe

    recipe = load_recipe(str(DEFAULT_RECIPE))[0]  # the tasks and target every run is scored on
    dense_tasks = task_losses(recipe)
    rows = []
    for name, overrides in variants.items():
        for seed in args.seeds:
            for start in args.inits:
                rows.append(run_row(args.work, name, overrides, args.steps, seed, start, recipe, dense_tasks))
                print({k: v for k, v in rows[-1].items() if k not in ("task_losses", "overrides")}, flush=True)
    print("\n".join(table(rows)))
    finish({"command": "python bench/bench_init.py " + " ".join(sys.argv[1:]), "steps": args.steps,
            "dense_task_losses": dense_tasks, "summary": summarise(rows), **machine(), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
