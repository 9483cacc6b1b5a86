"""Where a rule's steps point: per tensor, the cosine of each step with Adam's direction
``-m_hat / (sqrt(v_hat) + eps)`` (the project's :class:`baselines.Adam` at lr 1, run beside the rule on the
same gradients) and with the tensor itself (``> 0``: the step grows the tensor), averaged over a run. What
showed that the meta-trained celo rules grow every tensor where Adam does not (docs/general_optimizer.md, round 11;
``experiments/radial_diagnostic.py``)."""
from __future__ import annotations

from typing import Any

import torch

import baselines as B

from ..tasks.base import Task


def _cos(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.flatten().double(), y.flatten().double()
    return float(x @ y / (x.norm() * y.norm() + 1e-30))


def direction_stats(rule: Any, task: Task, steps: int, seed: int) -> tuple[dict[str, dict[str, float]], float]:
    """Run ``rule`` on ``task`` for ``steps`` updates from seed ``seed``; returns, per tensor, the mean over
    updates of ``cos(step, adam)``, ``cos(step, w)`` and ``cos(adam, w)`` (steps as ``w_new - w``), and the
    run's mean training loss."""
    if steps < 1:
        raise ValueError(f"steps={steps} is not allowed; allowed: an int >= 1")
    g = torch.Generator().manual_seed(seed)
    params = task.init_params(g)
    state = rule.init(params, steps) if getattr(rule, "uses_horizon", False) else rule.init(params)
    adam = B.Adam(lr=1.0)
    adam_state = adam.init(params)
    sums = {k: [0.0, 0.0, 0.0] for k in params}
    total = 0.0
    for _ in range(steps):
        p = {k: x.detach().requires_grad_() for k, x in params.items()}
        loss = task.loss(p, task.sample_batch(g))
        grads = dict(zip(p, torch.autograd.grad(loss, list(p.values()))))
        total += float(loss.detach())
        with torch.no_grad():
            new, state = rule.update(grads, state, params)
            adam_new, adam_state = adam.update(grads, adam_state, params)
            for k, w in params.items():
                step, direction = new[k] - w, adam_new[k] - w
                for i, c in enumerate((_cos(step, direction), _cos(step, w), _cos(direction, w))):
                    sums[k][i] += c
        params = {k: x.detach() for k, x in new.items()}
    stats = {k: {"cos_step_adam": s[0] / steps, "cos_step_w": s[1] / steps, "cos_adam_w": s[2] / steps}
             for k, s in sums.items()}
    return stats, total / steps
