"""python -m results: rebuild results/tables, results/figures and results/README.md."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .build import RESULTS, build

EXAMPLES = """examples:
  python -m results                                   # results/records -> results/
  python -m results --no-figures                      # tables and README only
  python -m results --records /scratch/records old.jsonl --out /tmp/report
"""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m results", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build the tables (Markdown, CSV, LaTeX), figures (PNG) and README of the "
                    "results from the result records. Malformed record lines are skipped with a "
                    "warning naming file:line; output folders are replaced whole.")
    parser.add_argument("--records", nargs="+", type=Path, default=None, metavar="PATH",
                        help="records folders (searched for the stages' per-run record files "
                             "and older *.jsonl) or files; each must exist (default: "
                             "results/records, where the stages write them)")
    parser.add_argument("--out", type=Path, default=RESULTS, metavar="DIR",
                        help="where tables/, figures/ and README.md go (default: results/)")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.records is None:  # the default: no records yet is not an error (nothing run yet)
        return build([RESULTS / "records"], args.out, draw=not args.no_figures)
    for path in args.records:
        if not path.is_file() and not path.is_dir():
            what = "is neither a file nor a folder" if path.exists() else "does not exist"
            print(f"python -m results: error: --records {path} {what}: give a records folder "
                  "(e.g. results/records) or a record file", file=sys.stderr)
            return 2
    return build(args.records, args.out, draw=not args.no_figures)


if __name__ == "__main__":
    sys.exit(main())
