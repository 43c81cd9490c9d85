"""The sharded projection against gather-then-project, in two gloo processes, on GPT-2 small's tensors.

    python bench/bench_sharded_projection.py --json bench/results/sharded_projection.json

Each process holds its FSDP share of a tensor's rows (dim 0). "sharded" runs
`extract.sharded.sharded_projection_mask` on it; "gather" all-gathers the whole tensor, runs the
single-process `projection_mask` and keeps its own rows (what a naive FSDP projection does). Both give
the same mask (checked here too). Per tensor and method: the median time of 5 runs, the most any
process took, and the peak memory above what the process held before (ru_maxrss, so each method runs
in fresh processes). One thread per process, as two processes share two cores.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_runs import machine  # noqa: E402

WORLD = 2
DENSITY, MIN_PER_UNIT = 1 / 32, 4
# GPT-2 small: (name, rows, columns, unit axis), Conv1D weights stored (in, out)
TENSORS = [("wte (embedding)", 50257, 768, None), ("attn.c_attn", 768, 2304, 1), ("attn.c_proj", 768, 768, 0),
           ("mlp.c_fc", 768, 3072, 1), ("mlp.c_proj", 3072, 768, 0)]


def _rows(rows: int, rank: int) -> slice:
    chunk = math.ceil(rows / WORLD)
    return slice(min(rows, rank * chunk), min(rows, (rank + 1) * chunk))


def _worker(rank: int, port: int, method: str, spec: tuple, results) -> None:
    from extract.projection import kept_count, projection_mask
    from extract.sharded import sharded_projection_mask

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    _, rows, columns, unit_axis = spec
    # only this process's rows ever exist here, so the peak below is the method's own
    mine = _rows(rows, rank)
    shard = torch.randn(mine.stop - mine.start, columns, generator=torch.Generator().manual_seed(rank))
    k = kept_count(rows * columns, DENSITY)
    chunk = math.ceil(rows / WORLD)

    def gather_then_project() -> torch.Tensor:
        padded = torch.zeros(chunk, columns)
        padded[: shard.shape[0]] = shard
        parts = [torch.empty_like(padded) for _ in range(WORLD)]
        dist.all_gather(parts, padded)
        whole = torch.cat([p[: _rows(rows, r).stop - _rows(rows, r).start] for r, p in enumerate(parts)])
        return projection_mask(whole, k, unit_axis, MIN_PER_UNIT)[_rows(rows, rank)]

    def sharded() -> torch.Tensor:
        return sharded_projection_mask(shard, k, unit_axis, MIN_PER_UNIT)

    run = sharded if method == "sharded" else gather_then_project
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mask = run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    times = []
    for _ in range(5):
        dist.barrier()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    other = gather_then_project() if method == "sharded" else sharded()
    results.put({"rank": rank, "seconds": statistics.median(times), "peak_mib": peak / 1024,
                 "same_mask": bool(torch.equal(mask, other)), "kept": int(mask.sum())})
    dist.barrier()  # neither process closes the group while the other is still in a collective
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(method: str, spec: tuple) -> dict:
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_worker, args=(free_port(), method, spec, results), nprocs=WORLD, start_method="spawn")
    ranks = sorted((results.get() for _ in range(WORLD)), key=lambda r: r["rank"])
    assert all(r["same_mask"] for r in ranks), f"{spec[0]}: the two methods' masks differ"
    return {"seconds": max(r["seconds"] for r in ranks), "peak_mib": max(r["peak_mib"] for r in ranks),
            "kept": sum(r["kept"] for r in ranks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for spec in TENSORS:
        row = {"tensor": spec[0], "shape": [spec[1], spec[2]], "unit_axis": spec[3],
               **{method: measure(method, spec) for method in ("sharded", "gather")}}
        rows.append(row)
        print(f"{row['tensor']:>16} {row['shape']}: sharded {row['sharded']['seconds'] * 1e3:8.1f} ms "
              f"{row['sharded']['peak_mib']:7.1f} MiB | gather {row['gather']['seconds'] * 1e3:8.1f} ms "
              f"{row['gather']['peak_mib']:7.1f} MiB", flush=True)
    result = {"command": "python bench/bench_sharded_projection.py " + " ".join(sys.argv[1:]), **machine(),
              "processes": WORLD, "density": DENSITY, "min_per_unit": MIN_PER_UNIT, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
