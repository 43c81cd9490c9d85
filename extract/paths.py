"""Where the shipped assets and recipes live, so no module hard-codes a relative path."""
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
CORPUS_FILE = ASSETS_DIR / "corpus" / "python-stdlib.jsonl.xz"
TOKENIZER_DIR = ASSETS_DIR / "tokenizer"
DENSE_MODEL_DIR = ASSETS_DIR / "dense-tiny-python"
RECIPES_DIR = PACKAGE_DIR.parent / "recipes"
