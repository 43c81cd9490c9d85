"""Build the shipped Python-code corpus snapshot from this interpreter's standard library.

Run once; the output is committed so every machine trains on the same bytes:

    python scripts/build_corpus.py --out extract/assets/corpus

Each record is {"path", "text"}; files are sorted by path and the held-out split is decided
later by a hash of the path (see extract/data.py), so it never depends on file order.
"""
import argparse
import json
import lzma
import shutil
import sys
import sysconfig
from pathlib import Path

MAX_FILE_BYTES = 400_000  # a few generated tables (unicode data, big test literals) teach nothing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts)
    args.out.mkdir(parents=True, exist_ok=True)
    kept = 0
    with lzma.open(args.out / "python-stdlib.jsonl.xz", "wt", encoding="utf-8", preset=9) as sink:
        for path in files:
            raw = path.read_bytes()
            if len(raw) > MAX_FILE_BYTES:
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue  # a handful of test files are deliberately mis-encoded
            sink.write(json.dumps({"path": str(path.relative_to(stdlib)), "text": text}) + "\n")
            kept += 1
    shutil.copy(stdlib / "LICENSE.txt", args.out / "LICENSE-PSF.txt")
    version = ".".join(map(str, sys.version_info[:3]))
    (args.out / "PROVENANCE.md").write_text(
        f"Source files (*.py) of the CPython {version} standard library, {kept} files, excluding\n"
        f"site-packages, files over {MAX_FILE_BYTES} bytes and files that are not valid UTF-8.\n"
        "Built by `python scripts/build_corpus.py --out extract/assets/corpus`.\n"
        "The text is Copyright (c) Python Software Foundation and distributed under the PSF licence\n"
        "(LICENSE-PSF.txt, copied from the same installation).\n"
    )
    print(f"kept {kept} of {len(files)} files")


if __name__ == "__main__":
    main()
