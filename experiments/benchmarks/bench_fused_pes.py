"""What the fused celo step would do to PES meta-training throughput: a measurement, not a wiring.

    python experiments/benchmarks/bench_fused_pes.py [--threads 1] [--rounds 3] [--trajectories 32] [--quick] [--out DIR]

PES on the digits MLP family (as ``bench_estimators.py``: 64-20-10 sigmoid, batch 128, T = 100, K = 20,
N trajectories as N / 8 tasks x 2 x 4 pairs), the rule ``learned_opt.load("celo")`` with its
meta-parameters trainable. One PES meta-step is timed, and the time its rule updates take
(``NormalizedMLPOptimizer.update_members``: all members at once under ``no_grad``) is measured
inside it. One of those calls, captured, is then timed again against ``fused_celo_members`` on the
same members (the same numbers: ``tests/test_fused.py``); the meta-step with the fused update in its
place is the measured one with its update time divided by that speed-up. The estimator is not changed.
"""
from __future__ import annotations

import statistics
import time

import torch

import learned_opt
from learned_opt.meta import PES
from learned_opt.optimizers.fused import Hyper, Radial, celo_inputs, fused_celo_members
from learned_opt.tasks import make_family

from common import emit, machine_line, parse_args, parser, write_table


def median_time(fn, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


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
    rule = learned_opt.load("celo").requires_grad_(True)
    pes = PES(family, num_tasks=N // 8, population=N // 8, generator=torch.Generator().manual_seed(0), std=0.01,
              pairs=4, horizon=T, truncation=K, device=device, meta_loss="log_mean", stagger=True)

    captured, spent = [], [0.0, 0]
    update_members = rule.update_members

    def timed(meta, grads, state, params, workspace=None):
        t0 = time.perf_counter()
        out = update_members(meta, grads, state, params, workspace)
        spent[0] += time.perf_counter() - t0
        spent[1] += 1
        if not captured:
            captured.append((meta, grads, state, params))
        return out

    rule.update_members = timed
    pes.estimate(rule)   # warm-up
    spent[:] = [0.0, 0]
    steps = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        pes.estimate(rule)
        steps.append(time.perf_counter() - t0)
    meta_step, update_share, calls = statistics.median(steps), spent[0] / args.rounds, spent[1] // args.rounds

    meta, grads, state, params = captured[0]
    names = list(params)
    P = params[names[0]].shape[0]
    _, options, ctl = celo_inputs(rule)
    weights = {k: v.detach().expand(P, *v.shape) for k, v in rule.state_dict().items()}
    weights.update(meta)

    def first(t: torch.Tensor) -> torch.Tensor:   # today's full-shape per-tensor value -> one per member
        return t.reshape(P, -1)[:, :1].reshape(P, *[1] * (t.dim() - 1))

    hyper = radial = None
    if ctl["hyper"]:
        hyper = Hyper([first(state["log_step"][n]) for n in names], [state["last_dir"][n] for n in names],
                      meta.get("log_hyper_gain", weights["log_hyper_gain"]), ctl["hyper"]["range"],
                      ctl["hyper"]["shrink"], ctl["hyper"]["floor"])
    if ctl["radial"]:
        radial = Radial([first(state["log_radial"][n]) for n in names],
                        [first(state["last_radial"][n]) for n in names], **ctl["radial"])
    momenta = [[state[k][n] for n in names] for k in rule.momentum_keys]
    rms = [[state[k][n] for n in names] for k in rule.rms_keys]
    step = state["step"]
    repeats = 3 if args.quick else 30
    t_batched = median_time(lambda: update_members(meta, grads, state, params), repeats)
    t_fused = median_time(lambda: fused_celo_members([params[n] for n in names], [grads[n] for n in names], momenta,
                                                     rms, step, state.get("horizon"), weights, options, hyper, radial),
                          repeats)
    # the updates inside the meta-step, sped up as much as the captured one: (measured - updates + updates / speed-up)
    fused_step = meta_step - update_share + update_share * t_fused / t_batched
    lines: list[str] = []
    emit(lines, f"{machine_line(device)} PES on the digits MLP family, T = {T}, K = {K}, {N} trajectories "
                f"({P} members x {sum(params[n][0].numel() for n in names)} parameters); rule: celo. Median of "
                f"{args.rounds} meta-steps; one rule update of all members: median of {repeats}.\n")
    emit(lines, "| rule update | one update of all members (ms) | updates per meta-step | PES meta-step (ms) "
                "| inner steps / s | throughput |")
    emit(lines, "|---|---|---|---|---|---|")
    base_rate = N * K / meta_step
    emit(lines, f"| update_members (today, measured) | {t_batched * 1e3:.2f} | {calls} | {meta_step * 1e3:.0f} "
                f"| {base_rate:.0f} | 1.00x |")
    emit(lines, f"| fused_celo_members (C kernel; meta-step: updates / speed-up) | {t_fused * 1e3:.2f} | {calls} "
                f"| {fused_step * 1e3:.0f} | {N * K / fused_step:.0f} | {meta_step / fused_step:.2f}x |")
    emit(lines, f"\nThe rule updates take {update_share / meta_step:.0%} of today's PES meta-step.")
    write_table(args.out, lines)


if __name__ == "__main__":
    main()
