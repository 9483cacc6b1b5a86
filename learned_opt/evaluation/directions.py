"""Where a rule's steps point: per tensor, the cosine of each step with Adam's direction
``m_hat / sqrt(v_hat)`` (betas 0.9 / 0.999, computed beside the rule from the same gradients) and with the
tensor itself (``> 0``: the step grows the tensor), averaged over a run. What showed that the meta-trained
celo rules grow every tensor where Adam does not (README, round 11; ``experiments/radial_diagnostic.py``)."""
from __future__ import annotations

from typing import Any

import torch

from ..tasks.base import Task

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


def _cos(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.flatten().double(), y.flatten().double()
    return float(x @ y / (x.norm() * y.norm() + 1e-30))


def direction_stats(rule: Any, task: Task, steps: int, seed: int) -> dict[str, dict[str, float]]:
    """Run ``rule`` on ``task`` for ``steps`` updates from seed ``seed``; per tensor the mean over updates of
    ``cos(step, adam)``, ``cos(step, w)`` and ``cos(adam, w)`` (steps as ``w_new - w``), and the run's mean loss
    under ``"_run"``."""
    if steps < 1:
        raise ValueError(f"steps={steps} is not allowed; allowed: an int >= 1")
    g = torch.Generator().manual_seed(seed)
    params = task.init_params(g)
    state = rule.init(params, steps) if getattr(rule, "uses_horizon", False) else rule.init(params)
    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v2 = {k: torch.zeros_like(v) for k, v in params.items()}
    sums = {k: [0.0, 0.0, 0.0] for k in params}
    total = 0.0
    b1, b2 = ADAM_BETAS
    for t in range(1, steps + 1):
        p = {k: x.detach().requires_grad_() for k, x in params.items()}
        loss = task.loss(p, task.sample_batch(g))
        grads = dict(zip(p, torch.autograd.grad(loss, list(p.values()))))
        total += float(loss.detach())
        with torch.no_grad():
            new, state = rule.update(grads, state, params)
            for k in params:
                m[k] = b1 * m[k] + (1 - b1) * grads[k]
                v2[k] = b2 * v2[k] + (1 - b2) * grads[k] ** 2
                adam = -(m[k] / (1 - b1 ** t)) / ((v2[k] / (1 - b2 ** t)).sqrt() + ADAM_EPS)
                step, w = new[k] - params[k], params[k]
                for i, c in enumerate((_cos(step, adam), _cos(step, w), _cos(adam, w))):
                    sums[k][i] += c
        params = {k: x.detach() for k, x in new.items()}
    out = {k: {"cos_step_adam": s[0] / steps, "cos_step_w": s[1] / steps, "cos_adam_w": s[2] / steps}
           for k, s in sums.items()}
    out["_run"] = {"mean_loss": total / steps}
    return out
