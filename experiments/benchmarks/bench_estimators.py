"""Meta-gradient estimators side by side: meta-step time, inner steps per second, and gradient quality
per second.

    python experiments/benchmarks/bench_estimators.py [--budget 20] [--device cpu] [--quick] [--out DIR]

Task family: the digits MLP family (64-20-10 sigmoid, batch 128; configs/family/digits_mlp.yaml),
horizon T = 100 in truncations of K = 20, meta-loss log_mean, the per-parameter MLP optimizer at
its initialisation (``--rule lstm`` for the LSTM). Every estimator advances about N = ``--trajectories``
inner trajectories by K steps per meta-step, all as one population (BPTT: N tasks; PES: N / 8 tasks
x 2 x 4 pairs = N particles; ES: N / 8 tasks x (2 x 4 pairs + 1 unperturbed) = 9N/8 particles), so
they do the same number of inner steps, up to ES's unperturbed particles.

Speed: median meta-step time over interleaved rounds, and inner steps per second (particles or
tasks x K / time); the ratio is against BPTT timed in the same process.

Quality: the reference is the gradient of the full-horizon meta-loss, estimated by BPTT through
whole horizons (truncation = T) averaged over many tasks. Each estimator then runs for ``--budget``
seconds at the same meta-parameters (no updates); we report the cosine similarity to the reference
of one estimate, and of the mean of all estimates made within the budget (what the estimator can
deliver per unit of time). Truncated BPTT and ES estimate the truncated objective, so their
cosine stays below 1 however long they run (short-horizon bias); PES is unbiased for the full one.
"""
from __future__ import annotations

import time

import torch

from learned_opt.meta import PES, TruncatedBPTT, TruncatedES
from learned_opt.optimizers import make_learned_rule
from learned_opt.tasks import make_family

from common import emit, interleaved, machine_line, parse_args, parser, write_table


def flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def main() -> None:
    ap = parser(__doc__, rounds_default=5, quick_help="T = 8, K = 4, tiny budget: a smoke run")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of estimates per estimator for the quality")
    ap.add_argument("--horizon", type=int, default=100)
    ap.add_argument("--truncation", type=int, default=20)
    ap.add_argument("--reference-tasks", type=int, default=64, help="tasks in the full-horizon reference")
    ap.add_argument("--trajectories", type=int, default=32, help="N: inner trajectories per meta-step (multiple of 8)")
    ap.add_argument("--rule", default="mlp", choices=["mlp", "lstm"])
    args, device = parse_args(ap, quick={"horizon": 8, "truncation": 4, "budget": 1.0, "rounds": 1,
                                         "reference_tasks": 8, "trajectories": 8})
    N = args.trajectories
    if N < 8 or N % 8:
        raise SystemExit(f"--trajectories={N} must be a positive multiple of 8")
    T, K = args.horizon, args.truncation
    family = make_family("mlp_family", datasets=["digits"], widths=[20], depths=[1], activations=["sigmoid"],
                         batch_size=128, device=device)
    torch.manual_seed(0)
    rule = make_learned_rule(args.rule).to(device)
    common = dict(horizon=T, truncation=K, device=device, meta_loss="log_mean", stagger=True)

    def build(name: str, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        if name == "bptt":
            return TruncatedBPTT(family, num_tasks=N, population=N, generator=g, **common)
        cls = TruncatedES if name == "es" else PES
        return cls(family, num_tasks=N // 8, population=N // 8, generator=g, std=0.01, pairs=4, **common)

    estimators = {name: build(name) for name in ("bptt", "es", "pes")}
    trajectories = {"bptt": N, "es": N // 8 * 9, "pes": N}
    med = interleaved({k: (lambda e=e: e.estimate(rule)) for k, e in estimators.items()}, args.rounds, device)

    # the full-horizon reference: BPTT through whole horizons, many tasks
    ref_est = TruncatedBPTT(family, num_tasks=8, population=8, generator=torch.Generator().manual_seed(123),
                            horizon=T, truncation=T, device=device, meta_loss="log_mean")
    t0 = time.perf_counter()
    reference = sum(flat(ref_est.estimate(rule).grads) for _ in range(max(1, args.reference_tasks // 8)))
    ref_seconds = time.perf_counter() - t0

    lines: list[str] = []
    emit(lines, f"{machine_line(device)} Family: digits MLP 64-20-10 sigmoid, batch 128; T = {T}, K = {K}; "
                f"learned rule: {args.rule} (initial meta-parameters). Speed: median of {args.rounds} "
                f"interleaved rounds. Quality: cosine similarity to the full-horizon gradient (BPTT through "
                f"whole horizons, {max(1, args.reference_tasks // 8) * 8} tasks, {ref_seconds:.0f} s), "
                f"estimates made for {args.budget:g} s each.\n")
    emit(lines, "| estimator | trajectories x K per meta-step | meta-step (ms) | inner steps / s | / BPTT "
                "| cosine, one estimate | cosine, mean of the estimates in the budget | estimates in the budget |")
    emit(lines, "|---|---|---|---|---|---|---|---|")
    rate_bptt = trajectories["bptt"] * K / med["bptt"]
    for name, est in estimators.items():
        fresh = build(name, seed=7)
        single, total, n, start = [], None, 0, time.perf_counter()
        while time.perf_counter() - start < args.budget or n < 2:
            g = flat(fresh.estimate(rule).grads)
            single.append(cosine(g, reference))
            total = g if total is None else total + g
            n += 1
        rate = trajectories[name] * K / med[name]
        emit(lines, f"| {name} | {trajectories[name]} x {K} | {med[name] * 1e3:.0f} | {rate:.0f} | "
                    f"{rate / rate_bptt:.2f}x | {sum(single) / len(single):.3f} | {cosine(total, reference):.3f} | {n} |")
    write_table(args.out, lines)


if __name__ == "__main__":
    main()
