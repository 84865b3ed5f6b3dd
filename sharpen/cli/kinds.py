"""`sharpen kinds RUN_DIR`: pass@1 and pass@k of each method on each testbed problem kind (plain, trap, twice).

    sharpen kinds runs/testbed            # a table, beside the exact base values of the teacher process
    sharpen kinds runs/testbed --json     # the figures as JSON

Reads RUN_DIR/samples/*.jsonl only (sharpen.testbed.kinds.kind_figures).
"""

from __future__ import annotations

import json

from sharpen.testbed.kinds import format_kind_figures, kind_figures

from .args import PlainArgumentParser


def make_parser():
    parser = PlainArgumentParser(prog="sharpen kinds", description="pass@k of each method on each testbed problem kind.")
    parser.add_argument("run_dir", help="a testbed study's run directory (holding samples/)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    figures = kind_figures(args.run_dir)
    print(json.dumps(figures, indent=2) if args.json else format_kind_figures(figures))
    return 0
