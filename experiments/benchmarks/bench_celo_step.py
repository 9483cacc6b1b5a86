"""Time one step of the general-purpose learned optimizers against torch.optim.Adam, in one process.

    python experiments/benchmarks/bench_celo_step.py [--rounds 5] [--repeats 50] [--device cpu] [--quick] [--out DIR]

Each rule drives a ``torch.optim`` step through ``baselines.RuleOptimizer`` on the same model and
gradients: ``celo_general`` (the normalised MLP rule with a fixed step size), ``celo_hd`` (the same
plus the online per-tensor step size: two more dot products per tensor and two more state buffers)
and ``celo_backoff`` (``celo_hd`` with ``hypergradient_shrink``). References: ``torch.optim.Adam``
with ``foreach=True`` (the ratio every rule is given against), and ``celo_general`` for the cost of
the step-size adaptation (``/ fixed``). Models: an MLP of ~1M parameters in 6 tensors, and 200
small tensors. Measurements are interleaved so that machine noise hits every rule alike.
"""
from __future__ import annotations

import torch

import baselines as B
import learned_opt

from common import emit, interleaved, machine_line, parse_args, parser, step_models, write_table

RULES = ("celo_general", "celo_hd", "celo_backoff")


def main() -> None:
    ap = parser(__doc__, rounds_default=5, quick_help="1 round of 2 steps on the small model: a smoke run")
    ap.add_argument("--repeats", type=int, default=50, help="steps timed per rule per round")
    args, device = parse_args(ap, quick={"rounds": 1, "repeats": 2})
    lines = [f"{machine_line(device)} Median of {args.rounds} x {args.repeats} steps.\n",
             "| model | optimizer | step (us) | / torch Adam (foreach) | / fixed step (celo_general) |",
             "|---|---|---|---|---|"]
    print("\n".join(lines))
    chosen = step_models()
    if args.quick:
        chosen = dict(list(chosen.items())[1:])
    for mname, model in chosen.items():
        model = model.to(device)
        copies = {k: [p.detach().clone().requires_grad_() for p in model.parameters()] for k in ("adam", *RULES)}
        gen = torch.Generator(device=device).manual_seed(0)
        for ps in copies.values():
            for p in ps:
                p.grad = 1e-3 * torch.randn(p.shape, generator=gen, device=device)
        opts = {"adam": torch.optim.Adam(copies["adam"], lr=1e-3, foreach=True)}
        opts.update({k: B.RuleOptimizer(copies[k], learned_opt.load(k, device)) for k in RULES})
        with torch.no_grad():
            times = interleaved({k: opt.step for k, opt in opts.items()}, args.rounds, device, repeats=args.repeats)
        for k in ("adam", *RULES):
            us = times[k] * 1e6
            label = "torch.optim.Adam (foreach)" if k == "adam" else k
            fixed = "-" if k == "adam" else f"{times[k] / times['celo_general']:.2f}"
            emit(lines, f"| {mname} | {label} | {us:.0f} | {times[k] / times['adam']:.2f} | {fixed} |")
    write_table(args.out, lines)


if __name__ == "__main__":
    main()
