"""The recorded steps of every shipped learned optimizer (``learned_opt/pretrained/*.pt``).

A fixed problem that depends on nothing but torch: parameters of the shapes a real model has (a matrix, a
bias, a 4-d conv kernel, a gain vector, a 0-d scalar) pulled towards a target, ``g = w - target + 0.1 *
noise`` with seeded noise, float64. :func:`trajectory` runs a rule on it and returns the parameters after
the updates ``KEPT``. ``python tests/shipped_steps.py`` recorded ``tests/data/shipped_steps.pt`` (every shipped
file's trajectory) before the learned rules were split into a core and controllers; the test in
``test_shipped_steps.py`` checks that every file still gives those steps.
"""
from __future__ import annotations

from pathlib import Path

import torch

STEPS = 30
KEPT = (0, 1, 2, 4, 9, 19, 29)   # the updates whose parameters are recorded
RECORD = Path(__file__).resolve().parent / "data" / "shipped_steps.pt"
SHAPES = {"conv": (4, 3, 3, 3), "w": (7, 5), "b": (7,), "gain": (5,), "scalar": ()}


def problem(dtype: torch.dtype = torch.float64) -> tuple[dict, dict, torch.Generator]:
    g = torch.Generator().manual_seed(1234)
    params = {k: torch.randn(s, generator=g, dtype=dtype) * 0.5 for k, s in SHAPES.items()}
    target = {k: torch.randn(s, generator=g, dtype=dtype) for k, s in SHAPES.items()}
    return params, target, g


def trajectory(rule, dtype: torch.dtype = torch.float64, steps: int = STEPS, horizon: int | None = 100) -> list[dict]:
    """The parameters after the updates ``KEPT`` (0-based) of ``steps`` updates of ``rule`` on the fixed problem,
    each flattened into one vector."""
    params, target, g = problem(dtype)
    rule = rule.to(dtype)
    uses_horizon = getattr(rule, "uses_horizon", False)
    state = rule.init(params, horizon=horizon) if uses_horizon else rule.init(params)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            grads = {k: p - target[k] + 0.1 * torch.randn(p.shape, generator=g, dtype=dtype)
                     for k, p in params.items()}
            params, state = rule.update(grads, state, params)
            out.append(torch.cat([v.reshape(-1) for v in params.values()]))
    return [out[i] for i in KEPT if i < steps]


def shipped_names() -> list[str]:
    import learned_opt
    folder = Path(learned_opt.__file__).resolve().parent / "pretrained"
    return sorted(f.stem for f in folder.glob("*.pt"))


if __name__ == "__main__":
    import learned_opt
    record = {name: torch.stack(trajectory(learned_opt.load(name))) for name in shipped_names()}
    RECORD.parent.mkdir(exist_ok=True)
    torch.save(record, RECORD)
    print(f"recorded {len(record)} files x {STEPS} steps -> {RECORD}")
