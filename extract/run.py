"""Command line: `accelerate launch extract/run.py --recipe NAME_OR_PATH [key=value ...]`.

Also runs as `python extract/run.py ...`, `python -m extract.run ...` or the `extract` script.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the package importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from extract.recipe import RecipeError, available_recipes, load_recipe  # noqa: E402  (light: no torch)

DEFAULT_RECIPE = "tiny-python"
STAGES = ("sparsify", "prune", "report", "all")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="extract/run.py",
        description="Fine-tune a dense causal LM into a weight-sparse one, prune task circuits out of both "
                    "models, check them, and report.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"recipes in recipes/: {', '.join(available_recipes())}\n\n"
            "examples:\n"
            "  accelerate launch extract/run.py                        # embedded default, offline\n"
            "  accelerate launch extract/run.py --recipe gpt2-small\n"
            "  python extract/run.py train.steps=50 output_dir=/tmp/x  # override any field by dotted path\n"
            "  accelerate launch --multi_gpu --num_processes 2 extract/run.py   # 2 CPU processes (gloo)\n"
            "  python extract/run.py --stage prune --model path/to/model --task my_task.jsonl output_dir=/tmp/c\n\n"
            "Rerunning the same command resumes from the newest checkpoint in output_dir."
        ),
    )
    parser.add_argument("--recipe", default=DEFAULT_RECIPE,
                        help=f"a name from recipes/ or a path to a YAML file (default: {DEFAULT_RECIPE})")
    parser.add_argument("--stage", choices=STAGES, default="all",
                        help="sparsify: train and save the sparse model; prune: find and check the task "
                             "circuits; report: write report.json and report.md from saved outputs; all: the three "
                             "in order (default)")
    parser.add_argument("--model", action="append", metavar="PATH_OR_ID",
                        help="with --stage prune: prune this saved model (repeatable) instead of the recipe's "
                             "dense and sparse models")
    parser.add_argument("--task", action="append", metavar="NAME_OR_FILE",
                        help="a built-in task name or a JSONL task file (repeatable); replaces the recipe's tasks")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override a recipe field by dotted path, e.g. train.steps=200")
    return parser


def _display_path(path: Path) -> str:
    """recipes/NAME.yaml for shipped recipes (the same on every machine), else the path given."""
    from extract.paths import RECIPES_DIR

    resolved = path.resolve()
    return f"recipes/{resolved.name}" if resolved.parent == RECIPES_DIR.resolve() else str(path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"prune.models={json.dumps(args.model)}")
    if args.task:
        is_file = [t.endswith(".jsonl") or Path(t).is_file() for t in args.task]
        overrides.append("tasks=" + json.dumps([{"file": t} if f else t for t, f in zip(args.task, is_file)]))
    try:
        recipe, recipe_path = load_recipe(args.recipe, overrides)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Before transformers/datasets are imported: they read these (e.g. HF_HUB_OFFLINE) at import.
    for key, value in recipe.env.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from extract.arch import ArchitectureError
    from extract.models import ModelLoadError, check_family
    from extract.outputs import save_recipe
    from extract.report import write_report
    from extract.tasks.jsonl import TaskFileError
    from extract.train import NonFiniteLossError, make_accelerator, train

    try:
        if args.stage in ("sparsify", "all"):
            check_family(recipe.model)  # an unsupported model fails before any work
        accelerator = make_accelerator(recipe)
        if accelerator.is_main_process:
            save_recipe(recipe, Path(recipe.output_dir))
        accelerator.wait_for_everyone()
        if args.stage in ("sparsify", "all"):
            train(recipe, accelerator)
        # `all` prunes when the recipe lists tasks; an explicit `prune` without tasks says so
        if (args.stage == "prune" or (args.stage == "all" and recipe.tasks)) and accelerator.is_main_process:
            from extract.circuits.stage import prune_stage
            from extract.report import refresh_report

            prune_stage(recipe, accelerator.device)
            if args.stage == "prune":
                refresh_report(Path(recipe.output_dir), _display_path(recipe_path))
                print(f"report: {Path(recipe.output_dir) / 'report.md'}")
        if args.stage in ("report", "all") and accelerator.is_main_process:
            report = write_report(recipe, _display_path(recipe_path), accelerator.device)
            from extract.outputs import summary_lines

            print("\n".join(summary_lines(report)))
            print(f"report: {Path(recipe.output_dir) / 'report.json'}")
        accelerator.wait_for_everyone()
    except (ArchitectureError, ModelLoadError, NonFiniteLossError, RecipeError, TaskFileError, FileNotFoundError,
            KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
