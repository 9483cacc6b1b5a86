"""Time one step of the shipped general-purpose optimizer, today's path and the fused one, against torch.optim.Adam.

    python experiments/benchmarks/bench_celo_step.py [--threads 1] [--rounds 5] [--repeats 20] [--device cpu]
                                                     [--models mlp_1m,...] [--quick] [--out DIR]

Each optimizer steps the same model with the same gradients, in one process:

- ``torch.optim.Adam (foreach)``: the reference every ratio is given against;
- ``celo (update)``: ``learned_opt.load("celo")`` through ``baselines.RuleOptimizer`` with the fused step
  turned off (``LEARNED_OPT_FUSED=off``): the rule's differentiable ``update``, features built, concatenated and
  normalised as tensors;
- ``celo (fused)``: the same rule through ``baselines.RuleOptimizer`` as a user runs it: the adapter calls the
  rule's ``update_``, the fused step in place (``fused_celo_step``: the C kernel on the CPU, the torch
  formulation elsewhere); ``celo (fused, torch ops)``: the torch formulation itself (``FusedCeloOptimizer``
  with ``backend="torch"``).

Models: MLPs of ~1M and ~10M parameters, a conv net, a small transformer (plain ``nn.Module``s) and 200
small tensors. ``state`` is the optimizer's state in bytes per parameter after the first step (Adam: 8 in
float32). Adam and the fused step are interleaved round by round so that machine noise hits them alike;
today's path (and on the CPU the torch formulation), 50-250x slower, is timed after them with fewer steps. One CPU thread unless ``--threads`` says otherwise.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

import baselines as B
import learned_opt
from learned_opt.optimizers.fused import FusedCeloOptimizer, kernel_available

from common import emit, interleaved, machine_line, parse_args, parser, sync, write_table

RULE = "celo"


@contextmanager
def fused_off():
    """The rule's differentiable update, as before the fused step existed."""
    before = os.environ.get("LEARNED_OPT_FUSED")
    os.environ["LEARNED_OPT_FUSED"] = "off"
    try:
        yield
    finally:
        if before is None:
            del os.environ["LEARNED_OPT_FUSED"]
        else:
            os.environ["LEARNED_OPT_FUSED"] = before


class ConvNet(nn.Module):
    """A small VGG-like conv net for 32x32 images (~1.2M parameters)."""

    def __init__(self):
        super().__init__()
        chans, layers = [3, 64, 128, 256], []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.Conv2d(b, b, 3, padding=1),
                       nn.ReLU(), nn.MaxPool2d(2)]
        self.features, self.head = nn.Sequential(*layers), nn.Linear(256 * 16, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class Transformer(nn.Module):
    """A small decoder-style transformer: token embedding, 4 pre-norm layers of width 256, tied head."""

    def __init__(self, vocab: int = 4096, width: int = 256, layers: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(128, width))
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True,
                                                               norm_first=True) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens):
        h = self.embed(tokens) + self.pos[:tokens.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.norm(h) @ self.embed.weight.T


def models() -> dict[str, nn.Module]:
    """The models, keyed by a short name (``--models``)."""
    return {"mlp_1m": nn.Sequential(nn.Linear(1024, 768), nn.ReLU(), nn.Linear(768, 384), nn.ReLU(), nn.Linear(384, 10)),
            "mlp_10m": nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                                     nn.Linear(2048, 512)),
            "conv": ConvNet(), "transformer": Transformer(),
            "small_200": nn.Sequential(*[nn.Linear(16, 16) for _ in range(100)])}


def describe(key: str, model: nn.Module) -> str:
    ps = list(model.parameters())
    n = sum(p.numel() for p in ps)
    size = f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.0f}k"
    kind = {"mlp_1m": "MLP", "mlp_10m": "MLP", "conv": "conv net", "transformer": "transformer",
            "small_200": "small tensors"}[key]
    return f"{kind} {size} params, {len(ps)} tensors"


