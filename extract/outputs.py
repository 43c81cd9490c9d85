"""The output folder's own bookkeeping: the recipe saved beside every run, and the summary printed."""
from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

import yaml

from extract import atomic
from extract.errors import OutputDirError
from extract.recipe import Recipe, RecipeError

RECIPE_FILE = "recipe.yaml"
LOCK_FILE = ".lock"
# Keys that never change the trained model: which circuits are pruned (a different task list may
# reuse an output_dir), where the directory is (a moved or copied run is still the same run), and
# where it is published.
KEYS_THAT_KEEP_THE_MODEL = ("tasks", "prune.", "output_dir", "hub.")


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        flat.update(_flatten(value, path + ".") if isinstance(value, dict) else {path: value})
    return flat


def _plain(data: dict) -> dict:
    """What the dict reads back as from YAML (tuples become lists), so it compares with a saved file."""
    return yaml.safe_load(yaml.safe_dump(data))


def recipe_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def check_recipe(recipe: Recipe, out: Path) -> None:
    """Refuse to resume a run that was started with a different recipe (RecipeError, naming the keys)."""
    path = Path(out) / RECIPE_FILE
    current = recipe.to_dict()
    if path.exists():
        saved = yaml.safe_load(path.read_text()) or {}
        flat_saved, flat_now = _flatten(saved), _flatten(_plain(current))
        # A run saved before a field existed ran with that field's default.
        defaults = _flatten(_plain(Recipe().to_dict()))
        flat_saved = {**{k: v for k, v in defaults.items() if k in flat_now}, **flat_saved}
        changed = sorted(k for k in flat_saved.keys() | flat_now.keys()
                         if flat_saved.get(k) != flat_now.get(k) and not k.startswith(KEYS_THAT_KEEP_THE_MODEL))
        if changed:
            raise RecipeError(
                f"{path}: output_dir holds a run of a different recipe (differs in {', '.join(changed)}); "
                "choose another output_dir or delete this one")


def save_recipe(recipe: Recipe, out: Path) -> None:
    """Save the resolved recipe, which claims the folder for it. Called once the run's inputs have
    loaded, so a run that fails on a typo (a model path, a dataset) leaves nothing that refuses the
    corrected command."""
    check_recipe(recipe, out)
    atomic.write_text_atomic(Path(out) / RECIPE_FILE, recipe_yaml(recipe))


@contextlib.contextmanager
def output_lock(out: Path):
    """Hold an exclusive lock on the output folder while a run uses it, so that a second run on the
    same folder is refused rather than interleaving its writes. The kernel drops the lock when the
    process ends however it ends (kill -9 included), so a killed run never leaves it stuck."""
    import fcntl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise OutputDirError(f"{out}: output_dir is in use by another run ({holder}); wait for it to finish "
                             "or choose another output_dir") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a waiting run)


def summary_lines(report: dict) -> list[str]:
    lines = []
    for role in ("dense", "sparse", "trained"):
        section = report.get(role)
        if not section:
            continue
        parts = [f"held-out loss {section['heldout_loss']:.4f}"]
        if "quote_accuracy" in section:
            parts.append(f"quote accuracy {section['quote_accuracy']:.3f} (loss {section['quote_loss']:.3f})")
        if "density" in section:
            parts.append(f"density {section['density']:.5f} ({section['nonzero_params']:,} nonzero params)")
        if "loss_ratio" in section:
            parts.append(f"loss {section['loss_ratio']:.3f}x dense, KL {section['kl_to_dense']:.4f}")
        if "wall_seconds" in section:
            parts.append(f"{section['tokens']:,} tokens in {section['wall_seconds'] / 60:.1f} min")
        lines.append(f"{role:>8}: " + "; ".join(parts))
    return lines


