"""Pictures: the training curves, task loss against circuit size, and circuit drawings.

Each is drawn from saved data only (the training log, circuit files) and written atomically.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

from extract.circuits.results import RANDOM_INIT  # noqa: E402
from extract.circuits.sites import SITE_NAMES  # noqa: E402

ROLE_COLOURS = {"dense": "tab:orange", "sparse": "tab:blue", RANDOM_INIT: "tab:gray"}


def _save(fig, png_path: Path, dpi: int = 110) -> None:
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(png_path)


def _read_log(log_path: Path) -> list[dict]:
    """The rows of a training log (one JSON object per logged step)."""
    return [json.loads(line) for line in Path(log_path).read_text().splitlines()]


def plot_training(log_path: Path, png_path: Path) -> None:
    """Loss, KL and density against step: the picture that shows where the anneal hurts."""
    if not Path(log_path).exists():
        return
    rows = _read_log(log_path)
    fig, (ax_loss, ax_density) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    train = [r for r in rows if "ce" in r]
    evals = [r for r in rows if "heldout_loss" in r]
    ax_loss.plot([r["step"] for r in train], [r["ce"] for r in train], label="train CE", alpha=0.6)
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["heldout_loss"] for r in evals], "o-", label="held-out CE")
    if any(r.get("kl") is not None for r in train):
        ax_loss.plot([r["step"] for r in train], [r["kl"] for r in train], label="train KL to dense", alpha=0.6)
    ax_density.plot([r["step"] for r in rows], [r["density"] for r in rows])
    _finish_loss_and_density(fig, ax_loss, ax_density, "nats / token", png_path)


def _finish_loss_and_density(fig, ax_loss, ax_density, loss_label: str, png_path: Path) -> None:
    """The shared styling of a loss panel over a log-density panel, then save."""
    ax_loss.set_ylabel(loss_label)
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_density.set_yscale("log")
    ax_density.set_ylabel("density (scheduled)")
    ax_density.set_xlabel("optimizer step")
    ax_density.grid(alpha=0.3, which="both")
    fig.tight_layout()
    _save(fig, png_path)


def plot_runs(logs: dict[str, Path], png_path: Path, smooth: int = 5) -> None:
    """Several training runs on one picture: held-out loss (points) over their train CE (a
    moving average of `smooth` log lines), and their density schedules. `logs` maps a label to a
    run's training log."""
    fig, (ax_loss, ax_density) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True,
                                              gridspec_kw={"height_ratios": [2, 1]})
    for (label, log_path), colour in zip(logs.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        rows = _read_log(log_path)
        evals = [r for r in rows if "heldout_loss" in r]
        ax_loss.plot([r["step"] for r in evals], [r["heldout_loss"] for r in evals], "o-", color=colour,
                     label=f"{label}: held-out {evals[-1]['heldout_loss']:.3f}" if evals else label)
        train = [r for r in rows if r.get("ce") is not None]
        if train:
            windows = [train[max(0, i - smooth + 1): i + 1] for i in range(len(train))]
            smoothed = [sum(r["ce"] for r in w) / len(w) for w in windows]
            ax_loss.plot([r["step"] for r in train], smoothed, color=colour, alpha=0.3)
        ax_density.plot([r["step"] for r in rows], [r["density"] for r in rows], color=colour, label=label)
    _finish_loss_and_density(fig, ax_loss, ax_density, "CE, nats / token (faint: train)", png_path)


def plot_loss_vs_edges(curves: dict[str, dict[str, list[dict]]], target: float, png_path: Path,
                       results: dict | None = None) -> None:
    """One panel per task: test task loss of the top-k circuits against their edge count, for every
    model pruned. With the TaskResults ({task: {model: result}}), each model's chosen circuit is a star
    and its attribution baseline a cross, so the learned mask's advantage is visible at the target."""
    tasks = [t for t, by_role in curves.items() if any(by_role.values())]
    if not tasks:
        return
    columns = min(3, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for role, curve in curves[task].items():
            points = [p for p in curve if p["edges"] > 0]
            if points:
                ax.plot([p["edges"] for p in points], [p["loss"] for p in points], "o-", markersize=3,
                        label=role, color=ROLE_COLOURS.get(role))
            result = ((results or {}).get(task) or {}).get(role)
            found = [(result.circuit, "*", "circuit"), (result.attribution, "x", "attribution baseline")
                     ] if result else []
            for chosen, marker, label in found:
                if chosen is not None and chosen.edges:
                    ax.plot([chosen.edges], [chosen.loss], marker, markersize=9, color=ROLE_COLOURS.get(role),
                            label=f"{role} {label}")
        ax.axhline(target, color="k", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("circuit edges")
        ax.set_ylabel("task loss (test split)")
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    # one legend for the figure, below the panels, so no panel's points hide behind it
    legend = {}
    for ax in axes.flat:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(legend) > 4), 1, 1))
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=min(len(legend), 5), fontsize=8)
    _save(fig, png_path)


def draw_circuit(record: dict, png_path: Path) -> None:
    """Layers bottom to top, one row per site, the kept channels as labelled dots; weight edges are
    solid (blue positive, red negative, width by magnitude); dashed grey lines join a residual write
    to the next read of the same residual channel (the identity path, not counted as edges)."""
    nodes = record["nodes"] or {}
    layers = sorted({int(key.split(".")[0]) for key in nodes})
    if not layers:
        return
    rows = [f"{layer}.{site}" for layer in range(layers[-1] + 1) for site in SITE_NAMES]
    y_of = {key: i for i, key in enumerate(rows)}
    position = {}
    for key in rows:
        for slot, index in enumerate(sorted(nodes.get(key, []))):
            position[(key, index)] = (slot - (len(nodes[key]) - 1) / 2, y_of[key])
    width = max(6.0, 0.5 * max((len(v) for v in nodes.values()), default=1) + 3)
    fig, ax = plt.subplots(figsize=(width, 0.42 * len(rows) + 1.2))
    biggest = max((abs(e["weight"]) for e in record["edges"]), default=1.0) or 1.0
    for edge in record["edges"]:
        a, b = position.get(tuple(edge["from"])), position.get(tuple(edge["to"]))
        if a and b:
            ax.plot([a[0], b[0]], [a[1], b[1]], color="tab:blue" if edge["weight"] > 0 else "tab:red",
                    linewidth=0.4 + 2.5 * abs(edge["weight"]) / biggest, alpha=0.8, zorder=1)
    for (key, index), (x, y) in position.items():  # residual identity: a write feeds later reads
        if key.endswith(("attn_out", "mlp_out")):
            later = [k for k in rows[y_of[key] + 1:] if k.endswith(("attn_in", "mlp_in")) and (k, index) in position]
            if later:
                tx, ty = position[(later[0], index)]
                ax.plot([x, tx], [y, ty], color="0.6", linestyle="--", linewidth=0.7, zorder=0)
    for (key, index), (x, y) in position.items():
        ax.scatter([x], [y], s=120, color="white", edgecolor="k", zorder=2)
        ax.annotate(str(index), (x, y), ha="center", va="center", fontsize=6, zorder=3)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xticks([])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    circuit = record.get("circuit") or {}
    ax.set_title(f"{record['task']} ({record['model']}): {circuit.get('nodes')} nodes, {circuit.get('edges')} "
                 f"edges, loss {circuit.get('loss', float('nan')):.3f}", fontsize=9)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    _save(fig, png_path)
