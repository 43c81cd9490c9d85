"""Peak memory per process of sparsifying GPT-2 small with 2 processes: DDP against FSDP2.

    python bench/bench_fsdp_memory.py --json bench/results/fsdp_memory.json   # about 6 minutes on 2 cores

A randomly initialised model of GPT-2 small's shape (124M parameters, the real 50257-token
vocabulary) runs the gpt2-small recipe's sparsify stage for a few steps with the README's offline
overrides, launched as a user launches it: `accelerate launch --multi_gpu` (DDP: every process holds
the whole model, teacher, gradients and Adam moments) and `accelerate launch --config_file
configs/fsdp2.yaml` (each process holds its rows of all of them). Both on the CPU over gloo, one
thread per process. Per process: the kernel's peak resident set (ru_maxrss) over the whole run,
loading and the final save included, and the same before the run (the imports), whose difference is
what the run itself added. The two runs' final weights are compared too.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))


def worker(report_dir: Path, argv: list[str]) -> int:
    """Run under `accelerate launch`: the command line, its training loop's phases measured, then this
    process's peaks to a file."""
    import torch  # noqa: F401  (the imports count as the baseline)
    from bench_full_size import Probe, peak_rss

    from extract.run import main

    probe = Probe(cuda=False)
    before = peak_rss() / 2**20
    code = main(argv, phase=probe.phase)  # the training loop's phases, through its hook
    probe.running = False
    rank = os.environ.get("RANK", "0")
    phases = {name: round(peak / 2**20) for name, peak in sorted(probe.peak.items(), key=lambda kv: -kv[1])}
    (report_dir / f"rank-{rank}.json").write_text(json.dumps({"peak_rss_mib": peak_rss() / 2**20,
                                                             "before_run_mib": before,
                                                             "anon_peak_mib_by_phase": phases}))
    return code


def measure(mode: str, model_dir: Path, out: Path, steps: int, mmap_threshold: int) -> dict:
    from bench_full_size import offline_overrides
    from bench_sharded_projection import free_port

    launch = {"ddp": ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"],
              "fsdp2": ["--config_file", str(ROOT / "configs" / "fsdp2.yaml")]}[mode]
    report_dir = out / f"{mode}-peaks"
    report_dir.mkdir(parents=True)
    overrides = offline_overrides(model_dir, out / mode, steps, batch_size=1, heldout_blocks=4,
                                  compile_model=False, checkpointing=False)
    overrides += ["train.gradient_accumulation_steps=1", "train.mixed_precision=no",
                  f"train.checkpoint_every={max(1, steps - 1)}"]  # one sharded checkpoint is written
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_processes", "2",
               "--mixed_precision", "no", "--main_process_port", str(free_port()), __file__, "--worker",
               str(report_dir), "--recipe", "gpt2-small", "--stage", "sparsify", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if mmap_threshold:  # glibc otherwise keeps freed blocks, and the resident set shows old peaks
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    peaks = [json.loads((report_dir / f"rank-{r}.json").read_text()) for r in range(2)]
    log = [json.loads(line) for line in (out / mode / "train_log.jsonl").read_text().splitlines()]
    return {"per_process": peaks, "max_peak_rss_mib": max(p["peak_rss_mib"] for p in peaks),
            "max_added_mib": max(p["peak_rss_mib"] - p["before_run_mib"] for p in peaks),
            "heldout_loss": log[-1]["heldout_loss"], "tokens_per_s_last": log[-1]["tokens_per_s"]}


def main() -> None:
    if "--worker" in sys.argv:
        at = sys.argv.index("--worker")
        raise SystemExit(worker(Path(sys.argv[at + 1]), sys.argv[at + 2:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--malloc-mmap-threshold", type=int, default=131072,
                        help="glibc's MALLOC_MMAP_THRESHOLD_ for the runs (0: glibc's default, which keeps "
                             "freed memory; bench/README.md)")
    args = parser.parse_args()

    import torch
    from bench_full_size import build_model
    from default_runs import machine
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        params = build_model("gpt2-small", tmp / "model")
        results = {mode: measure(mode, tmp / "model", tmp, args.steps, args.malloc_mmap_threshold)
                   for mode in ("ddp", "fsdp2")}
        a, b = (load_file(tmp / mode / "model" / "model.safetensors") for mode in ("ddp", "fsdp2"))
        same_pattern = a.keys() == b.keys() and all(torch.equal(a[k] != 0, b[k] != 0) for k in a)
        max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    record = {"benchmark": "fsdp_memory", "command": "python bench/bench_fsdp_memory.py", "machine": machine(),
              "model": "GPT-2 small shape, random init", "parameters": params, "processes": 2, "steps": args.steps,
              "batch": "1 x 256 tokens per process",
              "malloc_mmap_threshold": args.malloc_mmap_threshold or "glibc default", "results": results,
              "final_weights": {"same_nonzero_pattern": same_pattern, "max_abs_difference": max_diff},
              "fsdp2_over_ddp_peak": results["fsdp2"]["max_peak_rss_mib"] / results["ddp"]["max_peak_rss_mib"],
              "fsdp2_over_ddp_added": results["fsdp2"]["max_added_mib"] / results["ddp"]["max_added_mib"]}
    text = json.dumps(record, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
