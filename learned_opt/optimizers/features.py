"""Per-coordinate feature helpers the learned rules share (LSTM, per-parameter MLP, celo).

Every learned rule here batches all coordinates of all tensors into one ``(N, features)`` matrix;
these helpers reduce, normalise and name the per-tensor statistics that go into it, skipping a
population dim when a batched population runs through the rule.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from baselines.base import Params

__all__ = ["NORM_EPS", "STEP_SCALES", "coordinate_grad_rms", "grad_rms", "momentum_key", "reduce_dims",
           "rms_key", "second_moment_normalize"]

NORM_EPS = 1e-8
STEP_SCALES = ("none", "grad_rms")


def reduce_dims(ndim: int, population_dim: int | None = None) -> tuple[int, ...]:
    """The dims of an ``ndim``-dim tensor to reduce over: all, except ``population_dim`` when set."""
    if population_dim is not None and not 0 <= population_dim < max(ndim, 1):
        raise ValueError(f"population_dim={population_dim} is out of range for a {ndim}-dim tensor")
    return tuple(d for d in range(ndim) if d != population_dim)


def second_moment_normalize(x: Tensor, dims: tuple[int, ...], eps: float = NORM_EPS) -> Tensor:
    """``x / sqrt(mean(x^2 over dims) + eps)``; with no dims (a scalar) the mean is ``x^2`` itself."""
    return x * torch.rsqrt(_mean_square(x, dims) + eps)


def _mean_square(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``mean(x^2 over dims)``, keeping dims; with no dims (a scalar), ``x^2`` itself."""
    sq = x * x
    return sq.mean(dim=dims, keepdim=True) if dims else sq  # torch's mean(dim=()) would reduce everything


def grad_rms(x: Tensor, dims: tuple[int, ...], eps: float = NORM_EPS) -> Tensor:
    """``sqrt(mean(x^2 over dims) + eps)``, keeping dims (with no dims: ``sqrt(x^2 + eps)``)."""
    return torch.sqrt(_mean_square(x, dims) + eps)


def coordinate_grad_rms(grads: Params, names: Sequence[str], population_dim: int | None = None) -> Tensor:
    """Each tensor's :func:`grad_rms`, repeated for every one of its coordinates and concatenated in
    ``names`` order: shape ``(sum of numels,)``, the layout in which the rules batch all coordinates."""
    return torch.cat([grad_rms(g, reduce_dims(g.dim(), population_dim)).expand_as(g).reshape(-1)
                      for g in (grads[k] for k in names)])


def momentum_key(decay: float) -> str:
    """The state key of the momentum (EMA of g) with this decay, e.g. ``momentum_0.9``."""
    return f"momentum_{decay:g}"


def rms_key(decay: float) -> str:
    """The state key of the EMA of g^2 with this decay, e.g. ``rms_0.999``."""
    return f"rms_{decay:g}"
