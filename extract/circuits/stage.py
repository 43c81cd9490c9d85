"""The prune stage: every recipe task on every model the recipe names, with the same code.

Writes, under OUTPUT_DIR/circuits/: one JSON per (task, model) circuit, a drawing of each sparse
circuit, the loss-vs-edges plot, and `circuits.json` (the report's "tasks" and "summary"), then
folds them into report.json and report.md when a report exists.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from extract import atomic
from extract.bridges import Bridges, check_fits, has_bridges
from extract.circuits.controls import CONTROLS, control_failures
from extract.circuits.describe import describe_circuit
from extract.circuits.files import (
    FORMAT_VERSION,
    circuit_file,
    circuit_record,
    gates_from_record,
    read_circuit,
    write_circuit,
)
from extract.circuits.find import SPLIT_ROLES, TaskData, find_circuit, geometric_mean
from extract.circuits.masks import NodeMask
from extract.circuits.results import RANDOM_INIT, TaskResult, tasks_to_dict
from extract.circuits.sites import node_sites, site_means
from extract.circuits.transfer import bridged_transfer
from extract.data import prepare_heldout
from extract.errors import MissingFileError
from extract.models import load_model, load_tokenizer, weights_fingerprint
from extract.paths import CIRCUITS_DIRNAME, MODEL_DIRNAME
from extract.recipe import ModelConfig, Recipe, RecipeError, TaskFileRef
from extract.tasks.builtin import builtin_task
from extract.tasks.examples import SPLITS, split_of
from extract.tasks.jsonl import TaskFileError, load_task_file
from extract.timings import Timings

log = logging.getLogger(__name__)

RESULTS_DIRNAME = "results"  # one finished (task, model) per file: what a rerun resumes from
SUMMARY_FILE = "circuits.json"
MEANS_DIRNAME = "means"  # cached ablation means, one file per (weights, held-out text)
MAX_DRAWN_EDGES = 3000  # beyond this a drawing is a hairball (dense circuits are not drawn)


@dataclass
class PrunedModel:
    role: str  # "dense", "sparse", "random_init", or the path of a user's model
    path: str
    model: torch.nn.Module
    tokenizer: object


def task_name(task: str | TaskFileRef) -> str:
    return task if isinstance(task, str) else Path(task.file).stem


def load_task(task: str | TaskFileRef, tokenizer, max_context: int, recipe: Recipe) -> TaskData:
    """Train, validation and test examples. Built-in tasks draw each split from its own identifier
    pool; a task file is split by a hash of each prompt, so a prompt never lands in two splits."""
    p = recipe.prune
    if isinstance(task, str):
        def split(name, pairs):
            return builtin_task(task, tokenizer, name, pairs, p.seed, max_len=max_context)

        validation, test = split("validation", p.validation_pairs), split("test", p.test_pairs)
        if not validation or not test:
            raise TaskFileError(f"task {task}: no examples fit the model's context of {max_context} tokens")
        # thousands of prompts: built only for a task that gets pruned
        return TaskData(task, lambda: split("train", p.train_pairs), validation, test)
    examples = load_task_file(task.file, tokenizer, max_context)
    by_split = {name: [e for e in examples if split_of(repr(e.prompt_ids)) == name] for name in SPLITS}
    empty = [name for name, part in by_split.items() if not part]
    if empty:
        raise TaskFileError(f"{task.file}: the hash split left no {' or '.join(empty)} examples; add more examples")
    return TaskData(task_name(task), by_split["train"], by_split["validation"], by_split["test"])


def means_file(fingerprint: str, blocks: torch.Tensor) -> str:
    """The cache file name of a model's means on `blocks`, from the weights' and the blocks' fingerprints
    (so a retrained model or other text never reuses stale means)."""
    return f"means-{hashlib.sha256(fingerprint.encode() + blocks.numpy().tobytes()).hexdigest()[:16]}.safetensors"


def cached_means(model, sites, blocks: torch.Tensor, cache_dir: Path, fingerprint: str | None = None
                 ) -> dict[str, torch.Tensor]:
    """Mean activation per node on held-out pretraining text, cached in `cache_dir`."""
    path = cache_dir / means_file(fingerprint or weights_fingerprint(model), blocks)
    if path.exists():
        try:
            return load_file(path)
        except SafetensorError as error:  # damaged on disk: the means are cheap to estimate again
            log.warning("%s cannot be read (%s); estimating the means again", path, error)
    log.info("estimating mean activations on %d held-out blocks", len(blocks))
    means = site_means(model, sites, blocks)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # two processes may estimate the same means
    save_file({k: v.contiguous() for k, v in means.items()}, tmp)
    tmp.replace(path)
    return means


def models_to_prune(recipe: Recipe) -> list[PrunedModel]:
    out = []
    for entry in recipe.prune.models:
        if entry == "dense":
            cfg, path = recipe.model, recipe.model.name_or_path
        elif entry == "sparse":
            path = str(Path(recipe.output_dir) / MODEL_DIRNAME)
            if not Path(path).is_dir():
                raise MissingFileError(f"{path}: no sparse model yet; run the sparsify stage first "
                                        "(or set prune.models to name the models to prune)")
            cfg = ModelConfig(name_or_path=path)
        else:
            cfg, path = ModelConfig(name_or_path=entry, trust_remote_code=recipe.model.trust_remote_code), entry
        out.append(PrunedModel(entry, path, load_model(cfg).eval(), load_tokenizer(cfg)))
    if recipe.prune.random_model_control and out:
        torch.manual_seed(recipe.prune.seed)
        template = out[0].model
        fresh = type(template)(template.config).eval()
        out.append(PrunedModel(RANDOM_INIT, f"random init of {out[0].path}", fresh, out[0].tokenizer))
    return out


def _mean_blocks(recipe: Recipe, tokenizer) -> torch.Tensor:
    blocks, _ = prepare_heldout(recipe, tokenizer)
    step = max(1, len(blocks) // recipe.prune.mean_blocks)
    return blocks[::step][: recipe.prune.mean_blocks]


def result_key(recipe: Recipe, fingerprint: str, means: dict[str, torch.Tensor], data: TaskData) -> str:
    """What a (task, model) result depends on: the circuit file format (bumped when the results
    change shape), the pruning settings, the weights, the ablation means and the validation and test
    examples (which also pin a task file's contents and the generators)."""
    settings = json.dumps({"format": FORMAT_VERSION, **asdict(recipe.prune)}, sort_keys=True)
    digest = hashlib.sha256(settings.encode() + fingerprint.encode())
    for name in sorted(means):
        digest.update(means[name].numpy().tobytes())
    for split in (data.validation, data.test):
        digest.update(repr([(e.prompt_ids, e.target_id, e.alternative_id) for e in split]).encode())
    return digest.hexdigest()[:16]


def _circuit_file_reads(path: Path, result: TaskResult) -> bool:
    """Whether a finished (task, model)'s circuit file, if it has one, is still whole."""
    if not result.pruned:  # skipped as unsolved: no file
        return True
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def load_result(path: Path, key: str) -> tuple[TaskResult, list[dict]] | None:
    """(result, loss-vs-size curve) of a finished (task, model) from an earlier run of the same settings on
    the same model, or None."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return (TaskResult.from_dict(saved["result"]), saved["curve"]) if saved.get("key") == key else None


DEFAULT_COMPARED = ("dense", "sparse")


def _ratio(tasks: dict[str, dict[str, TaskResult]], names: list[str], compared: tuple[str, ...]) -> dict:
    geomeans = [geometric_mean([tasks[n][role].circuit.edges for n in names]) for role in compared]
    ratio = geomeans[0] / geomeans[1] if len(geomeans) == 2 and all(geomeans) else None
    return {"tasks_compared": names, "compared": list(compared), "edges_geomean": geomeans, "edge_ratio": ratio}


def summarise(tasks: dict[str, dict[str, TaskResult]], compared: tuple[str, ...] = DEFAULT_COMPARED) -> dict:
    """The headline: geometric-mean circuit edges of the two `compared` models (the first two the recipe
    prunes: dense and sparse by default, or a user's two `--model`s) over the tasks for which both have a
    circuit sufficient on test, and their ratio, first to second; the same over the context tasks alone
    (those neither model solves from the prompt's last tokens) and over the tasks whose controls all
    pass. Also, for every control (controls.py), the circuits it failed for."""
    compared = tuple(compared)
    both = sorted(name for name, by_role in tasks.items()
                  if all(role in by_role and by_role[role].sufficient for role in compared))
    context = [name for name in both if not any(tasks[name][role].short_range for role in compared)]
    circuits = [(f"{name} / {role}", result) for name, by_role in tasks.items() for role, result in by_role.items()
                if role != RANDOM_INIT and result.circuit is not None]
    random_init = [(name, by_role[RANDOM_INIT]) for name, by_role in tasks.items() if RANDOM_INIT in by_role]
    passed = [name for name in both
              if not any(control_failures(tasks[name][role], tasks[name].get(RANDOM_INIT)) for role in compared)]
    return {**_ratio(tasks, both, compared),
            "context": _ratio(tasks, context, compared),
            # the headline a skeptic keeps: tasks where no control (random draws, nonsense twin, random init)
            # reaches the target
            "controls_passed": _ratio(tasks, passed, compared),
            "solved": {role: sorted(name for name, by_role in tasks.items()
                                    if role in by_role and by_role[role].solved) for role in compared},
            "not_sufficient_on_test": [where for where, r in circuits if not r.circuit.sufficient],
            **{control.flag_key: [where for where, r in circuits if control.failed(r)] for control in CONTROLS},
            # the random-init control: bisection found a circuit on validation (it should not) ...
            "random_init_chosen": [name for name, r in random_init if r.circuit is not None],
            # ... and that circuit also reaches the target on test
            "random_init_reached": [name for name, r in random_init if r.sufficient]}


@dataclass
class Prepared:
    """What every job on one model shares: its node sites, ablation means and their provenance."""
    sites: list
    blocks: torch.Tensor
    fingerprint: str
    means: dict[str, torch.Tensor]
    means_path: str  # relative to the circuits folder


def prune_stage(recipe: Recipe, device: torch.device | str, rank: int = 0, world: int = 1,
                timings: Timings | None = None) -> dict | None:
    """Prune every task on every model; returns {"tasks": ..., "summary": ...} (also saved) on the main
    process, None on the others.

    Each (task, model) is a job whose result is a file (RESULTS_DIRNAME), so a rerun resumes per job.
    With several processes (`accelerate launch --num_processes N`), process `rank` runs every N-th job,
    and the results meet through those files: each process then reads all of them, and the main one
    writes the summary, the same as one process would. The random-init control's jobs come second:
    they run only for tasks a real model solves.

    Everything that runs a model runs on `device` (the process's accelerator); a model is moved there
    for its job and back after, so one model at a time takes device memory."""
    from extract.plots import plot_loss_vs_edges

    if not recipe.tasks:
        raise RecipeError("tasks: the recipe lists no tasks: add `tasks: [single_double_quote, {file: my_task.jsonl}]`")
    out = Path(recipe.output_dir) / CIRCUITS_DIRNAME
    timings = timings or Timings(out.parent, rank)
    models = models_to_prune(recipe)
    prepared = _prepare_models(models, recipe, out, device, rank, world, timings)
    tasks: dict[str, dict] = {}
    curves: dict[str, dict[str, list]] = {}
    real = [entry for entry in models if entry.role != RANDOM_INIT]
    _run_jobs([(entry, task) for entry in real for task in recipe.tasks], prepared, recipe, out, device, rank,
              world, timings, tasks, curves)
    # the control is for circuits the report claims, not for tasks no model does
    solved = [task for task in recipe.tasks if any(r.solved for r in tasks.get(task_name(task), {}).values())]
    _run_jobs([(entry, task) for entry in models if entry.role == RANDOM_INIT for task in solved], prepared,
              recipe, out, device, rank, world, timings, tasks, curves)
    if rank != 0:
        return None
    cfg = recipe.prune
    compared = tuple(entry.role for entry in real)[:2]
    result = {"target_loss": cfg.target_loss, "splits": SPLIT_ROLES, "tasks": tasks_to_dict(tasks),
              "summary": summarise(tasks, compared)}
    transfer = bridged_transfers(models, tasks, recipe, out, device, timings)
    if transfer is not None:
        result["transfer"] = transfer
    atomic.write_json_atomic(out / SUMMARY_FILE, result)
    plot_loss_vs_edges(curves, cfg.target_loss, out / "loss_vs_edges.png", tasks)
    return result


def bridged_transfers(models: list[PrunedModel], tasks: dict[str, dict[str, TaskResult]], recipe: Recipe,
                      out: Path, device, timings: Timings) -> dict | None:
    """For every sparse circuit on a task the dense model solves, the bridged intervention's figures
    (circuits/transfer.py), kept in the circuit's file so a rerun reads them back. None when the run
    has no bridges (or does not prune both the dense and the sparse model)."""
    by_role = {entry.role: entry for entry in models}
    if "dense" not in by_role or "sparse" not in by_role or not has_bridges(by_role["sparse"].path):
        return None
    dense, sparse = by_role["dense"], by_role["sparse"]
    bridges = Bridges.load(sparse.path)
    check_fits(bridges, sparse.model)
    dense_source = {"dense_model": dense.path, "dense_weights": weights_fingerprint(dense.model)}
    figures = {}
    for task in recipe.tasks:
        name = task_name(task)
        results = tasks.get(name, {})
        path = out / circuit_file(name, "sparse")
        if not (results.get("dense") and results["dense"].solved and results.get("sparse")
                and results["sparse"].circuit is not None and path.is_file()):
            continue
        record = read_circuit(path)
        if "transfer" not in record:
            data = load_task(task, sparse.tokenizer, sparse.model.config.max_position_embeddings, recipe)
            sites = node_sites(sparse.model)
            gates = gates_from_record(record, {s.key: s.width for s in sites}, str(path))
            with timings.part(f"bridged transfer ({name})"):
                for entry in (dense, sparse):
                    entry.model.to(device)
                found = bridged_transfer(dense.model, sparse.model, bridges.to(device), sites, gates,
                                         data.validation, data.test, seed=recipe.prune.seed)
                record["transfer"] = None if found is None else {**found, **dense_source}
                for entry in (dense, sparse):
                    entry.model.to("cpu")
            write_circuit(path, record)
        if record["transfer"] is not None:
            figures[name] = record["transfer"]
            log.info("%s: the sparse circuit's edit moves the dense model %.3f of the full patch at %s "
                     "(random node sets %.3f)", name, record["transfer"]["fraction"], record["transfer"]["site"],
                     record["transfer"]["random_mean"])
    return figures


def _barrier(world: int) -> None:
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _prepare_models(models: list[PrunedModel], recipe: Recipe, out: Path, device, rank: int, world: int,
                    timings: Timings) -> dict[str, Prepared]:
    """Sites and means of every model. Process `rank` estimates every N-th model's means into the cache;
    after a barrier every process reads the rest from it (each needs them all: a job's result key
    depends on its model's means)."""
    prepared = {}
    for turn in (0, 1):  # 0: this process's share, 1: the rest, once every share is cached
        for index, entry in enumerate(models):
            if (index % world == rank) != (turn == 0):
                continue
            sites = node_sites(entry.model)
            blocks = _mean_blocks(recipe, entry.tokenizer)
            fingerprint = weights_fingerprint(entry.model)
            means_path = f"{MEANS_DIRNAME}/{means_file(fingerprint, blocks)}"  # relative to the circuits folder
            cached = (out / means_path).is_file()
            with timings.part(f"means ({entry.role})") if not cached else contextlib.nullcontext():
                entry.model.to(device)
                means = cached_means(entry.model, sites, blocks, out / MEANS_DIRNAME, fingerprint)
                entry.model.to("cpu")
            prepared[entry.role] = Prepared(sites, blocks, fingerprint, means, means_path)
        if turn == 0:
            _barrier(world)
    return prepared


def _run_jobs(jobs: list, prepared: dict[str, Prepared], recipe: Recipe, out: Path, device, rank: int, world: int,
              timings: Timings, tasks: dict, curves: dict) -> None:
    """This process's share of `jobs` (every `world`-th), then every job's result, waiting for the files
    the other processes write; fills `tasks` and `curves` in job order."""
    keyed = []
    for entry, task in jobs:
        data = load_task(task, entry.tokenizer, entry.model.config.max_position_embeddings, recipe)
        prep = prepared[entry.role]
        keyed.append((entry, data, result_key(recipe, prep.fingerprint, prep.means, data)))
    done = {}
    for index, (entry, data, key) in enumerate(keyed):
        if index % world == rank:
            entry.model.to(device)
            done[index] = _run_job(entry, prepared[entry.role], data, key, recipe, out, timings)
            entry.model.to("cpu")
    for index, (entry, data, key) in enumerate(keyed):
        result, curve = done.get(index) or _wait_for_result(out / RESULTS_DIRNAME / circuit_file(data.name, entry.role),
                                                            key)
        tasks.setdefault(data.name, {})[entry.role] = result
        curves.setdefault(data.name, {})[entry.role] = curve


def _wait_for_result(path: Path, key: str, poll_seconds: float = 2.0) -> tuple[TaskResult, list[dict]]:
    """Another process's job result, once written. If that process fails, the launcher ends this one."""
    while (saved := load_result(path, key)) is None:
        time.sleep(poll_seconds)
    return saved


def _run_job(entry: PrunedModel, prep: Prepared, data: TaskData, key: str, recipe: Recipe, out: Path,
             timings: Timings) -> tuple[TaskResult, list[dict]]:
    """One task on one model (already on its device), or its result from an earlier run."""
    from extract.plots import draw_circuit

    cfg = recipe.prune
    result_path = out / RESULTS_DIRNAME / circuit_file(data.name, entry.role)
    saved = load_result(result_path, key)
    if saved is not None and not _circuit_file_reads(out / circuit_file(data.name, entry.role), saved[0]):
        log.warning("%s is damaged; pruning %s (%s) again", out / circuit_file(data.name, entry.role),
                    data.name, entry.role)
        saved = None
    if saved is not None:  # a rerun after an interruption: this one is done
        _add_missing_descriptions(out / circuit_file(data.name, entry.role), entry, prep, data, timings)
        log.info("%s (done in an earlier run)", circuit_line(data.name, entry.role, saved[0], cfg.target_loss))
        return saved
    bar = _LazyBar(cfg.steps, f"prune {data.name} ({entry.role})")
    control = entry.role == RANDOM_INIT  # pruned even though unsolved; no controls of its own
    found = find_circuit(entry.model, prep.sites, prep.means, data, cfg, on_step=bar.step, on_attempt=bar.attempt,
                         prune_unsolved=control, controls=not control)
    bar.close()
    if found.result.pruned:  # (not skipped as unsolved)
        timings.record(f"{data.name} on {entry.role}" + ("" if control else ", with its controls"),
                       found.result.prune_seconds)
        record = circuit_record(entry.model, data.name, entry.role, entry.path, found, cfg,
                                weights=prep.fingerprint, means_file=prep.means_path, test=data.test)
        write_circuit(out / circuit_file(data.name, entry.role), record)
        if entry.role != "dense" and record["edges"] is not None and len(record["edges"]) <= MAX_DRAWN_EDGES:
            draw_circuit(record, out / circuit_file(data.name, entry.role, ".png"))
    # written after the circuit files: its presence means this (task, model) is pruned, so a run stopped
    # while describing (minutes on a large circuit) resumes with the descriptions alone
    atomic.write_json_atomic(result_path, {"key": key, "result": found.result.to_dict(), "curve": found.curve})
    log.info("%s", circuit_line(data.name, entry.role, found.result, cfg.target_loss))
    if found.gates is not None:  # (a random-init control can be pruned without finding a circuit)
        _write_descriptions(out / circuit_file(data.name, entry.role), record, found.gates, entry, prep, data,
                            timings)
    return found.result, found.curve


def _describe(entry: PrunedModel, prep: Prepared, gates, data: TaskData) -> dict:
    log.info("describing the %d nodes of %s (%s)", int(sum(g.sum() for g in gates.values())), data.name, entry.role)
    mask = NodeMask(prep.sites, prep.means).to(next(entry.model.parameters()).device)
    return describe_circuit(entry.model, entry.tokenizer, prep.sites, mask, gates, prep.blocks, data.test)


def _add_missing_descriptions(path: Path, entry: PrunedModel, prep: Prepared, data: TaskData,
                              timings: Timings) -> None:
    """Describe the nodes of a circuit file that has none yet (its run stopped while describing, or it
    predates node descriptions), without pruning again."""
    if not path.is_file():
        return
    record = read_circuit(path)
    if "descriptions" in record or not record.get("nodes"):
        return
    gates = gates_from_record(record, {s.key: s.width for s in prep.sites}, str(path))
    _write_descriptions(path, record, gates, entry, prep, data, timings)


def _write_descriptions(path: Path, record: dict, gates, entry: PrunedModel, prep: Prepared, data: TaskData,
                        timings: Timings) -> None:
    with timings.part(f"describe {data.name} on {entry.role}"):
        record["descriptions"] = _describe(entry, prep, gates, data)
    write_circuit(path, record)


class _LazyBar:
    """A progress bar that appears only once mask training starts (not for unsolved tasks)."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.label, self.bar = total, desc, desc, None

    def attempt(self, label: str) -> None:
        """A new mask (the first, a retry with a smaller penalty, a control): a fresh bar that names it."""
        self.close()
        self.label = f"{self.desc} {label}"

    def step(self, step: int, task_loss: float, kept: float) -> None:
        if self.bar is None:
            self.bar = tqdm(total=self.total, desc=self.label, leave=False, dynamic_ncols=True)
        self.bar.update(1)
        if step % 10 == 0:
            self.bar.set_postfix(task_loss=f"{task_loss:.3f}", kept=int(kept))
        if self.bar.n >= self.total:  # the mask is trained: what follows logs on lines of its own
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None



def circuit_line(task: str, role: str, result: TaskResult, target: float) -> str:
    """One log line per (task, model); every loss is on the test split."""
    head = (f"{task:>20} {role:>11}: test loss {result.full_loss:.3f} (acc {result.full_accuracy:.2f}, "
            f"short-range {result.short_range_loss:.3f})")
    if not result.solved and role != RANDOM_INIT:
        return head + f"; the full model misses the target {target}: not pruned"
    circuit = result.circuit
    if circuit is None:
        return head + f"; no circuit reaches {target} (k_coef {', '.join(result.penalties_tried())} tried)"
    parts = [f"circuit {circuit.nodes} nodes, {circuit.edges} edges, loss {circuit.loss:.3f} "
             f"(validation {circuit.validation_loss:.3f}), ablated {circuit.ablated_loss:.3f}"]
    parts += [f"{control.label} {cell.summary.replace('**', '')}" for control in CONTROLS
              if (cell := control.cell(result)) is not None]
    flags = [] if circuit.sufficient and circuit.necessary else ["check failed"]
    flags += ["fits through ablation"] if circuit.fits_through_ablation else []
    flags += [result.retry_note()] if result.retry_note() else []
    return head + "; " + ", ".join(parts) + "".join(f" [{flag}]" for flag in flags)
