"""Where the shipped assets and recipes live, and the names in an output folder, so no module hard-codes a path."""
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
CORPUS_FILE = ASSETS_DIR / "corpus" / "python-stdlib.jsonl.xz"
TOKENIZER_DIR = ASSETS_DIR / "tokenizer"
DENSE_MODEL_DIR = ASSETS_DIR / "dense-tiny-python"
# A checkout's recipes/ (beside the package) wins: a user edits recipes there. An installed wheel carries
# the same files inside the package, as extract/recipes (pyproject.toml maps the folder there).
CHECKOUT_RECIPES_DIR = PACKAGE_DIR.parent / "recipes"
RECIPES_DIR = CHECKOUT_RECIPES_DIR if CHECKOUT_RECIPES_DIR.is_dir() else PACKAGE_DIR / "recipes"

# OUTPUT_DIR/model: the sparse model, and OUTPUT_DIR/circuits: the prune stage's results
MODEL_DIRNAME = "model"
CIRCUITS_DIRNAME = "circuits"
CHECKPOINTS_DIRNAME = "checkpoints"  # resumable training states
TRAIN_LOG_FILE = "train_log.jsonl"  # one line per logged or evaluated step
