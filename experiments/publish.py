"""Copy a run's table and figures into ``results/<name>/`` and refresh the report block that shows them.

    python experiments/publish.py compare_baselines runs/compare_baselines/<time> [--command "..."]

A report (``docs/**/*.md``, or the README) holds a block per result between ``<!-- results:<name> -->``
and ``<!-- /results:<name> -->``; this rewrites that block, wherever it is, from the run's files
(``learned_opt.evaluation.publish``), so no number in a report is typed by hand.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from learned_opt.entry import input_errors
from learned_opt.evaluation.publish import publish

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--command", help="the command that made the run (shown above the block)")
    ap.add_argument("--figures", nargs="*", default=["*.png"], help="globs of figures to copy")
    ap.add_argument("--tables", nargs="*", default=["table.md"], help="tables to copy and inline")
    ap.add_argument("--sections", nargs="*", help="inline only the sections of the tables whose headings contain these")
    ap.add_argument("--wall", help="how long the command took, e.g. '6 min'")
    args = ap.parse_args()
    with input_errors("publish.py"):
        print(publish(args.name, args.run_dir, args.command, args.figures, args.tables, args.sections, args.wall,
                      root=ROOT))


if __name__ == "__main__":
    main()
