"""Score a model on every built-in task's test split: full loss, accuracy and last-tokens loss.

    python scripts/score_tasks.py [--model PATH] [--pairs 100] [--local-tokens 4]

The same figures the prune stage reports as `full_loss`, `full_accuracy` and `short_range_loss`, for
every task (pruned or not), as a markdown table (docs/tasks.md).
"""
import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from extract.models import load_model, load_tokenizer  # noqa: E402
from extract.recipe import ModelConfig  # noqa: E402
from extract.tasks.builtin import TASKS, builtin_task  # noqa: E402
from extract.tasks.examples import last_tokens, two_way_scores  # noqa: E402

TARGET = 0.15


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="model directory or Hub id (default: the embedded model)")
    parser.add_argument("--pairs", type=int, default=100, help="test pairs per task (the recipe default)")
    parser.add_argument("--short-range-tokens", type=int, default=4)
    args = parser.parse_args()
    cfg = ModelConfig(name_or_path=args.model)
    model, tokenizer = load_model(cfg).eval(), load_tokenizer(cfg)
    print("| task | test loss | accuracy | short-range loss | kind |\n| --- | --- | --- | --- | --- |")
    for name in TASKS:
        test = builtin_task(name, tokenizer, "test", args.pairs, max_len=model.config.max_position_embeddings)
        full = two_way_scores(model, test)
        short = two_way_scores(model, last_tokens(test, args.short_range_tokens))["loss"]
        kind = "not solved" if full["loss"] > TARGET else "short-range" if short <= TARGET else "context"
        print(f"| `{name}` | {full['loss']:.3f} | {full['accuracy']:.2f} | {short:.3f} | {kind} |")


if __name__ == "__main__":
    main()
