"""Derive a learned optimizer from a checkpoint: change some of its constructor options and move some
scalar meta-parameters by a constant, keeping every other weight. How hand-chosen settings are put on
top of a meta-trained rule, reproducibly (the new file records its source, the source's hash and the
changes under ``derived_from``).

    python experiments/derive_rule.py celo_hd out.pt --set hypergradient_shrink=2 --shift log_scale=1

``--set KEY=VALUE`` (a constructor option; VALUE read as JSON, else as a string) and ``--shift
NAME=DELTA`` (a scalar meta-parameter, e.g. ``log_scale``: +1 makes every step e times larger) may repeat.
"""
from __future__ import annotations

import argparse
import json
import sys

from learned_opt.entry import add_threads, input_errors, set_threads
from learned_opt.meta.checkpoint import derive_checkpoint, load_checkpoint


def _pairs(items: list[str], what: str, parse) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what} {item!r}: expected KEY=VALUE")
        out[key] = parse(key, value)
    return out


def _json_or_str(key: str, value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value


def _number(key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"--shift {key}={value!r}: the shift must be a number") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="a checkpoint file or the short name of a shipped optimizer")
    ap.add_argument("dest", help="where to write the derived checkpoint")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a constructor option")
    ap.add_argument("--shift", action="append", default=[], metavar="NAME=DELTA", help="add DELTA to a scalar meta-parameter")
    add_threads(ap)
    args = ap.parse_args(argv)
    set_config = _pairs(args.set, "--set", _json_or_str)
    shift = _pairs(args.shift, "--shift", _number)
    with input_errors("derive_rule.py"):
        set_threads(args.threads)
        path = derive_checkpoint(args.source, args.dest, set_config, shift)
    print(f"wrote {path}: {load_checkpoint(path)['rule']['config']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
