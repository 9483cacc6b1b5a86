"""Derive a learned optimizer from a rule file: change some of its options (the core's, or a controller's,
adding the controller if the rule has none), move some scalar meta-parameters by a constant, reset some
meta-parameters to their initial values, keeping every other weight. How hand-chosen settings are put on
top of a meta-trained rule, reproducibly (the new file records its source, the source's hash and the
changes under ``derived_from``).

    python experiments/derive_rule.py celo_hd out.pt --set hypergradient.shrink=2 --shift core.log_scale=1
    python experiments/derive_rule.py celo init.pt --reset core.layers --reset core.skip --seed 0

``--set KEY=VALUE`` (``<controller>.<option>`` or ``core.<option>``; VALUE read as JSON, else as a string),
``--shift NAME=DELTA`` (a scalar meta-parameter, e.g. ``core.log_scale``: +1 makes every step e times larger)
and ``--reset PREFIX`` (meta-parameters whose names start with PREFIX take the values of the rule built afresh
with ``torch.manual_seed(--seed)``) may repeat. Files of the single-class rule also take its own option names
(``--set radial_gain=0.1``), as they did when they were made.
"""
from __future__ import annotations

import argparse
import json
import sys

from learned_opt.entry import add_threads, input_errors, set_threads
from learned_opt.optimizers.files import derive_checkpoint, load_checkpoint


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
    ap.add_argument("--reset", action="append", default=[], metavar="PREFIX",
                    help="meta-parameters starting with PREFIX take their initial values")
    ap.add_argument("--seed", type=int, default=0, help="torch seed of the initial values (--reset)")
    add_threads(ap)
    args = ap.parse_args(argv)
    set_config = _pairs(args.set, "--set", _json_or_str)
    shift = _pairs(args.shift, "--shift", _number)
    with input_errors("derive_rule.py"):
        set_threads(args.threads)
        path = derive_checkpoint(args.source, args.dest, set_config, shift, args.reset, args.seed)
    print(f"wrote {path}: {load_checkpoint(path)['rule']['config']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
