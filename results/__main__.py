"""python -m results: rebuild results/tables, results/figures and results/README.md."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .build import RESULTS, build

EXAMPLES = """examples:
  python -m results                                   # results/records/*.jsonl -> results/
  python -m results --no-figures                      # tables and README only
  python -m results --records runs/a.jsonl runs/b/ --out /tmp/report
"""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m results", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build the tables (Markdown, CSV, LaTeX), figures (PNG) and README of the "
                    "results from the result records. Malformed record lines are skipped with a "
                    "warning naming file:line; output folders are replaced whole.")
    parser.add_argument("--records", nargs="+", type=Path, default=[RESULTS / "records"],
                        metavar="PATH", help="JSONL files or folders of *.jsonl "
                        "(default: results/records)")
    parser.add_argument("--out", type=Path, default=RESULTS, metavar="DIR",
                        help="where tables/, figures/ and README.md go (default: results/)")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return build(args.records, args.out, draw=not args.no_figures)


if __name__ == "__main__":
    sys.exit(main())
