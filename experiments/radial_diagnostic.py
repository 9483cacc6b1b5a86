"""Per tensor, how a rule's steps line up with Adam's direction and with the tensor itself (> 0: growth).

    python experiments/radial_diagnostic.py --rule celo_backoff --steps 400 \
        --task '{"name": "regression", "dataset": "mnist1d", "hidden_sizes": [48], "activation": "tanh", "outputs": 4, "batch_size": 32}'

``--rule``: a checkpoint file or a shipped optimizer's short name, or ``adam`` (torch-equivalent Adam at
``--lr``) as the reference; ``--task``: a suite entry as JSON (``learned_opt.evaluation.suite.build_task``).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

import baselines as B
import learned_opt
from learned_opt.entry import add_threads, input_errors, set_threads
from learned_opt.evaluation.suite import build_task
from learned_opt.lecture.directions import direction_stats

DEFAULT_TASK = '{"name": "regression", "dataset": "mnist1d", "hidden_sizes": [48], "activation": "tanh", "outputs": 4, "batch_size": 32}'


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rule", default="celo_backoff")
    ap.add_argument("--task", default=DEFAULT_TASK, help="a suite entry as JSON")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=950)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam's lr with --rule adam")
    add_threads(ap)
    args = ap.parse_args(argv)
    with input_errors("radial_diagnostic.py"):
        set_threads(args.threads)
        spec = json.loads(args.task)
        task = build_task("--task", spec, torch.device("cpu"))
        rule = B.Adam(lr=args.lr) if args.rule == "adam" else learned_opt.load(args.rule)
        stats, mean_loss = direction_stats(rule, task, args.steps, args.seed)
    print(f"{args.rule} on {spec}, {args.steps} steps, seed {args.seed}: mean loss {mean_loss:.4g}")
    print("| tensor | cos(step, Adam's direction) | cos(step, w) (> 0: grows w) | cos(Adam's direction, w) |")
    print("|---|---|---|---|")
    for k, s in stats.items():
        print(f"| {k} | {s['cos_step_adam']:+.3f} | {s['cos_step_w']:+.3f} | {s['cos_adam_w']:+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
