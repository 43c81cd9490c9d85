"""Draw several training runs on one picture (held-out loss and density against step).

    python scripts/compare_runs.py log=outputs/run-a cubic=outputs/run-b --out runs.png

Each argument is LABEL=OUTPUT_DIR, a directory holding a run's train_log.jsonl.
"""
import argparse
from pathlib import Path

from extract.paths import TRAIN_LOG_FILE
from extract.plots import plot_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=OUTPUT_DIR")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    logs = {}
    for item in args.runs:
        label, sep, path = item.partition("=")
        if not sep or not (Path(path) / TRAIN_LOG_FILE).is_file():
            parser.error(f"{item!r}: expected LABEL=OUTPUT_DIR with a {TRAIN_LOG_FILE} in it")
        logs[label] = Path(path) / TRAIN_LOG_FILE
    plot_runs(logs, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
