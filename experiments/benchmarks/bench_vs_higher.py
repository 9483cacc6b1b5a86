"""Our differentiable unroll vs ``higher``: forward + meta-backward with a learnable learning rate.

    python experiments/benchmarks/bench_vs_higher.py [--steps 20] [--device cpu] [--quick] [--out DIR]

The same inner problem both ways: an MLP 64-20-10 (sigmoid) on the 8x8 digits, batch 128,
float32, the same initial weights and the same batches. The learning rate is a tensor that
requires grad. Ours: ``unroll(task, baselines.SGD(lr=lr, momentum=0.9) | baselines.Adam(lr=lr))``
with the meta-loss ``losses.sum()`` back-propagated into ``lr``. ``higher``: an ``nn.Sequential``
of the same layers, ``torch.optim.SGD(momentum=0.9)`` / ``torch.optim.Adam`` wrapped by
``higher.innerloop_ctx(override={"lr": [lr]})``, the same meta-loss and backward. The two
meta-gradients are checked to agree before timing. Target: ours / higher <= 1.0.
"""
from __future__ import annotations

from typing import Callable

import higher
import torch
import torch.nn.functional as F
from torch import nn

import baselines as B
from learned_opt.tasks import make_task
from learned_opt.unroll import unroll

from common import emit, interleaved, machine_line, parse_args, parser, write_table

# higher's Adam adds eps before the second-moment bias correction, torch.optim and we after;
# with eps ~ 0 the two formulas agree, so the check below can be tight.
EPS = 1e-12


def main() -> None:
    ap = parser(__doc__, rounds_default=15, quick_help="3 steps, 2 rounds: a smoke run")
    ap.add_argument("--steps", type=int, default=20, help="inner steps per unroll")
    args, device = parse_args(ap, quick={"steps": 3, "rounds": 2})
    K = args.steps
    task = make_task("mlp", dataset="digits", hidden_sizes=[20], activation="sigmoid", batch_size=128, device=device)
    init = task.init_params(torch.Generator(device=device).manual_seed(0))
    g = torch.Generator(device=device).manual_seed(1)
    batches = [task.sample_batch(g) for _ in range(K)]

    class Replay:  # the same pre-drawn batches for both sides (sampling is not what is compared)
        def __init__(self) -> None:
            self.i = 0

        def next(self):
            b = batches[self.i % K]
            self.i += 1
            return b

    class ReplayTask:
        """``task`` whose batches are the pre-drawn ones (its loss is the task's own)."""

        def __init__(self) -> None:
            self.replay = Replay()

        def sample_batch(self, generator, split="train"):
            return self.replay.next()

        def loss(self, params, batch):
            return task.loss(params, batch)

    model = nn.Sequential(nn.Linear(64, 20), nn.Sigmoid(), nn.Linear(20, 10)).to(device)
    names = dict(zip(["0.weight", "0.bias", "2.weight", "2.bias"], init))

    def ours(kind: str) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            lr = torch.tensor(0.05 if kind == "sgd-momentum" else 0.01, device=device, requires_grad=True)
            rule = B.SGD(lr=lr, momentum=0.9) if kind == "sgd-momentum" else B.Adam(lr=lr, eps=EPS)
            res = unroll(ReplayTask(), rule, init, rule.init(init), K, None)
            (grad,) = torch.autograd.grad(res.losses.sum(), [lr])
            return grad
        return run

    def theirs(kind: str) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad():
                for k, p in model.named_parameters():
                    p.copy_(init[names[k]])
            lr0 = 0.05 if kind == "sgd-momentum" else 0.01
            lr = torch.tensor(lr0, device=device, requires_grad=True)
            opt = (torch.optim.SGD(model.parameters(), lr=lr0, momentum=0.9) if kind == "sgd-momentum"
                   else torch.optim.Adam(model.parameters(), lr=lr0, eps=EPS))
            total = 0.0
            with higher.innerloop_ctx(model, opt, copy_initial_weights=True, override={"lr": [lr]}) as (fm, dopt):
                for i in range(K):
                    x, y = batches[i]
                    loss = F.cross_entropy(fm(x), y)
                    total = total + loss
                    dopt.step(loss)
            (grad,) = torch.autograd.grad(total, [lr])
            return grad
        return run

    lines = [f"{machine_line(device)} Task: MLP 64-20-10 sigmoid on digits, batch 128, float32, "
             f"{K} inner steps, forward + meta-backward into a tensor lr; median of {args.rounds} interleaved rounds.\n",
             "| rule | ours (ms) | higher (ms) | ours / higher | meta-gradients agree (rel. diff.) | target <= 1.0 |",
             "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for kind in ("sgd-momentum", "adam"):
        a, b = ours(kind), theirs(kind)
        ga, gb = a(), b()  # also the warm-up
        rel = float((ga - gb).abs() / gb.abs().clamp_min(1e-30))
        med = interleaved({"ours": a, "higher": b}, args.rounds, device, warmup=False)
        t_ours, t_h = med["ours"], med["higher"]
        ratio = t_ours / t_h
        emit(lines, f"| {kind} | {t_ours * 1e3:.1f} | {t_h * 1e3:.1f} | {ratio:.2f} | {rel:.1e} | "
                    f"{'met' if ratio <= 1.0 else 'NOT met'} |")
    write_table(args.out, lines)


if __name__ == "__main__":
    main()
