"""Loss against compute at the default density (issue 17, item 2).

    python bench/bench_compute.py [--steps 150 300 600 900] [--default-run DIR]
        [--out outputs/bench-compute] [--json bench/results/compute.json] [--plot bench/results/compute.png]

Sparsifies the embedded dense model with the default recipe at several fine-tuning budgets
(`train.steps`; the warm-up, the annealing and the learning-rate decay stretch with it, as they would for
a user who asks for more steps) and reads each run's final held-out loss and KL to the dense model. Two
fits of the loss ratio to the dense model against fine-tuning tokens T say where it reaches 1.25x:

- saturating: loss = L_inf + A * T^-alpha (three parameters; says "never" when L_inf is above 1.25x dense)
- power law in the excess: ratio - 1 = a * T^-b (two parameters, a straight line on log-log axes)

Runs stop after sparsifying (no pruning). `--default-run` takes a finished run of the default recipe
(bench_spread.py's seed 0) as the default budget's point. Each run is resumable: rerun the same command
after an interruption, or add budgets (`--steps 150 300 600 900 1800 3600`) and only the new ones run.
About 0.7 s per step plus a minute of set-up per run on 2 CPU cores: 15 minutes for 150, 300 and 600.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from default_runs import ROOT, default_steps, final_eval, finish, machine, run, save_figure

TARGET_RATIO = 1.25


def fit_saturating(tokens: np.ndarray, loss: np.ndarray, dense: float) -> dict | None:
    from scipy.optimize import curve_fit

    def model(t, l_inf, a, alpha):
        return l_inf + a * (t / 1e6) ** -alpha

    try:
        (l_inf, a, alpha), _ = curve_fit(model, tokens, loss, p0=(loss.min() * 0.9, 1.0, 0.5),
                                         bounds=([0, 0, 0], [loss.min(), np.inf, 5]), maxfev=20000)
    except (RuntimeError, ValueError):  # no convergence: say so rather than guess
        return None
    goal = TARGET_RATIO * dense
    reach = (1e6 * (a / (goal - l_inf)) ** (1 / alpha)) if goal > l_inf else None
    residual = float(np.sqrt(np.mean((model(tokens, l_inf, a, alpha) - loss) ** 2)))
    return {"formula": "loss = L_inf + A * (T / 1e6)^-alpha", "L_inf": float(l_inf),
            "L_inf_ratio": float(l_inf / dense), "A": float(a), "alpha": float(alpha), "rms_residual": residual,
            "tokens_to_target": float(reach) if reach else None}


def fit_power(tokens: np.ndarray, ratio: np.ndarray) -> dict | None:
    excess = ratio - 1
    if (excess <= 0).any():
        return None
    slope, intercept = np.polyfit(np.log(tokens), np.log(excess), 1)
    b, a = -slope, math.exp(intercept)
    residual = float(np.sqrt(np.mean((1 + a * tokens ** -b - ratio) ** 2)))
    return {"formula": "ratio - 1 = a * T^-b", "a": a, "b": float(b), "rms_residual": residual,
            "tokens_to_target": float((a / (TARGET_RATIO - 1)) ** (1 / b)) if b > 0 else None}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, dense = result["rows"], result["dense_heldout_loss"]
    tokens = np.array([r["tokens"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.plot(tokens, [r["loss_ratio"] for r in rows], "o", color="tab:blue", label="measured", zorder=3)
    fits = result["fits"]
    reach = [f["tokens_to_target"] for f in fits.values() if f and f["tokens_to_target"]]
    grid = np.geomspace(tokens.min() / 1.5, max([tokens.max() * 2, *reach]) * 1.3, 200)
    if fits["saturating"]:
        f = fits["saturating"]
        ax.plot(grid, (f["L_inf"] + f["A"] * (grid / 1e6) ** -f["alpha"]) / dense, "-", color="tab:orange",
                label=f"L_inf + A T^-{f['alpha']:.2f} (L_inf {f['L_inf_ratio']:.2f}x)")
    if fits["power"]:
        f = fits["power"]
        ax.plot(grid, 1 + f["a"] * grid ** -f["b"], "--", color="tab:green", label=f"1 + a T^-{f['b']:.2f}")
    ax.axhline(TARGET_RATIO, color="grey", lw=0.8, ls=":")
    ax.text(grid[0], TARGET_RATIO, f" {TARGET_RATIO}x", va="bottom", fontsize=8, color="grey")
    ax.axvline(result["default_tokens"], color="grey", lw=0.8, ls=":")
    ax.text(result["default_tokens"], ax.get_ylim()[1], " default", va="top", fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("fine-tuning tokens")
    ax.set_ylabel("held-out loss / dense")
    ax.set_title(f"Sparse model's loss ratio against fine-tuning compute (density {result['density']:.4g})",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", nargs="+", type=int, default=[150, 300, 600, 900])
    parser.add_argument("--default-run", type=Path,
                        help="a finished run of the default recipe, used as the default budget's point")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-compute")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="further recipe overrides for every run (a quick try: data.heldout_blocks=8)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    if len(args.steps) < 3:
        sys.exit("--steps: at least three budgets, so that the fits have something to fit")
    start, default = time.time(), default_steps()
    rows = []
    for steps in sorted(args.steps):
        out = args.out / f"steps-{steps}"
        reused = steps == default and args.default_run is not None
        if reused:
            out = args.default_run
        else:
            run(out, [f"train.steps={steps}", *args.set], stage="sparsify")
        final = final_eval(out)
        if final["step"] != steps:
            sys.exit(f"{out}: its last held-out evaluation is at step {final['step']}, not {steps}")
        rows.append({"steps": steps, "tokens": final["tokens"], "heldout_loss": final["heldout_loss"],
                     "loss_ratio": final["heldout_loss"] / final["dense_heldout_loss"],
                     "kl_to_dense": final["heldout_kl_to_dense"], "sparsify_seconds": final["wall_seconds"],
                     "reused": str(out) if reused else None})
        print(json.dumps(rows[-1]), flush=True)
    dense = final_eval(out)["dense_heldout_loss"]
    tokens = np.array([r["tokens"] for r in rows], dtype=float)
    loss = np.array([r["heldout_loss"] for r in rows])
    from extract.recipe import load_recipe

    recipe = load_recipe("tiny-python", args.set)[0]
    result = {"command": "python bench/bench_compute.py " + " ".join(sys.argv[1:]), **machine(),
              "wall_seconds": time.time() - start, "overrides": args.set,
              "density": recipe.sparsity.target_density, "default_steps": default,
              "default_tokens": default * recipe.train.batch_size * recipe.data.block_size,
              "dense_heldout_loss": dense, "target_ratio": TARGET_RATIO,
              "fits": {"saturating": fit_saturating(tokens, loss, dense), "power": fit_power(tokens, loss / dense)},
              "rows": rows}
    finish(result, args.json, plot, args.plot)


if __name__ == "__main__":
    main()
