"""Hyperparameter sweeps run as one batched population per setting: every seed at once.

    losses = lr_sweep(task, "sgd", lrs, steps=1000, seeds=[0, 1, 2])   # (len(lrs), len(seeds))

Each entry is the mean training loss over ``steps`` updates of ``baselines.make_rule(rule, lr=lr,
**hparams)`` from the seed's initialisation with the seed's batches (the same numbers as a
separate :func:`~learned_opt.unroll.unroll` per seed); NaN where the run diverged.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from baselines import make_rule

from ..tasks.base import Task
from ..tasks.population import PopulationTask
from ..unroll import unroll
from ..utils import generator

__all__ = ["lr_sweep"]


def lr_sweep(task: Task, rule: str, lrs: Sequence[float], steps: int, seeds: Sequence[int],
             device: torch.device | str = "cpu", progress: bool = False, **hparams: Any) -> np.ndarray:
    """Mean training loss over ``steps`` for every (lr, seed); see the module docstring."""
    if not len(lrs) or not len(seeds):
        raise ValueError(f"lr_sweep needs at least one lr and one seed; got {len(lrs)} and {len(seeds)}")
    population = PopulationTask([task] * len(seeds))
    out = np.full((len(lrs), len(seeds)), np.nan)
    lr_iter = lrs
    if progress:
        from tqdm.auto import tqdm
        lr_iter = tqdm(lrs, desc=f"{rule} lr sweep")
    for i, lr in enumerate(lr_iter):
        gens = [generator(s, device) for s in seeds]
        params = population.init_params(gens)
        update = make_rule(rule, lr=float(lr), **hparams)
        with torch.no_grad():
            res = unroll(population, update, params, update.init(params), steps, gens, on_divergence="freeze")
        means = res.losses.double().mean(0).cpu().numpy()
        bad = res.diverged_members or []
        means[bad] = np.nan
        out[i] = means
    return out