def _number(value, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def penalties_tried(entry: dict) -> list[str]:
    """The pruning penalties (k_coef) a (task, model) entry's masks were trained with, in order."""
    return [f"{a['k_coef']:g}" for a in entry.get("attempts", [])]


def retry_note(entry: dict) -> str:
    """'' when the first penalty found the circuit, else which one did and which missed before it."""
    tried = penalties_tried(entry)
    return f"k_coef {tried[-1]} after {', '.join(tried[:-1])} missed" if len(tried) > 1 else ""


def _circuit_cells(entry: dict | None, target: float) -> list[str]:
    if not entry:
        return ["-"] * 8
    full = f"{entry['full_loss']:.3f} / {entry['full_accuracy']:.2f}"
    local = f"{entry['local_loss']:.3f}" + (" (short-range)" if entry.get("short_range") else "")
    circuit = entry.get("circuit")
    if circuit is None:
        pruned = "reached_target" in entry  # the random-init control is pruned even though unsolved
        why = (f"pruned: no circuit reaches {target} (k_coef {', '.join(penalties_tried(entry))})" if pruned
               else "not solved by the full model")
        return [full, local, why, "", "", "", "", ""]
    verdict = ("yes" if circuit["sufficient"] else "NO") + " / " + ("yes" if circuit["necessary"] else "NO")
    if circuit.get("fits_through_ablation"):
        verdict += " (fits through ablation)"
    retried = retry_note(entry)
    if retried:
        verdict += f"; {retried}"
    loss = f"{circuit['loss']:.3f} ({circuit['validation_loss']:.3f})"
    calibrated = _number(circuit.get("calibrated_loss"))
    return [full, local, str(circuit["nodes"]), f"{circuit['edges']:,}", loss, calibrated,
            f"{circuit['ablated_loss']:.3f}", verdict]


def _control_cells(entry: dict) -> list[str]:
    circuit = entry["circuit"]
    randoms = (f"{circuit['random_loss']:.3f} / {circuit['random_loss_min']:.3f} / "
               f"{circuit['random_reached']} of {circuit['random_draws']}") if circuit.get("random_draws") else "-"
    twin = entry.get("nonsense")
    nonsense = "-" if not twin else (f"{_number(twin['mask_loss'])} / {_number(twin['loss'])} / "
                                     + ("**REACHES**" if twin["reached_target"] else "no"))
    base = entry.get("attribution")
    attribution = "-" if not base else ("no top-k reaches the target" if base["edges"] is None else
                                        f"{base['nodes']} / {base['edges']:,} / {base['loss']:.3f}")
    return [randoms, nonsense, attribution]


def compared_edges(summary: dict) -> list[tuple[str, float | None]]:
    """(model, geometric-mean edges) of the two models a summary compares. Reports written before any two
    models could be compared name them edges_geomean_dense and edges_geomean_sparse."""
    if "compared" in summary:
        return list(zip(summary["compared"], summary["edges_geomean"]))
    return [(role, summary.get(f"edges_geomean_{role}")) for role in ("dense", "sparse")]


def ratio_line(summary: dict, which: str) -> str:
    """`which` names the tasks compared, e.g. "tasks both models solve"."""
    if not summary.get("edge_ratio"):
        return f"No edge ratio over the {which}: there are none."
    names = summary["tasks_compared"]
    (first, a), (second, b) = compared_edges(summary)
    return (f"Over the {which} ({len(names)}: {', '.join(names)}): geometric-mean circuit edges "
            f"{a:,.0f} {first} vs {b:,.0f} {second}, a ratio of **{summary['edge_ratio']:.1f}x**.")


FLAGS = {"not_sufficient_on_test": "Circuits chosen on validation that miss the target on test",
         "random_reached": "Circuits for which some random circuit of the same shape reaches the target",
         "nonsense_reached": "Circuits whose nonsense twin reaches the target (pruning can fit the labels)",
         "attribution_not_larger": "Circuits no smaller than the attribution baseline's",
         "random_init_chosen": "Tasks on which pruning a randomly initialised model found a circuit on validation",
         "random_init_reached": "Tasks on which that random-init circuit also reaches the target on test"}


def report_markdown(report: dict) -> str:
    """report.md: the report's numbers as tables for people."""
    lines = ["# Extraction report", "", f"Recipe: `{report.get('recipe')}`", ""]
    models = [(role, report[role]) for role in ("dense", "sparse", "trained") if role in report]
    if models:
        lines += ["## Models", "", "| model | held-out loss | density | nonzero params | closing-quote accuracy |",
                  "| --- | --- | --- | --- | --- |"]
        for role, m in models:
            lines.append(f"| {role} | {m['heldout_loss']:.4f} | {_number(m.get('density'), '.5f')} | "
                         f"{_number(m.get('nonzero_params'), ',')} | {_number(m.get('quote_accuracy'))} |")
        if "sparse" in report and "loss_ratio" in report["sparse"]:
            s = report["sparse"]
            lines += ["", f"Sparse held-out loss is {s['loss_ratio']:.3f}x the dense model's; KL to dense "
                          f"{s['kl_to_dense']:.4f}; {s['tokens']:,} tokens in {s['wall_seconds'] / 60:.1f} min."]
        lines.append("")
    tasks = report.get("tasks")
    if tasks:
        target = report.get("target_loss", 0.15)
        lines += ["## Circuits", "",
                  f"Target task loss {target}. Each task has three disjoint splits: the mask trains on **train**, "
                  "bisection picks the circuit size on **validation**, and every figure below is read on "
                  "**test** (validation loss in brackets). Last-tokens: the full model's loss on prompts cut to "
                  "their last few tokens; a task solved from there is short-range. Sufficient: the circuit alone "
                  "(everything else mean-ablated) reaches the target. Necessary: ablating only the circuit raises "
                  "the loss to at least ln(2)/2. Calibrated: the circuit's test loss after fitting a scale and a "
                  "shift of its final logits on train (reported only; the checks use the raw loss).", "",
                  "| task | model | full loss / acc | last-tokens loss | nodes | edges | circuit loss (validation) "
                  "| calibrated | ablated loss | sufficient / necessary |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, by_role in tasks.items():
            for role, entry in by_role.items():
                lines.append("| " + " | ".join([name, role, *_circuit_cells(entry, target)]) + " |")
        controlled = [(name, role, e) for name, by_role in tasks.items() for role, e in by_role.items()
                      if e.get("circuit") and role != "random_init"]
        if controlled:
            lines += ["", "## Controls", "",
                      "On test, for each circuit. Random circuits: as many nodes at every site, at random (mean / "
                      "lowest loss / how many reach the target; none should). Nonsense twin: the same prompts with "
                      "labels that ignore the deciding detail, pruned with the same settings (loss with every node "
                      "its mask kept / loss of the circuit bisection chose / whether that reaches the target; it "
                      "should not). Attribution baseline: top nodes by attribution patching, sized on validation "
                      "(nodes / edges / loss); learned masks should need fewer edges.", "",
                      "| task | model | random circuits | nonsense twin | attribution baseline |",
                      "| --- | --- | --- | --- | --- |"]
            lines += ["| " + " | ".join([name, role, *_control_cells(e)]) + " |" for name, role, e in controlled]
        summary = report.get("summary") or {}
        lines += ["", "## Summary", "", ratio_line(summary, "tasks both models solve (circuits sufficient on test)")]
        if summary.get("context"):
            lines += ["", ratio_line(summary["context"], "context tasks both models solve")]
        if summary.get("controls_passed"):
            lines += ["", ratio_line(summary["controls_passed"], "tasks both models solve whose controls all pass")]
        for key, label in FLAGS.items():
            if summary.get(key):
                lines += ["", f"{label}: {', '.join(summary[key])}."]
        lines += ["", "Explore every circuit and what each node does in `report.html`. Pictures: "
                      "`circuits/loss_vs_edges.png` (task loss against circuit edges) and `circuits/TASK.sparse.png` "
                      "(each sparse circuit). Circuit files: `circuits/TASK.MODEL.json`.",
                  ""]
    return "\n".join(lines)
