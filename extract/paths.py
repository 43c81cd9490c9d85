"""Where the shipped assets and recipes live, and the names in an output folder, so no module hard-codes a path."""
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
CORPUS_FILE = ASSETS_DIR / "corpus" / "python-stdlib.jsonl.xz"
TOKENIZER_DIR = ASSETS_DIR / "tokenizer"
DENSE_MODEL_DIR = ASSETS_DIR / "dense-tiny-python"
RECIPES_DIR = PACKAGE_DIR.parent / "recipes"

# OUTPUT_DIR/model: the sparse model, and OUTPUT_DIR/circuits: the prune stage's results
MODEL_DIRNAME = "model"
CIRCUITS_DIRNAME = "circuits"
