"""Time one optimizer step: RuleOptimizer(rule) against the same torch.optim optimizer, in one process.

    python experiments/benchmarks/bench_adapter_step.py [--repeats 200] [--device cpu] [--out DIR]

Prints a markdown table of median step times and ratios (ours / torch) for
SGD-momentum, RMSprop and Adam on (a) an MLP of ~1M parameters in a few large
tensors and (b) a model of 200 small tensors. Two torch references: its default
implementation on this device (single-tensor loops on CPU) and ``foreach=True``.
Measurements of the two optimizers are interleaved so that machine noise hits both.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import baselines as B

from common import emit, machine_line, step_models, write_table

CASES = {
    "sgd-momentum": (lambda: B.SGD(lr=1e-2, momentum=0.9),
                     lambda p, **kw: torch.optim.SGD(p, lr=1e-2, momentum=0.9, **kw)),
    "rmsprop": (lambda: B.RMSprop(lr=1e-3), lambda p, **kw: torch.optim.RMSprop(p, lr=1e-3, **kw)),
    "adam": (lambda: B.Adam(lr=1e-3), lambda p, **kw: torch.optim.Adam(p, lr=1e-3, **kw)),
}


def median_step_time(opt: torch.optim.Optimizer, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        opt.step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=200, help="steps timed per round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, help="also write the table to OUT/table.md")
    args = ap.parse_args()
    device = torch.device(args.device)
    lines = [f"{machine_line(device)} Median of {args.rounds} x {args.repeats} steps.\n",
             "| model | optimizer | ours (us) | torch default (us) | torch foreach (us) | ours/default | ours/foreach |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines))
    for mname, model in step_models().items():
        model = model.to(device)
        for oname, (ours, theirs) in CASES.items():
            copies = {k: [p.detach().clone().requires_grad_() for p in model.parameters()]
                      for k in ("ours", "default", "foreach")}
            for ps in copies.values():
                for p in ps:
                    p.grad = torch.randn_like(p) * 1e-3
            opts = {"ours": B.RuleOptimizer(copies["ours"], ours()),
                    "default": theirs(copies["default"]),
                    "foreach": theirs(copies["foreach"], foreach=True)}
            for opt in opts.values():  # warm-up (also allocates the state)
                median_step_time(opt, 5)
            samples: dict[str, list[float]] = {k: [] for k in opts}
            for _ in range(args.rounds):
                for k, opt in opts.items():
                    samples[k] += median_step_time(opt, args.repeats)
            med = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
            emit(lines, f"| {mname} | {oname} | {med['ours']:.0f} | {med['default']:.0f} | {med['foreach']:.0f} | "
                        f"{med['ours'] / med['default']:.2f} | {med['ours'] / med['foreach']:.2f} |")
    write_table(args.out, lines)


if __name__ == "__main__":
    main()
