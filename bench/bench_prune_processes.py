"""The prune stage on one process against several (`accelerate launch --num_processes N`): wall time,
and where the reports differ apart from wall times (floats to a relative 1e-4: extract/report_diff.py).

    python bench/bench_prune_processes.py --sparse outputs/tiny-python/model --json bench/results/prune_processes.json

Prunes the given tasks on the embedded dense model and a sparse model of the default recipe with the
tiny-python recipe's settings (`--quick`: the nonsense twin and the attribution baseline off), once in
one process and once in N gloo processes on the CPU. Each process gets the CPU's cores divided by the
processes as its threads (extract/train.py `make_accelerator`). Run it alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from default_runs import machine  # noqa: E402

from extract.report_diff import differences, without_times  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparse", required=True, help="a sparse model of the default recipe")
    parser.add_argument("--tasks", nargs="+", default=["while_return_true", "single_double_quote"])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the nonsense twin and attribution baseline off")
    parser.add_argument("--json")
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides for both runs")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    common = ["--stage", "prune", "--model", "embedded", "--model", args.sparse,
              *[a for t in args.tasks for a in ("--task", t)],
              *(["prune.nonsense_control=false", "prune.attribution_baseline=false"] if args.quick else []),
              *args.overrides]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
              str(args.processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, prefix in (("1 process", [sys.executable]), (f"{args.processes} processes", launch)):
            out = Path(tmp) / name.replace(" ", "-")
            start = time.time()
            subprocess.run([*prefix, str(ROOT / "extract" / "run.py"), *common, f"output_dir={out}"], env=env,
                           cwd=ROOT, check=True, capture_output=True)
            report = json.loads((out / "report.json").read_text())
            runs[name] = {"wall_seconds": round(time.time() - start), "report": report}
            print(name, runs[name]["wall_seconds"], "s", flush=True)
        one, many = (runs[n]["report"] for n in runs)
        differ = differences(without_times(one["tasks"]), without_times(many["tasks"]))
    result = {"command": "python bench/bench_prune_processes.py " + " ".join(sys.argv[1:]), **machine(),
              "wall_seconds": {n: r["wall_seconds"] for n, r in runs.items()}, "differences_apart_from_times": differ,
              "time_seconds": {n: r["report"].get("time_seconds") for n, r in runs.items()},
              "circuits": {task: {role: [r["circuit"]["nodes"], r["circuit"]["edges"], r["circuit"]["loss"]]
                                  for role, r in by_role.items() if r.get("circuit")}
                           for task, by_role in one["tasks"].items()}}
    print(json.dumps({k: v for k, v in result.items() if k != "time_seconds"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
