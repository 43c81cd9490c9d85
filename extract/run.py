"""Command line: `accelerate launch extract/run.py --recipe NAME_OR_PATH [key=value ...]`.

Also runs as `python extract/run.py ...`, `python -m extract.run ...` or the `extract` script.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the package importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from extract.recipe import RecipeError, available_recipes, load_recipe  # noqa: E402  (light: no torch)

DEFAULT_RECIPE = "tiny-python"
STAGES = ("sparsify", "prune", "report", "push", "all")


def build_parser() -> argparse.ArgumentParser:
    installed = Path(sys.argv[0]).name in ("sparse-circuit-extract", "extract")
    parser = argparse.ArgumentParser(
        prog=Path(sys.argv[0]).name if installed else "extract/run.py",
        description="Fine-tune a dense causal LM into a weight-sparse one, prune task circuits out of both "
                    "models, check them, and report.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"recipes in recipes/: {', '.join(available_recipes())}\n\n"
            "examples (from a checkout; installed from a wheel, `sparse-circuit-extract` takes the same arguments):\n"
            "  accelerate launch extract/run.py                        # embedded default, offline\n"
            "  accelerate launch extract/run.py --recipe gpt2-small\n"
            "  python extract/run.py train.steps=50 output_dir=/tmp/x  # override any field by dotted path\n"
            "  accelerate launch --multi_gpu --num_processes 2 extract/run.py   # 2 CPU processes (gloo)\n"
            "  accelerate launch --config_file configs/fsdp2.yaml --num_processes 8 extract/run.py \\\n"
            "      --recipe gpt2-small                                 # FSDP2: weights, teacher, Adam sharded\n"
            "  python extract/run.py --stage prune --model path/to/model --task my_task.jsonl output_dir=/tmp/c\n"
            "  python extract/run.py --stage push hub.repo_id=you/tiny-python-sparse  # publish a finished run\n\n"
            "Rerunning the same command resumes from the newest checkpoint in output_dir."
        ),
    )
    parser.add_argument("--recipe", default=DEFAULT_RECIPE,
                        help=f"a name from recipes/ or a path to a YAML file (default: {DEFAULT_RECIPE})")
    parser.add_argument("--stage", choices=STAGES, default="all",
                        help="sparsify: train and save the sparse model; prune: find and check the task "
                             "circuits; report: write report.json and report.md from saved outputs; push: publish "
                             "the finished output_dir to the Hub repo hub.repo_id; all: sparsify, prune and report "
                             "in order, then push when hub.repo_id is set (default)")
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


def _print_error(error: Exception) -> None:
    """A user's error as `error: ...` lines on stderr, one per problem (a recipe can have several)."""
    print("\n".join(f"error: {line}" for line in str(error).splitlines()), file=sys.stderr)


def main(argv: list[str] | None = None, phase=None) -> int:
    """The command line. `phase`: a hook around the training loop's phases (extract/train.py), for benchmarks."""
    started = time.time()
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
        _print_error(error)
        return 2
    pushes = args.stage == "push" or (args.stage == "all" and recipe.hub.repo_id is not None)
    if pushes and recipe.hub.repo_id is None:
        print(f"error: {_display_path(recipe_path)}: hub.repo_id: --stage push needs the Hub repo to push to, "
              "e.g. hub.repo_id=you/tiny-python-sparse", file=sys.stderr)
        return 2
    # Before transformers/datasets are imported: they read these (e.g. HF_HUB_OFFLINE) at import. A run
    # that pushes keeps the network: a recipe's HF_HUB_OFFLINE only guards loading.
    for key, value in recipe.env.items():
        if not (pushes and key == "HF_HUB_OFFLINE"):
            os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2"):  # huggingface_hub's HTTP clients log every request at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)

    if args.stage == "push":
        from extract.errors import UserError
        from extract.outputs import output_lock

        out = Path(recipe.output_dir)
        try:  # no lock on a folder without a report: the push refuses it and writes nothing there
            with output_lock(out) if (out / "report.json").is_file() else contextlib.nullcontext():
                _push(recipe)
        except UserError as error:
            _print_error(error)
            return 1
        return 0

    from extract.errors import UserError
    from extract.models import check_family
    from extract.outputs import output_lock
    from extract.train import make_accelerator

    try:
        if args.stage in ("sparsify", "all"):
            check_family(recipe.model)  # an unsupported model fails before any work
        accelerator = make_accelerator(recipe)
        out = Path(recipe.output_dir)
        with output_lock(out) if accelerator.is_main_process else contextlib.nullcontext():
            return _run_stages(args, recipe, recipe_path, pushes, accelerator, phase, started)
    except UserError as error:  # anything else is a bug in this project: keep its traceback
        _print_error(error)
        return 1


