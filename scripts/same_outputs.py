"""Do two output directories hold the same results? For a change meant to leave behaviour alone.

    python scripts/same_outputs.py outputs/before outputs/after

Compares the sparse model's weights (sha256 of model.safetensors), the training log without its
throughput, and every circuit file without wall times, the model's path, and the names issue 29
changed (`local_loss`, `local_tokens`). Prints one line per file and exits 1 if any differs.
"""
import argparse
import hashlib
import json
import sys
from pathlib import Path

from extract.paths import CIRCUITS_DIRNAME, MODEL_DIRNAME, TRAIN_LOG_FILE

VARIES = {"tokens_per_s", "prune_seconds", "wall_seconds", "time_seconds", "model_path"}  # clocks and where the run was
RENAMED = {"local_loss": "short_range_loss", "local_tokens": "short_range_tokens"}


def comparable(value):
    if isinstance(value, dict):
        return {RENAMED.get(k, k): comparable(v) for k, v in value.items() if k not in VARIES}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    same = True

    def report(name: str, a, b) -> None:
        nonlocal same
        same &= a == b
        print(f"{'same' if a == b else 'DIFFERS'}  {name}: {digest(a)}" + ("" if a == b else f" vs {digest(b)}"))

    weights = [hashlib.sha256((d / MODEL_DIRNAME / "model.safetensors").read_bytes()).hexdigest()
               for d in (args.before, args.after)]
    report(f"{MODEL_DIRNAME}/model.safetensors (sha256 {weights[0][:16]})", *weights)
    logs = [[comparable(json.loads(line)) for line in (d / TRAIN_LOG_FILE).read_text().splitlines()]
            for d in (args.before, args.after)]
    report(f"{TRAIN_LOG_FILE} ({len(logs[0])} rows)", *logs)
    files = [sorted(p.name for p in (d / CIRCUITS_DIRNAME).glob("*.json")) for d in (args.before, args.after)]
    report("the list of circuit files", *files)
    for name in sorted(set(files[0]) & set(files[1])):
        a, b = (comparable(json.loads((d / CIRCUITS_DIRNAME / name).read_text())) for d in (args.before, args.after))
        circuit = a.get("circuit")
        shape = (f" ({circuit['nodes']} nodes, {circuit['edges']:,} edges, test loss {circuit['loss']:.4f})" if circuit
                 else " (no circuit)" if "circuit" in a else "")
        report(f"{CIRCUITS_DIRNAME}/{name}{shape}", a, b)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
