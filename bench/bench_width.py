"""A sparse model wider than the dense one, at the same number of nonzeros (issue 32, item 3).

    python bench/bench_width.py [--widths 1 2] [--seeds 0 1] [--min-per-unit 2] [--out outputs/bench-width]
        [--frontier bench/results/frontier.json] [--json bench/results/width.json]
        [--plot bench/results/frontier_width.png]

Each width m runs the default recipe with `model.width_multiplier=m` (a GPT-2 m times wider that computes
the dense function at step 0), its densities chosen so that every run keeps the default's nonzeros: the
embeddings the same count as at 1/32 with 3/32 on the embeddings (so 3/32 / m of the m-times wider
embeddings), the matrices the rest. The per-unit floor is `--min-per-unit` at every width (the 2x
matrices at the default's nonzeros sit below the floor of 4 per unit). Everything else is the default:
900 steps, eager, plain distillation (no bridges, so the comparison is of width alone). The 1x run of each
seed also prunes the dense model; every run prunes every task the dense model solves out of its sparse
model (controls off, as bench_frontier.py). Per run: held-out loss, KL, tasks solved, the geometric-mean
circuit edges over the tasks the dense model and every run solve. The plot adds the runs to the
frontier (held-out loss against circuit edges) of bench_frontier.py's JSON. Resumable. At 450 steps
(`--set train.steps=450`) on 2 CPU cores the 1x run sparsified in 10.9 minutes and the 2x run in 25.9.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

import yaml
from bench_frontier import density_run, plot, row
from default_runs import ROOT, finish, machine

from extract.circuits.find import geometric_mean
from extract.circuits.results import tasks_from_dict
from extract.circuits.stage import summarise
from extract.recipe import load_recipe


def matched_densities(multiplier: int) -> tuple[float, float]:
    """(target density, embedding density) that give a `multiplier`-times wider model the default's
    nonzeros, with the embeddings keeping as many as the default gives them."""
    from extract.arch import sparse_tensors
    from extract.models import load_model
    from extract.widen import widen

    recipe = load_recipe("tiny-python")[0]
    dense = load_model(recipe.model)

    def sizes(model) -> tuple[int, int]:
        tensors = sparse_tensors(model, recipe.sparsity.embeddings)
        embedding = sum(t.param.numel() for t in tensors if t.unit_axis is None)
        return embedding, sum(t.param.numel() for t in tensors) - embedding

    embedding, matrices = sizes(dense)
    nonzeros = recipe.sparsity.target_density * (embedding + matrices)
    embedding_nonzeros = recipe.sparsity.embedding_density * embedding
    wide_embedding, wide_matrices = sizes(widen(dense, multiplier))
    return nonzeros / (wide_embedding + wide_matrices), embedding_nonzeros / wide_embedding


def width_plot_points(rows: list[dict]) -> list[tuple[str, float, float, str]]:
    """(label, circuit edges or None, held-out loss, marker) per run, for the frontier plot."""
    markers = {1: "^", 2: "v"}
    return [(f"{r['width']}x wide, seed {r['seed']}, {r['steps']} steps",
             r["common_edges_geomean"] or r["edges_geomean_sparse"], r["heldout_loss"], markers.get(r["width"], "D"))
            for r in rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--min-per-unit", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-width")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="further recipe overrides for every run (a quick try: train.steps=20)")
    parser.add_argument("--frontier", type=Path, default=ROOT / "bench" / "results" / "frontier.json")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    if 1 not in args.widths:
        sys.exit("--widths must include 1: its runs prune the dense model")
    start, rows, dense_tasks = time.time(), [], {}
    densities = {width: matched_densities(width) for width in args.widths}  # builds each wide model once
    for seed in args.seeds:
        for width in sorted(args.widths):
            target, embedding = densities[width]
            extra = [f"model.width_multiplier={width}", f"sparsity.min_per_unit={args.min_per_unit}",
                     f"train.seed={seed}", *args.set]
            out = args.out / f"seed-{seed}" / f"width-{width}"
            rep = density_run(Fraction(target), embedding, out, width == 1, extra)
            if width == 1 and not dense_tasks:
                dense_tasks = {name: by_role["dense"] for name, by_role in rep["tasks"].items()}
            steps = yaml.safe_load((out / "recipe.yaml").read_text())["train"]["steps"]
            rows.append({"width": width, "seed": seed, "steps": steps,
                         "nonzero_params": rep["sparse"]["nonzero_params"], **row(Fraction(target), rep, dense_tasks),
                         "target_density": round(target, 6), "rep": rep})
    common = sorted(set.intersection(*(set(r["tasks_compared"]) for r in rows)))
    for r in rows:
        rep = r.pop("rep")
        summary = summarise(tasks_from_dict({name: {"dense": dense_tasks[name], "sparse": rep["tasks"][name]["sparse"]}
                                             for name in common})) if common else None
        r["common_edges_geomean"] = summary["edges_geomean"][1] if summary else None
        print(json.dumps(r), flush=True)
    dense_edges = [dense_tasks[n]["circuit"]["edges"] for n in common]
    result = {"command": "python bench/bench_width.py " + " ".join(sys.argv[1:]), **machine(),
              "wall_seconds": time.time() - start, "min_per_unit": args.min_per_unit, "overrides": args.set,
              "dense_solved": sorted(n for n, t in dense_tasks.items() if t.get("solved")),
              "common": {"tasks": common, "edges_geomean_dense": geometric_mean(dense_edges) if common else None},
              "rows": rows}
    finish(result, args.json)
    if args.plot and args.frontier.is_file():
        plot(json.loads(args.frontier.read_text()), args.plot, extra=width_plot_points(rows))


if __name__ == "__main__":
    main()
