"""Achieved floating-point rate of the LSTM optimizer's update vs the machine's matmul rate.

    python experiments/benchmarks/bench_flops.py [--device cpu] [--quick] [--out DIR]

FLOPs of one update, counted analytically from the matmuls (a multiply-add = 2 FLOPs) for
n coordinates and hidden size H (inputs: 2 preprocessed gradient features)::

    layer 0 gates: [x, h0] (2 + H) x 4H     ->  8 H (H + 2) per coordinate
    layer 1 gates: [h0, h1] (2H) x 4H       -> 16 H^2       per coordinate
    output layer:  H x 1                    ->  2 H         per coordinate
    total                                   -> (24 H^2 + 18 H) n   (9,960 n for H = 20)

The elementwise work (preprocessing, gate nonlinearities, state updates: ~30 H per
coordinate) is not counted: the rate is that of the matmul work only, a lower bound of
the true rate. The update is timed under ``no_grad`` (evaluation), and with the graph
kept for a differentiable unroll (forward only). Reference: ``torch.mm`` of two square
float32 matrices (largest rate over a few sizes). Medians of interleaved rounds.
"""
from __future__ import annotations

import statistics
import time

import torch

from learned_opt.optimizers import LSTMOptimizer

from common import machine_line, parse_args, parser, sync, write_table


def timed(fn, rounds: int, repeats: int, device: torch.device) -> float:
    fn()
    sync(device)
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync(device)
        samples.append((time.perf_counter() - t0) / repeats)
    return statistics.median(samples)


def lstm_flops(n: int, hidden: int) -> int:
    return (24 * hidden * hidden + 18 * hidden) * n


def main() -> None:
    ap = parser(__doc__, rounds_default=7, quick_help="small sizes, two rounds: a smoke run")
    ap.add_argument("--hidden", type=int, default=20)
    args, device = parse_args(ap, quick={"rounds": 2})
    mm_sizes = [256, 512] if args.quick else [1024, 2048, 4096]
    coords = [15_910, 100_000] if args.quick else [15_910, 254_560, 1_000_000]
    # 15,910 = the L2L MNIST MLP 784-20-10; 254,560 = 16 of them (a population)

    mm_rate = 0.0
    mm_rows = []
    for n in mm_sizes:
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        t = timed(lambda: torch.mm(a, b), args.rounds, 1 if n >= 2048 and device.type == "cpu" else 3, device)
        rate = 2 * n ** 3 / t
        mm_rows.append((n, t, rate))
        mm_rate = max(mm_rate, rate)

    torch.manual_seed(0)
    rule = LSTMOptimizer(hidden_size=args.hidden).to(device)
    lines = [f"{machine_line(device)} LSTM optimizer H = {args.hidden}: "
             f"{lstm_flops(1, args.hidden)} matmul FLOPs per coordinate per update; median of {args.rounds} rounds.\n",
             "| reference | size | time (ms) | GFLOP/s |", "|---|---|---|---|"]
    lines += [f"| torch.mm float32 | {n} x {n} | {t * 1e3:.2f} | {r / 1e9:.1f} |" for n, t, r in mm_rows]
    lines += ["", "| LSTM update | coordinates | time (ms) | GFLOP/s (matmuls) | % of best mm rate |",
              "|---|---|---|---|---|"]
    for n in coords:
        params = {"w": torch.randn(n, device=device)}
        grads = {"w": torch.randn(n, device=device) * 1e-3}
        state = rule.init(params)

        def no_grad():
            with torch.no_grad():
                rule.update(grads, state, params)

        def with_graph():
            rule.update(grads, state, params)

        for label, fn in (("no_grad", no_grad), ("with graph (fwd)", with_graph)):
            t = timed(fn, args.rounds, 3 if n < 500_000 else 1, device)
            rate = lstm_flops(n, args.hidden) / t
            lines.append(f"| {label} | {n:,} | {t * 1e3:.2f} | {rate / 1e9:.2f} | {100 * rate / mm_rate:.1f}% |")
    print("\n".join(lines))
    write_table(args.out, lines)


if __name__ == "__main__":
    main()