def state_bytes(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> float:
    """Optimizer state in bytes per parameter (every tensor in ``opt.state``)."""
    total = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
                if isinstance(t, torch.Tensor))
    total += sum(t.numel() * t.element_size() for st in opt.state.values() for v in st.values()
                 if isinstance(v, list) for t in v)
    return total / sum(p.numel() for p in params)


def main() -> None:
    ap = parser(__doc__, rounds_default=5, quick_help="1 round of 2 steps on the 200 small tensors: a smoke run")
    ap.add_argument("--repeats", type=int, default=20, help="steps timed per fast optimizer per round")
    ap.add_argument("--slow-steps", type=int, default=3, help="steps timed for today's path (celo (update))")
    ap.add_argument("--models", default=",".join(models()), help="comma-separated subset of " + ",".join(models()))
    ap.set_defaults(threads=1)
    args, device = parse_args(ap, quick={"rounds": 1, "repeats": 2, "slow_steps": 1, "models": "small_200"})
    wanted = args.models.split(",")
    unknown = sorted(set(wanted) - set(models()))
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from {list(models())}")
    has_kernel, why = kernel_available()
    fused_label = "celo (fused, C kernel)" if has_kernel and device.type == "cpu" else "celo (fused)"
    lines = [f"{machine_line(device)} Median of {args.rounds} x {args.repeats} steps "
             f"(today's path{'' if device.type != 'cpu' else ' and the torch ops'}: {args.slow_steps} steps). Rule: learned_opt.load({RULE!r}).",
             "" if has_kernel else f"C kernel unavailable ({why}): the fused rows use the torch formulation.",
             "| model | optimizer | step (us) | / torch Adam (foreach) | state (bytes/param) |",
             "|---|---|---|---|---|"]
    print("\n".join(lines))
    all_models = models()
    for key in wanted:
        model = all_models[key].to(device)
        label = describe(key, model)
        names = ("adam", "fused", "fused_torch", "update")
        copies = {k: [p.detach().clone().requires_grad_() for p in model.parameters()] for k in names}
        gen = torch.Generator(device=device).manual_seed(0)
        grads = [1e-3 * torch.randn(p.shape, generator=gen, device=device) for p in model.parameters()]
        for ps in copies.values():
            for p, g in zip(ps, grads):
                p.grad = g.clone()
        opts = {"adam": torch.optim.Adam(copies["adam"], lr=1e-3, foreach=True),
                "fused": B.RuleOptimizer(copies["fused"], learned_opt.load(RULE, device)),
                "fused_torch": FusedCeloOptimizer(copies["fused_torch"], learned_opt.load(RULE, device), backend="torch"),
                "update": B.RuleOptimizer(copies["update"], learned_opt.load(RULE, device))}
        # on the CPU the torch formulation is a fallback ~100x Adam: timed with today's path, a few steps
        fast = ["adam", "fused"] + (["fused_torch"] if device.type != "cpu" else [])
        with torch.no_grad():
            times = interleaved({k: opts[k].step for k in fast}, args.rounds, device, repeats=args.repeats)
            for k in [k for k in names if k not in fast]:
                with fused_off() if k == "update" else nullcontext():
                    opts[k].step()
                    sync(device)
                    slow = []
                    for _ in range(max(args.slow_steps, 1)):
                        t0 = time.perf_counter()
                        opts[k].step()
                        sync(device)
                        slow.append(time.perf_counter() - t0)
                times[k] = sorted(slow)[len(slow) // 2]
        labels = {"adam": "torch.optim.Adam (foreach)", "update": f"{RULE} (update)", "fused": fused_label,
                  "fused_torch": f"{RULE} (fused, torch ops)"}
        for k in ("adam", "update", "fused", "fused_torch"):
            ratio = times[k] / times["adam"]
            emit(lines, f"| {label} | {labels[k]} | {times[k] * 1e6:.0f} | {ratio:.2f} | "
                        f"{state_bytes(opts[k], copies[k]):.1f} |")
        del opts, copies
    write_table(args.out, lines)


if __name__ == "__main__":
    main()
