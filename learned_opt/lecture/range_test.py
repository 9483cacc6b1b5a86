"""Smith's learning-rate range test on a task, one ``unroll`` step per lr, and its figure.

    res = range_test(task, "nesterov", {"momentum": 0.9}, seed=0, device=device, min_lr=1e-4, max_lr=10.0,
                     num_steps=200)
    res.suggested_min_lr, res.suggested_max_lr       # bounds for a cyclical schedule
    plot_range_test(res, "range_test.png", title="LR range test")

The test itself (the lr sweep, the loss smoothing, the stop on divergence, the suggested bounds) is
:func:`baselines.lr_range_test`; :func:`range_test` gives it its training step: one
:func:`~learned_opt.unroll.unroll` step of the rule at that lr, from one initialisation, the params and
the rule's state carried from step to step, so the whole test is one training run whose lr grows.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch

from baselines import RangeTestResult, lr_range_test, make_rule

from ..tasks.base import Task
from ..unroll import unroll
from ..utils import generator

__all__ = ["range_test", "plot_range_test"]


def range_test(task: Task, rule: str, hparams: Mapping[str, Any], seed: int, device: torch.device | str,
               progress: bool = True, **test_kwargs: Any) -> RangeTestResult:
    """Smith's LR range test of rule ``rule`` (with ``hparams`` besides the lr) on ``task``.

    Each ``train_step(lr)`` of :func:`baselines.lr_range_test` (which takes ``test_kwargs``: ``min_lr``,
    ``max_lr``, ``num_steps``, ``mode``, ``smooth``, ``diverge_factor``) is ``unroll(..., steps=1)`` with
    ``make_rule(rule, lr=lr, **hparams)``, from ``task.init_params`` of a generator seeded with ``seed``
    (which also draws the minibatches). Params and the rule's state (e.g. a momentum buffer) carry over
    from one step to the next; the returned loss is the minibatch loss before the step. A non-finite
    loss ends the test (reported as divergence, ``diverged_at``).
    """
    from tqdm.auto import tqdm
    g = generator(seed, device)
    carry: dict[str, Any] = {"params": task.init_params(g), "state": None}
    bar = tqdm(total=test_kwargs.get("num_steps", 100), desc="LR range test", disable=not progress, leave=False)

    def train_step(lr: float) -> float:
        r = make_rule(rule, lr=lr, **hparams)
        if carry["state"] is None:
            carry["state"] = r.init(carry["params"])
        res = unroll(task, r, carry["params"], carry["state"], 1, g)
        bar.update()
        if res.diverged:
            return math.nan
        carry["params"], carry["state"] = res.params, res.state
        return float(res.losses[0])

    try:
        return lr_range_test(train_step, **test_kwargs)
    finally:
        bar.close()


def plot_range_test(res: RangeTestResult, path: str | Path, *, title: str, max_lr: float | None = None,
                    dpi: int = 110, ylabel: str = "training loss (cross-entropy)") -> Path:
    """Loss against lr (log x), raw and smoothed, the suggested bounds marked (and ``max_lr``, the upper
    bound used, when it is not the suggested one), the divergence stop crossed; saved to ``path``."""
    import matplotlib.pyplot as plt

    from ..evaluation.plots import save_figure
    max_lr = res.suggested_max_lr if max_lr is None else max_lr
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=dpi)
    ax.plot(res.lrs, res.losses, lw=0.8, alpha=0.45, color="C0", label="training loss (minibatch)")
    ax.plot(res.lrs, res.smoothed, lw=2, color="C0", label="smoothed (bias-corrected EMA)")
    ax.axvspan(res.suggested_min_lr, res.suggested_max_lr, color="C2", alpha=0.08)
    ax.axvline(res.suggested_min_lr, color="C2", ls="--", label=f"suggested min lr = {res.suggested_min_lr:.3g}")
    ax.axvline(res.suggested_max_lr, color="C3", ls="--", label=f"suggested max lr = {res.suggested_max_lr:.3g}")
    if max_lr != res.suggested_max_lr:
        ax.axvline(max_lr, color="C3", ls=":", label=f"CLR max lr used = {max_lr:.3g}")
    if res.diverged_at is not None:
        ax.plot([res.lrs[-1]], [res.smoothed[-1]], "kx", ms=9,
                label=f"stopped (diverging) at lr = {res.diverged_at:.3g}")
    ax.set_xscale("log")
    finite = [v for v in res.losses if math.isfinite(v)]
    top = min(max(finite), 2.0 * max(res.smoothed[0], min(res.smoothed)))
    ax.set_ylim(0.0, top * 1.05)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return save_figure(fig, path)
