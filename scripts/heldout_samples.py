"""A model's loss on several samples of a recipe's data: a check that the held-out split really is
held out (training blocks should score a little lower, not far lower) and how much the held-out
estimate depends on which blocks are taken.

    python scripts/heldout_samples.py                          # the embedded dense model
    python scripts/heldout_samples.py --model outputs/tiny-python/model
    python scripts/heldout_samples.py --recipe dense-pretrain-tiny --model extract/assets/dense-tiny-python

Prints the loss on the recipe's `data.heldout_blocks` held-out blocks (spread over the split), on
the split's first blocks (a few files), and on as many blocks spread over the training split.
"""
import argparse
import dataclasses

import torch

from extract.data import heldout_tensor, pack_blocks, prepare_data
from extract.evaluation import heldout_metrics
from extract.models import load_model, load_tokenizer
from extract.recipe import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="tiny-python")
    parser.add_argument("--model", default=None, help="model folder (default: the recipe's model)")
    args = parser.parse_args()
    recipe, _ = load_recipe(args.recipe)
    model_cfg = recipe.model
    if args.model is not None:  # a trained model, also for a pretraining recipe (no fresh init)
        model_cfg = dataclasses.replace(recipe.model, name_or_path=args.model, init_config=None)
    tokenizer = load_tokenizer(model_cfg)
    model = load_model(model_cfg, len(tokenizer))
    train_blocks, heldout, heldout_texts = prepare_data(recipe, tokenizer)
    n = len(heldout)
    first = pack_blocks(heldout_texts, tokenizer, recipe.data.block_size, recipe.data.text_column).select(range(n))
    samples = {f"held-out, {n} spread blocks (the recipe's)": heldout,
               f"held-out, first {n} blocks": torch.tensor(first["input_ids"]),
               f"training, {n} spread blocks": heldout_tensor(train_blocks, n)}
    for name, blocks in samples.items():
        print(f"{name}: {heldout_metrics(model, blocks)['loss']:.4f}")


if __name__ == "__main__":
    main()
