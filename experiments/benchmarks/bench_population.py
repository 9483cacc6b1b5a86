"""Batched populations: N small MLP tasks unrolled as one PopulationTask vs a Python loop over them.

    python experiments/benchmarks/bench_population.py [--n 16] [--steps 10] [--device cpu] [--quick] [--out DIR]

Tasks: N MLPs 64-20-10 (sigmoid) on the 8x8 digits, batch 128, float32, each with its own
initialisation and batch generator. Throughput is inner steps per second summed over the
tasks (N x steps / wall time), measured in one process with the two variants interleaved
(median over rounds):

(a) a hand-crafted rule (Adam) under ``no_grad``: ``unroll`` on each task in a loop vs one
    ``unroll`` on the population;
(b) meta-training: one truncation of ``--steps`` inner steps through the differentiable
    unroll plus the meta-gradient (``TruncatedBPTT.estimate`` with ``population=1`` vs
    ``population=N``; same tasks, same meta-gradient), for LearnedAdam, the LSTM and the
    MLP optimizer.

Then a scaling table: batched throughput for N = 1, 2, 4, ..., 256 (Adam no_grad, and
meta-training with the LSTM optimizer), each row with the speed-up over a Python loop of
min(N, --n) tasks timed in the same interleaved rounds (a loop's per-task throughput does
not depend on N, so larger loops are not timed).
Target: >= 4x at N = 16 on a 2-core CPU.
"""
from __future__ import annotations

from typing import Callable

import torch

import baselines as B
from learned_opt.meta.bptt import TruncatedBPTT
from learned_opt.optimizers import make_learned_rule
from learned_opt.tasks.population import PopulationTask
from learned_opt.tasks import MLPFamily, make_task
from learned_opt.unroll import unroll

from common import emit, interleaved, machine_line, parse_args, parser, write_table

TARGET = 4.0


def mlp_tasks(n: int, device: torch.device) -> list:
    return [make_task("mlp", dataset="digits", hidden_sizes=[20], activation="sigmoid", batch_size=128,
                      device=device) for _ in range(n)]


def generators(n: int, device: torch.device, offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(offset + i) for i in range(n)]


def adam_cases(n: int, steps: int, device: torch.device, loop: bool = True) -> dict[str, Callable]:
    tasks = mlp_tasks(n, device)
    rule = B.Adam(lr=1e-2)
    inits = [t.init_params(g) for t, g in zip(tasks, generators(n, device))]
    loop_gens, pop_gens = generators(n, device, 100), generators(n, device, 100)
    pop = PopulationTask(tasks)
    stacked = pop.stack(inits)

    def run_loop():
        with torch.no_grad():
            for t, p, g in zip(tasks, inits, loop_gens):
                unroll(t, rule, p, rule.init(p), steps, g)

    def run_batched():
        with torch.no_grad():
            unroll(pop, rule, stacked, rule.init(stacked), steps, pop_gens)

    cases = {"batched": run_batched}
    if loop:
        cases["loop"] = run_loop
    return cases


def meta_cases(rule_name: str, n: int, steps: int, device: torch.device, loop: bool = True) -> dict[str, Callable]:
    torch.manual_seed(0)
    rule = make_learned_rule(rule_name).to(device)
    family = MLPFamily(datasets=["digits"], widths=[20], depths=[1], activations=["sigmoid"], batch_size=128,
                       device=device)

    def estimator(population: int) -> TruncatedBPTT:
        return TruncatedBPTT(family, horizon=10**9, truncation=steps, num_tasks=n, device=device,
                             generator=torch.Generator().manual_seed(0), meta_loss="log_mean",
                             population=population)

    cases = {"batched": (lambda est=estimator(n): est.estimate(rule))}
    if loop:
        cases["loop"] = (lambda est=estimator(1): est.estimate(rule))
    return cases


def main() -> None:
    ap = parser(__doc__, rounds_default=5, quick_help="tiny sizes, one round: a smoke run",
                out_help="also write the tables to OUT/table.md")
    ap.add_argument("--n", type=int, default=16, help="population size of the main comparison")
    ap.add_argument("--steps", type=int, default=10, help="inner steps per timed unroll / truncation")
    ap.add_argument("--max-n", type=int, default=256, help="largest N of the scaling table")
    args, device = parse_args(ap, quick={"n": 4, "steps": 2, "rounds": 1, "max_n": 4})
    n, steps = args.n, args.steps
    lines = [f"{machine_line(device)} Tasks: N MLPs 64-20-10 sigmoid on digits, batch 128, "
             f"float32; {steps} inner steps per timed call; median of {args.rounds} interleaved rounds.\n",
             f"### N = {n}: batched population vs Python loop (inner steps/s summed over tasks)\n",
             "| workload | loop (steps/s) | batched (steps/s) | batched / loop | target |",
             "|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    work = [("Adam, no_grad", lambda loop=True: adam_cases(n, steps, device, loop)),
            *[(f"meta-train {name}", lambda loop=True, name=name: meta_cases(name, n, steps, device, loop))
              for name in ("learned_adam", "lstm", "mlp")]]
    for label, make in work:
        med = interleaved(make(), args.rounds, device, repeats=1 if "meta" in label else 3)
        rates = {k: n * steps / v for k, v in med.items()}
        ratio = rates["batched"] / rates["loop"]
        emit(lines, f"| {label} | {rates['loop']:.0f} | {rates['batched']:.0f} | {ratio:.2f}x | "
                    f"{'>= 4x: met' if ratio >= TARGET else '>= 4x: NOT met'} |")

    lines += ["", f"### Population scaling (batched; x loop: over a Python loop of min(N, {n}) tasks timed in the "
              f"same rounds, whose per-task throughput does not depend on N)\n",
              "| N | Adam no_grad (steps/s) | x loop | meta-train LSTM (steps/s) | x loop |", "|---|---|---|---|---|"]
    print("\n".join(lines[-4:]), flush=True)
    sizes = [1]
    while sizes[-1] * 2 <= args.max_n:
        sizes.append(sizes[-1] * 2)
    for size in sizes:
        row = [str(size)]
        ref = min(size, n)
        for make in (lambda loop: adam_cases(size if not loop else ref, steps, device, loop=loop),
                     lambda loop: meta_cases("lstm", size if not loop else ref, steps, device, loop=loop)):
            rounds = max(1, args.rounds if size <= 64 else args.rounds // 2)
            try:
                cases = {"batched": make(False)["batched"], "loop": make(True)["loop"]}
                sec = interleaved(cases, rounds, device)
            except (RuntimeError, MemoryError) as e:  # out of memory at large N
                row += [f"failed ({type(e).__name__})", "-"]
                continue
            rate, loop_rate = size * steps / sec["batched"], ref * steps / sec["loop"]
            row += [f"{rate:.0f}", f"{rate / loop_rate:.2f}"]
        emit(lines, "| " + " | ".join(row) + " |")
    write_table(args.out, lines)


if __name__ == "__main__":
    main()
