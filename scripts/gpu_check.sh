#!/usr/bin/env bash
# What needs a GPU and has never run on one, in at most about 8 minutes, from a checkout on a GPU machine
# with the project installed (`pip install -e ".[test]"`, torch with CUDA):
#
#     bash scripts/gpu_check.sh [SUMMARY_DIR]     # default: gpu-check/
#
# 1. the GPU tests (`pytest -m gpu`: bf16/fp16 training, the prune stage on CUDA, devices agree);
# 2. the gpt2-small shape for 300 steps in bf16, with its peak memory, and one task pruned on the GPU
#    (bench/bench_full_size.py: random weights of the checkpoint's shape, offline);
# 3. FSDP2 over every GPU present (NCCL), on the tiny default for 20 steps (skipped with one GPU).
# Each part has its own time limit; a part that fails is recorded and the next one still runs.
# SUMMARY_DIR/summary.json says what passed, with the card, the times and the peaks.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
card=$(python -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')")
echo "card: $card ($gpus GPUs)"

part() {  # part NAME SECONDS COMMAND...: run with a time limit, keep its log and its exit status
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local status=$?
    echo "{\"part\": \"$name\", \"exit\": $status, \"seconds\": $((SECONDS - start))}" >>"$out/parts.jsonl"
    echo "$name: exit $status after $((SECONDS - start)) s (log: $out/$name.log)"
}

rm -f "$out/parts.jsonl"
part gpu-tests 150 python -m pytest -m gpu -p no:xdist -q
part gpt2-small-bf16 210 python bench/bench_full_size.py --recipe gpt2-small --steps 300 --batch-size 8 \
    --mask-steps 20 --json "$out/gpt2-small-bf16.json"
if [ "$gpus" -ge 2 ]; then
    part fsdp2 120 accelerate launch --config_file configs/fsdp2.yaml --num_processes "$gpus" extract/run.py \
        --stage sparsify train.steps=20 train.checkpoint_every=10 "output_dir=$out/fsdp2-run"
else
    echo '{"part": "fsdp2", "exit": null, "seconds": 0, "skipped": "one GPU"}' >>"$out/parts.jsonl"
fi

python - "$out" "$card" "$gpus" <<'EOF'
import json, sys
from pathlib import Path

out, card, gpus = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
parts = [json.loads(line) for line in (out / "parts.jsonl").read_text().splitlines()]
summary = {"card": card, "gpus": gpus, "parts": parts,
           "passed": all(p["exit"] in (0, None) for p in parts)}
bench = out / "gpt2-small-bf16.json"
if bench.is_file():
    summary["gpt2-small-bf16"] = json.loads(bench.read_text())
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps({k: v for k, v in summary.items() if k != "gpt2-small-bf16"}, indent=2))
EOF
