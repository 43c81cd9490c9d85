"""Train the shipped 2048-token byte-level BPE on the training split of the shipped corpus.

    python scripts/train_tokenizer.py --out extract/assets/tokenizer

Only training-split files are used, so held-out text never shaped the vocabulary.
"""
import argparse
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2TokenizerFast

from extract.data import EMBEDDED_CORPUS, load_text_splits

EOS = "<|endoftext|>"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--vocab-size", type=int, default=2048)
    args = parser.parse_args()
    splits = load_text_splits(EMBEDDED_CORPUS)
    texts = splits["train"]["text"]
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(texts, vocab_size=args.vocab_size, min_frequency=2, special_tokens=[EOS],
                            show_progress=True, length=len(texts))
    # Wrap in the GPT-2 tokenizer class so AutoTokenizer.from_pretrained(dir) needs no project code.
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS,
                                  unk_token=EOS, pad_token=EOS, model_max_length=256)
    tokenizer.save_pretrained(args.out)
    (args.out / "PROVENANCE.md").write_text(
        f"Byte-level BPE, {len(tokenizer)} tokens, trained on the training split of\n"
        "extract/assets/corpus by `python scripts/train_tokenizer.py --out extract/assets/tokenizer`.\n"
    )
    print(f"saved {len(tokenizer)}-token tokenizer to {args.out}")


if __name__ == "__main__":
    main()
