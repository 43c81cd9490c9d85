"""The capability-interpretability frontier of the embedded default (issue 17, item 1).

    python bench/bench_frontier.py [--densities 1/4 1/8 1/16 1/32 1/64] [--default-run DIR]
        [--out outputs/bench-frontier] [--json bench/results/frontier.json] [--plot bench/results/frontier.png]

Sparsifies the embedded dense model to each target density with the default recipe (everything else
unchanged; the embeddings keep the default's share, 3x the target, where the per-unit floor leaves
the matrices room: at 1/64, the floor of a 256-wide model, every tensor gets 1/64) and prunes every task the dense
model solves out of each sparse model. Per density: held-out loss, KL to the dense model, closing-quote
accuracy, the tasks solved, and the geometric-mean circuit edges at the target loss (test split) over
the tasks both models solve; also over the tasks that the dense model and every sparse model solve, so
the points compare like with like. The dense model is its own point. One plot (held-out loss against
circuit edges, one point per model, as in the paper) and one table (bench/README.md).

The dense model is pruned once, in the run at the recipe's own density (1/32). `--default-run` takes a
finished run of the default recipe with the same prune settings (bench_spread.py's seed 0) as that
point instead of running it again. Each run is resumable: rerun the same command after an
interruption. About 13 minutes per density on 2 CPU cores (55-70 minutes for the four new ones).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

from default_runs import FAST_PRUNE, ROOT, finish, machine, report, run, save_figure

from extract.circuits.find import geometric_mean
from extract.circuits.results import tasks_from_dict
from extract.circuits.stage import summarise
from extract.recipe import load_recipe
from extract.sparsity import density_floor


def label(density: Fraction) -> str:
    return f"{density.numerator}/{density.denominator}"


def embedding_densities(densities: list[Fraction], factor: float) -> dict[Fraction, float]:
    """The embeddings' density at each target: `factor` x the target (the default recipe's share), but
    never so much that the matrices' share of the budget falls below the per-unit floor, which they
    would be held at anyway (overshooting the target). At the floor density itself every tensor gets
    the target."""
    from extract.arch import sparse_tensors
    from extract.models import load_model

    recipe = load_recipe("tiny-python")[0]
    tensors = sparse_tensors(load_model(recipe.model), recipe.sparsity.embeddings)
    embedding = sum(t.param.numel() for t in tensors if t.unit_axis is None)
    matrices = [t for t in tensors if t.unit_axis is not None]
    matrix_numel = sum(t.param.numel() for t in matrices)
    matrix_floor = density_floor(matrices, recipe.sparsity.min_per_unit)
    out = {}
    for d in densities:
        room = (float(d) * (embedding + matrix_numel) - matrix_floor * matrix_numel) / embedding
        if room <= 0:
            sys.exit(f"--densities {label(d)}: below the per-unit floor ({matrix_floor:.5f} of the matrices, "
                     f"{recipe.sparsity.min_per_unit} weights per unit)")
        out[d] = min(1.0, factor * float(d), room)
    return out


def density_run(density: Fraction, embedding_density: float, out: Path, prunes_dense: bool, extra: list[str]) -> dict:
    models = "[dense, sparse]" if prunes_dense else "[sparse]"
    seconds = run(out, [f"sparsity.target_density={float(density)}", f"sparsity.embedding_density={embedding_density}",
                        f"prune.models={models}", *FAST_PRUNE, *extra])
    return {**report(out), "bench_seconds": seconds, "bench_embedding_density": embedding_density}


def row(density: Fraction, rep: dict, dense_tasks: dict) -> dict:
    sparse = rep["sparse"]
    tasks = {name: {"dense": dense_tasks[name], "sparse": by_role["sparse"]} for name, by_role in rep["tasks"].items()}
    summary = summarise(tasks_from_dict(tasks))
    return {"target_density": label(density), "embedding_density": rep["bench_embedding_density"],
            "density": sparse["density"], "heldout_loss": sparse["heldout_loss"], "loss_ratio": sparse["loss_ratio"],
            "kl_to_dense": sparse["kl_to_dense"], "quote_accuracy": sparse["quote_accuracy"],
            "solved": summary["solved"]["sparse"], "tasks_compared": summary["tasks_compared"],
            "edges": {name: tasks[name]["sparse"]["circuit"]["edges"] for name in summary["tasks_compared"]},
            "edges_geomean_dense": summary["edges_geomean"][0],
            "edges_geomean_sparse": summary["edges_geomean"][1], "edge_ratio": summary["edge_ratio"],
            "seconds": rep["bench_seconds"]}


def plot(result: dict, path: Path, extra: list[tuple[str, float, float, str]] = ()) -> None:
    """Held-out loss against circuit edges; `extra` adds (label, edges or None, loss, marker) points
    (bench_width.py)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    common = result["common"]["tasks"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    points = [(r["target_density"], r["common_edges_geomean"] if common else r["edges_geomean_sparse"],
               r["heldout_loss"]) for r in result["rows"]]
    points = [p for p in points if p[1]]
    ax.plot([p[1] for p in points], [p[2] for p in points], "o-", color="tab:blue", label="sparse models")
    for name, edges, loss in points:
        ax.annotate(name, (edges, loss), textcoords="offset points", xytext=(6, 4), fontsize=9)
    # with no task common to every model, the dense point is the geometric mean over its own circuits
    own = [e for e in result["dense_edges"].values() if e]
    dense_edges = result["common"]["edges_geomean_dense"] if common else geometric_mean(own) if own else None
    if dense_edges:
        ax.plot([dense_edges], [result["dense_heldout_loss"]], "s", color="black",
                label="dense model" + ("" if common else f" ({len(own)} circuits)"))
    for name, edges, loss, marker in extra:  # a model with no circuit is a line at its loss
        if edges:
            ax.plot([edges], [loss], marker, color="tab:red", label=name)
        else:
            ax.axhline(loss, ls="--", lw=1, color="tab:red", label=f"{name}: no task solved")
    ax.set_xscale("log")
    ax.set_xlabel("circuit edges at the target loss (geometric mean, test split)")
    ax.set_ylabel("held-out loss (nats/token)")
    over = ", ".join(common) if common else "each model's tasks solved by both (not the same set)"
    ax.set_title(f"Loss against circuit size\n(tasks: {over})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--densities", nargs="+", type=Fraction,
                        default=[Fraction(1, 4), Fraction(1, 8), Fraction(1, 16), Fraction(1, 32), Fraction(1, 64)])
    parser.add_argument("--embedding-factor", type=float, default=3.0,
                        help="embedding density as a multiple of the target (the default recipe's 3/32 at 1/32)")
    parser.add_argument("--default-run", type=Path,
                        help="a finished run of the default recipe with the controls off, used as its density's point")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-frontier")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="further recipe overrides for every run (a quick try: train.steps=20)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    start = time.time()
    default_density = Fraction(load_recipe("tiny-python")[0].sparsity.target_density).limit_denominator(4096)
    if default_density not in args.densities:
        sys.exit(f"--densities must include the default recipe's {label(default_density)}: its run prunes the "
                 "dense model for every density")
    densities = [default_density] + sorted((d for d in args.densities if d != default_density), reverse=True)
    embedding = embedding_densities(densities, args.embedding_factor)
    reports = {}
    for density in densities:
        out = args.out / f"density-{density.numerator}_{density.denominator}"
        if density == default_density and args.default_run:
            rep = report(args.default_run)
            if Fraction(rep["sparse"]["target_density"]).limit_denominator(4096) != default_density:
                sys.exit(f"--default-run {args.default_run}: its target density is {rep['sparse']['target_density']}, "
                         f"not {label(default_density)}")
            reports[density] = {**rep, "bench_seconds": rep["sparse"]["wall_seconds"]
                                + sum((t.get("dense") or {}).get("prune_seconds") or 0 for t in rep["tasks"].values())
                                + sum((t.get("sparse") or {}).get("prune_seconds") or 0 for t in rep["tasks"].values()),
                                "bench_reused": str(args.default_run), "bench_embedding_density": embedding[density]}
            continue
        reports[density] = density_run(density, embedding[density], out, density == default_density, args.set)
    dense_tasks = {name: by_role["dense"] for name, by_role in reports[default_density]["tasks"].items()}
    rows = [row(d, reports[d], dense_tasks) for d in sorted(densities, reverse=True)]
    common = sorted(set.intersection(*(set(r["tasks_compared"]) for r in rows)))
    for r in rows:
        summary = summarise(tasks_from_dict({name: {"dense": dense_tasks[name], "sparse": reports[Fraction(
            r["target_density"])]["tasks"][name]["sparse"]} for name in common})) if common else None
        r["common_edges_geomean"] = summary["edges_geomean"][1] if summary else None
        r["common_edge_ratio"] = summary["edge_ratio"] if summary else None
        print(json.dumps(r), flush=True)
    dense_rep = reports[default_density]["dense"]
    common_dense = (summarise(tasks_from_dict({n: {"dense": dense_tasks[n], "sparse": dense_tasks[n]} for n in common}))
                    if common else None)
    result = {"command": "python bench/bench_frontier.py " + " ".join(sys.argv[1:]), **machine(),
              "wall_seconds": time.time() - start, "run_seconds": sum(r["seconds"] for r in rows),
              "reused": {label(d): rep["bench_reused"] for d, rep in reports.items() if "bench_reused" in rep},
              "overrides": args.set, "embedding_factor": args.embedding_factor,
              "dense_heldout_loss": dense_rep["heldout_loss"],
              "dense_solved": sorted(n for n, t in dense_tasks.items() if t.get("solved")),
              "dense_edges": {n: t["circuit"]["edges"] for n, t in dense_tasks.items() if (t.get("circuit") or {})},
              "common": {"tasks": common,
                         "edges_geomean_dense": common_dense["edges_geomean"][0] if common_dense else None},
              "rows": rows}
    finish(result, args.json, plot, args.plot)


if __name__ == "__main__":
    main()
