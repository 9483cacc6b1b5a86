"""Pool the across-tasks scores of several finished evaluations (e.g. hold-out sets) into one table.

    python experiments/pool.py OUT_DIR holdout=runs/holdout/main holdout2=runs/holdout2/main [--threshold 1.2]

Writes ``OUT_DIR/summary.md`` and ``summary.json`` (``learned_opt.evaluation.pool``); publish the table
with ``experiments/publish.py NAME OUT_DIR --tables summary.md --figures``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from learned_opt.entry import add_threads, input_errors, set_threads
from learned_opt.evaluation.pool import pool, pooled_markdown, write_pooled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR (or RUN_DIR, labelled by its parent folder's name)")
    ap.add_argument("--threshold", type=float, default=1.2, help="count the tasks scoring above this (1.2)")
    add_threads(ap)
    args = ap.parse_args()
    runs = []
    for item in args.runs:
        label, sep, path = item.partition("=")
        runs.append((label, path) if sep else (Path(item).resolve().parent.name, item))
    with input_errors("pool.py"):
        set_threads(args.threads)
        pooled = pool(runs, args.threshold)
    write_pooled(args.out_dir, pooled)
    print(pooled_markdown(pooled))
    print(f"\nwrote {args.out_dir / 'summary.md'} and summary.json")


if __name__ == "__main__":
    main()
