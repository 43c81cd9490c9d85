"""Fault injection: kill a run with SIGKILL at random moments of each stage, rerun the same command until
it finishes, and compare what it leaves with an uninterrupted run's.

    python tests/faults.py --points 3 [--seed 0] [--json results.json]

A run is the README command on a tiny eager model (sparsify, prune a task out of both models, report,
push to a Hub-compatible server on 127.0.0.1). Each stage is found in the run's own output by the line
that starts it, and the kill falls at a uniformly random point of that stage's span in the reference
run. Compared with the reference: the sparse model's weights (bit for bit: eager on a CPU is
deterministic), every circuit file and the report (all but wall times), and the files on the Hub.
tests/test_faults.py runs one kill point per stage.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.conftest import tiny_recipe_dict  # noqa: E402
from tests.hub_server import serve_in_thread  # noqa: E402

# stage: (the output that says it has begun, the output that says the next one has)
STAGES = {
    "sparsify": ("dense held-out loss", "saved "),  # printed just before the first step
    "means": ("estimating mean activations", "prune quotes"),
    "masks": ("prune quotes", "scoring both models"),
    "report": ("scoring both models", "pushing "),
    "push": ("pushing ", "pushed: "),
}
PRUNE = ["prune.steps=15", "prune.batch_size=16", "prune.lr=0.05", "prune.mean_blocks=8", "prune.random_draws=2",
         "prune.nonsense_control=false", "prune.attribution_baseline=false", "prune.k_coef_fallbacks=[]",
         "prune.random_model_control=false"]
TOKEN = "hf_faultHarnessTokenNeverPrinted000000"
# what may differ between two identical runs (each run has its own recipe file and folder)
TIMING_KEYS = ("seconds", "wall", "tokens_per_s", "path", "recipe", "title")


@dataclass
class Watched:
    """A running command whose merged output is read as it comes, with the time each marker first showed."""
    proc: subprocess.Popen
    text: str = ""
    seen: dict[str, float] = field(default_factory=dict)

    def reader(self):
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            self.text += chunk.decode(errors="replace")
            for begins, ends in STAGES.values():
                for marker in (begins, ends):
                    if marker not in self.seen and marker in self.text:
                        self.seen[marker] = time.monotonic()


class Harness:
    def __init__(self, work: Path, model_dir: Path, corpus: Path, task_file: Path):
        self.work = work
        self.server = serve_in_thread(work / "hub")
        self.env = {**os.environ, "HF_ENDPOINT": self.server.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1",
                    "HF_HUB_OFFLINE": "0", "HF_HOME": str(work / "hf-home"), "PYTHONUNBUFFERED": "1"}
        self.model_dir, self.corpus = model_dir, corpus
        self.task_file = work / "quotes.jsonl"  # the task's first 100 pairs: checks on fewer examples are quicker
        work.mkdir(parents=True, exist_ok=True)
        self.task_file.write_text("".join(task_file.read_text().splitlines(keepends=True)[:200]))

    def recipe(self, name: str) -> Path:
        data = tiny_recipe_dict(self.model_dir, self.corpus, self.work / name)
        data.update(tasks=[{"file": str(self.task_file)}], hub={"repo_id": f"faults/{name}", "license": "mit"})
        data["sparsity"].update(target_density=0.5)
        data["loss"] = {"ce_weight": 0.0, "kl_weight": 1.0}
        data["train"].update(steps=16, checkpoint_every=4)
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def start(self, recipe: Path) -> Watched:
        proc = subprocess.Popen([sys.executable, str(ROOT / "extract" / "run.py"), "--recipe", str(recipe), *PRUNE],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        watched = Watched(proc)
        threading.Thread(target=watched.reader, daemon=True).start()
        return watched

    def reference(self) -> dict[str, tuple[float, float]]:
        """Run uninterrupted; each stage's span in seconds after it begins (its marker to the next's)."""
        watched = self.start(self.recipe("reference"))
        assert watched.proc.wait(timeout=900) == 0, watched.text[-3000:]
        time.sleep(0.2)
        return {stage: watched.seen[ends] - watched.seen[begins] for stage, (begins, ends) in STAGES.items()}

    def killed_then_rerun(self, name: str, stage: str, delay: float) -> dict:
        """Start, SIGKILL `delay` seconds into `stage`, then rerun the same command until it exits 0.
        A run that got past the point (a short stage ran faster this time) is tried again, in a fresh
        folder, with half the delay."""
        for attempt in range(4):
            if attempt:
                name, delay = f"{name.split('~')[0]}~{attempt}", delay / 2
            recipe = self.recipe(name)
            watched = self.start(recipe)
            begins = STAGES[stage][0]
            deadline = time.monotonic() + 900
            while begins not in watched.seen:
                assert watched.proc.poll() is None, f"{name}: ended before {stage} began\n{watched.text[-3000:]}"
                assert time.monotonic() < deadline
                time.sleep(0.005)
            time.sleep(max(0.0, watched.seen[begins] + delay - time.monotonic()))
            killed = watched.proc.poll() is None
            if killed:
                watched.proc.send_signal(signal.SIGKILL)
            watched.proc.wait()
            if killed:
                break
        reruns = 0
        while True:
            reruns += 1
            again = self.start(recipe)
            if again.proc.wait(timeout=900) == 0:
                break
            assert reruns < 3, f"{name}: rerun {reruns} failed\n{again.text[-3000:]}"
        return {"stage": stage, "delay_s": round(delay, 3), "killed": killed, "reruns": reruns,
                "differences": self.compare("reference", name)}

    def compare(self, reference: str, name: str) -> list[str]:
        """What differs between two finished runs (an empty list: nothing)."""
        a, b = self.work / reference, self.work / name
        problems = []
        if _digest(a / "model" / "model.safetensors") != _digest(b / "model" / "model.safetensors"):
            problems.append("model weights")
        for path in sorted((a / "circuits").glob("*.json")):
            if _strip(json.loads(path.read_text())) != _strip(json.loads((b / "circuits" / path.name).read_text())):
                problems.append(f"circuits/{path.name}")
        for file in ("report.json", "model/trainer_state.json"):
            if _strip(json.loads((a / file).read_text())) != _strip(json.loads((b / file).read_text())):
                problems.append(file)
        if _strip(_page_data(a / "report.html")) != _strip(_page_data(b / "report.html")):  # it names the recipe
            problems.append("report.html")
        logs = [[_strip(json.loads(line)) for line in (d / "train_log.jsonl").read_text().splitlines()] for d in (a, b)]
        if logs[0] != logs[1]:
            problems.append("train_log.jsonl")
        hub_a, hub_b = self.hub_files(f"faults/{reference}"), self.hub_files(f"faults/{name}")
        if hub_a != hub_b:
            problems.append(f"Hub files: {sorted(set(hub_a.items()) ^ set(hub_b.items()))[:4]}")
        return problems

    def hub_files(self, repo: str) -> dict[str, str]:
        """The repo's files and their hashes, but those that hold the repo's name or times (compared
    locally, without the times)."""
        data = json.loads((self.work / "hub" / "repos" / f"{repo}.json").read_text())
        files = data["commits"][data["refs"]["main"]]["files"]
        return {path: json.dumps(meta, sort_keys=True) for path, meta in files.items()
                if path not in ("README.md", "report.json", "report.md", "report.html", "recipe.yaml",
                                "circuits/circuits.json", "train_log.jsonl", "trainer_state.json")
                and not (path.startswith("circuits/") and path.endswith(".json"))}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _page_data(path: Path) -> dict:
    """The data report.html draws, as inlined in the page."""
    page = path.read_text()
    start = page.index('id="report-data">') + len('id="report-data">')
    return json.loads(page[start:page.index("</script>", start)])


def _strip(data):
    """`data` without the entries that name times, speeds or paths (they differ between identical runs)."""
    if isinstance(data, dict):
        return {k: _strip(v) for k, v in data.items() if not any(t in k for t in TIMING_KEYS)}
    if isinstance(data, list):
        return [_strip(v) for v in data]
    return data


def run_harness(work: Path, model_dir: Path, corpus: Path, task_file: Path, points: int, seed: int = 0,
                stages: list[str] | None = None) -> dict:
    harness = Harness(work, model_dir, corpus, task_file)
    try:
        spans = harness.reference()
        rng = random.Random(seed)
        results = []
        for stage, span in spans.items():
            if stages and stage not in stages:
                continue
            for point in range(points):
                result = harness.killed_then_rerun(f"{stage}-{point}", stage, rng.uniform(0.0, span))
                print(json.dumps(result), flush=True)
                results.append(result)
        return {"spans_s": spans, "results": results}
    finally:
        harness.server.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=3, help="kill points per stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), help="only these stages (default: all)")
    parser.add_argument("--work", type=Path, help="a scratch folder (default: a new temporary one)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import tempfile

    from tests.conftest import make_quote_model, make_tiny_corpus

    work = args.work or Path(tempfile.mkdtemp(prefix="faults-"))
    model_dir, task_file = make_quote_model(work / "quote-model")
    result = run_harness(work, model_dir, make_tiny_corpus(work / "corpus.jsonl"), task_file, args.points, args.seed,
                         args.stages)
    failed = [r for r in result["results"] if r["differences"] or not r["killed"]]
    print(f"{len(result['results'])} kill points, {len(failed)} with a difference or no kill")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
