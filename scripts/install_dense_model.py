"""Copy a finished `dense-pretrain-tiny` run into extract/assets as the embedded dense model.

    python extract/run.py --recipe dense-pretrain-tiny
    python scripts/install_dense_model.py outputs/dense-pretrain-tiny

Copies the model folder with its training log, report and plot, and writes PROVENANCE.md from the
run's own report.json.
"""
import argparse
import json
import shutil
from pathlib import Path

from extract.paths import DENSE_MODEL_DIR

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "trainer_state.json", "README.md")
RUN_FILES = ("recipe.yaml", "train_log.jsonl", "report.json", "training.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    run_report = json.loads((args.run_dir / "report.json").read_text())
    trained = run_report["trained"]
    if DENSE_MODEL_DIR.exists():
        shutil.rmtree(DENSE_MODEL_DIR)
    DENSE_MODEL_DIR.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy(args.run_dir / "model" / name, DENSE_MODEL_DIR / name)
    for name in RUN_FILES:
        shutil.copy(args.run_dir / name, DENSE_MODEL_DIR / name)
    (DENSE_MODEL_DIR / "PROVENANCE.md").write_text(
        "Dense GPT2LMHeadModel (4 layers, d_model 256, 16 heads of 16, context 256, vocabulary 2048),\n"
        "trained from scratch on the training split of extract/assets/corpus by\n"
        "`python extract/run.py --recipe dense-pretrain-tiny` (recipe.yaml here is the resolved recipe),\n"
        "installed by `python scripts/install_dense_model.py outputs/dense-pretrain-tiny`.\n\n"
        f"- {trained['tokens']:,} tokens, {trained['wall_seconds'] / 60:.1f} min wall time on 2 CPU cores\n"
        f"- held-out loss {trained['heldout_loss']:.4f} nats/token (report.json)\n"
        f"- closing-quote accuracy on held-out code {trained['quote_accuracy']:.3f}, two-way loss "
        f"{trained['quote_loss']:.4f}, over {run_report['quote_examples']} balanced examples\n"
        "- train_log.jsonl and training.png: the training curves\n\n"
        "Trained on text under the PSF licence (../corpus/LICENSE-PSF.txt).\n"
    )
    print(f"installed {args.run_dir} into {DENSE_MODEL_DIR}")


if __name__ == "__main__":
    main()