def _run_stages(args, recipe, recipe_path: Path, pushes: bool, accelerator, phase=None, started=None) -> int:
    """The stages in order, with the output folder locked by this run."""
    from extract.outputs import check_recipe, save_recipe
    from extract.report import write_report
    from extract.timings import Timings, all_parts, timing_table
    from extract.train import train

    out = Path(recipe.output_dir)
    main_process = accelerator.is_main_process
    if main_process:
        check_recipe(recipe, out)  # a different run's folder is refused before anything loads
        if args.stage not in ("sparsify", "all"):  # (training saves it once its inputs have loaded)
            save_recipe(recipe, out)
    accelerator.wait_for_everyone()
    timings = Timings(out, accelerator.process_index)
    if started is not None:
        timings.record("set-up (imports, accelerator)", time.time() - started)
    if args.stage in ("sparsify", "all"):
        train(recipe, accelerator, **({"phase": phase} if phase else {}))
        _record_sparsify_time(out, timings)
    # `all` prunes when the recipe lists tasks; an explicit `prune` without tasks says so. Every process
    # takes a share of the (task, model) jobs; the main one writes the summary.
    if args.stage == "prune" or (args.stage == "all" and recipe.tasks):
        from extract.circuits.stage import prune_stage
        from extract.report import refresh_report
        from extract.report_view import ratio_line

        pruned = prune_stage(recipe, accelerator.device, accelerator.process_index, accelerator.num_processes,
                             timings)
        if args.stage == "prune" and main_process:
            refresh_report(Path(recipe.output_dir), _display_path(recipe_path))
            if len(pruned["summary"]["compared"]) == 2:
                print(ratio_line(pruned["summary"], "tasks both models solve").replace("**", ""))
            print(f"report: {Path(recipe.output_dir) / 'report.md'} (and report.html, to explore the circuits)")
    if args.stage in ("report", "all") and main_process:
        from extract.report_md import summary_lines
        from extract.report_view import report_view

        with timings.part("report"):
            report = write_report(recipe, _display_path(recipe_path), accelerator.device)
        print("\n".join(summary_lines(report_view(report))))
        print(f"report: {Path(recipe.output_dir) / 'report.json'} (and report.md; report.html to explore the circuits)")
    accelerator.wait_for_everyone()  # (every process's prune jobs timed)
    if main_process:
        from extract.report import add_timings

        add_timings(out, all_parts(out))  # before a push, so the Hub's report has them too
    if pushes and main_process:
        with timings.part("push"):
            _push(recipe)
    if main_process:
        print(timing_table(all_parts(out)))
    return 0


def _record_sparsify_time(out: Path, timings) -> None:
    """Sparsifying's wall time over every session that trained (resumed runs included), as training saved it."""
    from extract import atomic

    state = out / "model" / "trainer_state.json"
    if state.is_file():
        saved = atomic.read_json(state, "sparsifying writes it at its end: run --stage sparsify again")
        timings.record("sparsify (every session)", saved["wall_seconds"])


def _push(recipe) -> None:
    """Publish the finished output_dir (--stage push, or the end of a run with hub.repo_id set)."""
    from extract.card import model_card
    from extract.hub import finished_report, push_run
    from extract.outputs import RECIPE_FILE

    out = Path(recipe.output_dir)
    report = finished_report(out)
    # the card describes the run as it was made: its saved recipe and its report
    saved = load_recipe(str(out / RECIPE_FILE))[0] if (out / RECIPE_FILE).is_file() else recipe
    saved.hub = recipe.hub
    commit = push_run(out, recipe.hub, model_card(report, saved, recipe.hub.repo_id))
    print(f"pushed: {recipe.hub.repo_id} (commit {commit[:12]})")


if __name__ == "__main__":
    sys.exit(main())
