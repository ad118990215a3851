"""python -m results: rebuild results/tables, results/figures and results/README.md."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdcl_common import KdclError

from .build import RESULTS, build, writable_out, write_error

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
    try:
        return _main(args)
    except KdclError as e:
        print(f"python -m results: error: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    for path in args.records or ():
        if not path.is_file() and not path.is_dir():
            what = "is neither a file nor a folder" if path.exists() else "does not exist"
            raise KdclError(f"--records {path} {what}: give a records folder (e.g. "
                            f"results/records) or a record file")
    writable_out(args.out)
    # the default, results/records: no records yet is not an error (nothing run yet)
    sources = args.records or [RESULTS / "records"]
    try:
        return build(sources, args.out, draw=not args.no_figures)
    except OSError as e:
        if (error := write_error(e, args.out)) is None:
            raise
        raise error from None


if __name__ == "__main__":
    sys.exit(main())
