"""Cost of a meta-training step relative to plain training of the same length.

    python experiments/benchmarks/bench_meta_step.py [--truncation 20] [--device cpu] [--quick] [--out DIR]

One meta-step: ``TruncatedBPTT.estimate`` on one task, i.e. a differentiable, second-order
unroll of K inner steps with the learned optimizer and the back-propagation of the meta-loss
into its meta-parameters. Reference: ``unroll`` of the same K steps on the same task with
SGD under ``no_grad`` (each inner step still runs the task's forward and backward, only the
update is not recorded). The ratio says how much dearer meta-training is than training.

Task: the L2L MLP 784-20-10 sigmoid on the bundled 5k MNIST, batch 128, float32 (``--quick``:
the 8x8 digits 64-20-10). Rules: the coordinatewise LSTM (2 x 20 units) and the per-parameter
MLP optimizer (32-32), both with second-order meta-gradients, and the LSTM first-order.
Medians of interleaved rounds in one process.
"""
from __future__ import annotations

from typing import Callable

import torch

import baselines as B
from learned_opt.meta.bptt import TruncatedBPTT
from learned_opt.optimizers import make_learned_rule
from learned_opt.tasks import SingleTaskFamily, make_task
from learned_opt.unroll import unroll

from common import interleaved, machine_line, parse_args, parser, write_table


def main() -> None:
    ap = parser(__doc__, rounds_default=7, quick_help="digits task, K = 3, two rounds: a smoke run")
    ap.add_argument("--truncation", type=int, default=20, help="K: inner steps per meta-step")
    args, device = parse_args(ap, quick={"truncation": 3, "rounds": 2})
    K = args.truncation
    task = make_task("mlp", dataset="digits" if args.quick else "mnist5k", hidden_sizes=[20], activation="sigmoid",
                     batch_size=128, device=device)
    params = task.init_params(torch.Generator(device=device).manual_seed(0))
    sgd = B.SGD(lr=0.1)
    gen = torch.Generator(device=device).manual_seed(1)

    def plain() -> None:
        with torch.no_grad():
            unroll(task, sgd, params, sgd.init(params), K, gen)

    def meta(name: str, first_order: bool = False) -> Callable[[], object]:
        torch.manual_seed(0)
        rule = make_learned_rule(name).to(device)
        est = TruncatedBPTT(SingleTaskFamily(task), horizon=10**9, truncation=K, num_tasks=1, device=device,
                            generator=torch.Generator().manual_seed(0), first_order=first_order,
                            meta_loss="log_mean")
        return lambda: est.estimate(rule)

    cases = {"SGD unroll (no_grad)": plain, "LSTM": meta("lstm"), "MLP optimizer": meta("mlp"),
             "LSTM, first order": meta("lstm", first_order=True)}
    med = interleaved(cases, args.rounds, device)
    n_params = sum(p.numel() for p in params.values())
    lines = [f"{machine_line(device)} Task: {task.name} "
             f"({task.dataset.num_features}-20-10 sigmoid, batch 128, {n_params} parameters); K = {K} inner steps; "
             f"median of {args.rounds} interleaved rounds.\n",
             "| meta-step (K steps + meta-gradient) | time (ms) | per inner step (ms) | / SGD unroll of K steps |",
             "|---|---|---|---|"]
    ref = med["SGD unroll (no_grad)"]
    for name, t in med.items():
        lines.append(f"| {name} | {t * 1e3:.1f} | {t / K * 1e3:.2f} | {t / ref:.1f}x |")
    print("\n".join(lines))
    write_table(args.out, lines)


if __name__ == "__main__":
    main()
