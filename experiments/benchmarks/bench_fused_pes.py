"""What the fused celo step does to PES meta-training throughput, measured.

    python experiments/benchmarks/bench_fused_pes.py [--threads 1] [--rounds 3] [--trajectories 32] [--quick] [--out DIR]

PES on the digits MLP family (as ``bench_estimators.py``: 64-20-10 sigmoid, batch 128, T = 100, K = 20,
N trajectories as N / 8 tasks x 2 x 4 pairs), the rule ``learned_opt.load("celo")`` with its
meta-parameters trainable. The estimator's members run the rule's ``update_members`` under ``no_grad``,
which takes ``fused_celo_members`` (every member's update in one C kernel call) unless
``LEARNED_OPT_FUSED=off``. Two estimators from the same start take meta-steps in turn, one with the fused
step and one without, so machine noise hits both alike; the table gives the median meta-step of each.
"""
from __future__ import annotations

import os
import statistics
import time

import torch

import learned_opt
from learned_opt.meta import PES
from learned_opt.tasks import make_family

from common import emit, machine_line, parse_args, parser, write_table


def main() -> None:
    ap = parser(__doc__, rounds_default=3, quick_help="T = 8, K = 4, 8 trajectories: a smoke run")
    ap.add_argument("--trajectories", type=int, default=32, help="N: inner trajectories per meta-step (multiple of 8)")
    ap.add_argument("--horizon", type=int, default=100)
    ap.add_argument("--truncation", type=int, default=20)
    ap.set_defaults(threads=1, device="cpu")
    args, device = parse_args(ap, quick={"horizon": 8, "truncation": 4, "trajectories": 8, "rounds": 1})
    if device.type != "cpu":
        raise SystemExit("bench_fused_pes measures the C kernel: --device cpu")
    N, T, K = args.trajectories, args.horizon, args.truncation
    family = make_family("mlp_family", datasets=["digits"], widths=[20], depths=[1], activations=["sigmoid"],
                         batch_size=128, device=device)
    rules = {mode: learned_opt.load("celo").requires_grad_(True) for mode in ("on", "off")}
    ests = {mode: PES(family, num_tasks=N // 8, population=N // 8, generator=torch.Generator().manual_seed(0),
                      std=0.01, pairs=4, horizon=T, truncation=K, device=device, meta_loss="log_mean", stagger=True)
            for mode in ("on", "off")}
    times = {"on": [], "off": []}
    for r in range(args.rounds + 1):   # the first round warms up (the kernel is built on first use)
        for mode in ("on", "off"):
            if mode == "off":
                os.environ["LEARNED_OPT_FUSED"] = "off"
            try:
                t0 = time.perf_counter()
                ests[mode].estimate(rules[mode])
                if r:
                    times[mode].append(time.perf_counter() - t0)
            finally:
                os.environ.pop("LEARNED_OPT_FUSED", None)
    step = {mode: statistics.median(v) for mode, v in times.items()}
    lines: list[str] = []
    emit(lines, f"{machine_line(device)} PES on the digits MLP family, T = {T}, K = {K}, {N} trajectories; rule: "
                f"celo (core + radial + hypergradient). Median of {args.rounds} meta-steps each, interleaved.\n")
    emit(lines, "| members' rule update | PES meta-step (ms) | inner steps / s | throughput |")
    emit(lines, "|---|---|---|---|")
    emit(lines, f"| update_members, differentiable path (LEARNED_OPT_FUSED=off) | {step['off'] * 1e3:.0f} "
                f"| {N * K / step['off']:.0f} | 1.00x |")
    emit(lines, f"| update_members, fused (one C kernel call for all members) | {step['on'] * 1e3:.0f} "
                f"| {N * K / step['on']:.0f} | {step['off'] / step['on']:.2f}x |")
    write_table(args.out, lines)


if __name__ == "__main__":
    main()
