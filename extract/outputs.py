"""The output folder's own bookkeeping: the recipe saved beside every run, and the lock that keeps a
second run out of it. What the folder reports is rendered in report_md.py, report_html.py and card.py."""
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
