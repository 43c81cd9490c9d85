"""Training throughput of the default model shape (4 layers, d=256, vocab 2048, context 256) on this
machine: float32 vs bf16 autocast, eager vs torch.compile, at a few batch sizes.

    python bench/bench_train_step.py [--json bench/results/train_step.json]

Run it alone: two torch jobs side by side on 2 cores slow each other several-fold.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from extract.train import native_cpu_bf16


def tokens_per_second(model, batch_size, bf16, steps=6):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 2048, (batch_size, 256))
    samples = []
    for step in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, 2048), ids[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step >= 2:  # skip warm-up and compilation
            samples.append(time.perf_counter() - start)
    return batch_size * 256 / statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json")
    args = parser.parse_args()
    config = GPT2Config(vocab_size=2048, n_layer=4, n_embd=256, n_head=16, n_positions=256, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native CPU bf16: {native_cpu_bf16()}")
    results = {}
    for label, compiled, bf16, batch in [("eager fp32", False, False, 16), ("eager bf16-autocast", False, True, 16),
                                         ("eager fp32", False, False, 32), ("compiled fp32", True, False, 16),
                                         ("compiled fp32", True, False, 32)]:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
        rate = tokens_per_second(torch.compile(model) if compiled else model, batch, bf16)
        key = f"{label} batch={batch}"
        results[key] = rate
        print(f"{key:34s} {rate:8,.0f} tokens/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
