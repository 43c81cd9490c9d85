"""Run the README command with recipe overrides from a benchmark, and read back what it wrote.

Shared by the benchmarks that sweep the default recipe (bench_spread, bench_frontier, bench_compute).
Every run lives in its own output folder and is resumable: rerunning the benchmark after an
interruption resumes the unfinished run and reuses the finished ones.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECIPE = ROOT / "recipes" / "tiny-python.yaml"
# The controls never change the chosen circuit, only check it; off, a pruned task takes 44 s rather
# than 161 s (machinery.json).
FAST_PRUNE = ["prune.nonsense_control=false", "prune.attribution_baseline=false", "prune.random_draws=0",
              "prune.random_model_control=false"]


def run(out: Path, overrides: list[str], stage: str = "all") -> float:
    """Run extract/run.py on the default recipe into `out`; returns the wall seconds this call took
    (a finished run is read back in seconds)."""
    cmd = [sys.executable, str(ROOT / "extract" / "run.py"), "--stage", stage, f"output_dir={out}", *overrides]
    print("+", " ".join(cmd[1:]), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.time() - start


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def final_eval(out: Path) -> dict:
    """The last held-out evaluation of a sparsify run (its log's final line) and the dense model's
    held-out loss, for runs that stop after sparsifying."""
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]
    last = next(row for row in reversed(log) if "heldout_loss" in row)
    state = json.loads((out / "model" / "trainer_state.json").read_text())
    return {**last, "dense_heldout_loss": state["dense_heldout_loss"], "wall_seconds": state["wall_seconds"]}


def finish(result: dict, json_path: Path | None, plot=None, plot_path: Path | None = None) -> None:
    """Print a result's summary (all but its rows), write its JSON and draw its plot, each atomically."""
    from extract.atomic import write_json_atomic

    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    if json_path:
        write_json_atomic(json_path, result)
    if plot_path and plot:
        plot(result, plot_path)


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure under a temporary name and rename it into place."""
    import matplotlib.pyplot as plt

    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def default_steps() -> int:
    from extract.recipe import load_recipe

    return load_recipe(str(DEFAULT_RECIPE))[0].train.steps


def machine() -> dict:
    """The `machine` and `versions` entries every result file carries."""
    import os
    import platform

    import torch

    return {"machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "processor": platform.processor()},
            "versions": {"torch": torch.__version__, "python": platform.python_version()}}
