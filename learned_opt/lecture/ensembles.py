"""Snapshot ensembles (Huang et al. 2017): scoring snapshots of one run, alone and together.

The ensemble's prediction is the mean over snapshots of their softmax outputs (not the softmax of the
mean logits); :func:`scores` gives accuracy and negative log-likelihood of such class probabilities.
:func:`score_snapshots` scores every snapshot alone, picks the best single one two ways (by validation
loss, the honest pick, and by test accuracy, an optimistic bound) and scores the ensemble of the last
``m`` (:func:`ensemble_size`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.base import Params

__all__ = ["CHUNK", "ensemble_probs", "scores", "ensemble_size", "SnapshotScores", "score_snapshots"]

CHUNK = 8192  # examples per forward pass


@torch.no_grad()
def ensemble_probs(task: Any, snapshots: Sequence[Params], x: Tensor, chunk: int = CHUNK) -> Tensor:
    """Mean over snapshots of ``softmax(task.logits(params, x))``: shape ``(n, classes)``.

    ``task`` is anything with ``logits(params, x)``; ``x`` goes through in chunks of ``chunk`` examples.
    """
    if not snapshots:
        raise ValueError("ensemble_probs needs at least one snapshot")
    out = []
    for start in range(0, len(x), chunk):
        xb = x[start:start + chunk]
        out.append(torch.stack([torch.softmax(task.logits(p, xb), dim=1) for p in snapshots]).mean(0))
    return torch.cat(out)


def scores(probs: Tensor, y: Tensor) -> dict[str, float]:
    """Accuracy and negative log-likelihood (mean over examples) of class probabilities ``probs`` against
    labels ``y``; probabilities are clamped at 1e-12 before the log."""
    nll = F.nll_loss(probs.clamp_min(1e-12).log(), y).item()
    return {"accuracy": (probs.argmax(1) == y).double().mean().item(), "loss": nll}


def ensemble_size(available: int, last: int | None) -> int:
    """How many snapshots the ensemble takes: the last ``last`` of ``available`` (all of them for None)."""
    return available if last is None else min(last, available)


@dataclass
class SnapshotScores:
    """:func:`score_snapshots`' answer; scores are ``{"accuracy": ..., "loss": ...}`` on the test data."""
    singles: list[dict[str, float]]   # each snapshot alone, in order
    by_validation: int                # index of the snapshot with the lowest validation loss
    by_test: int                      # index of the snapshot with the highest test accuracy (optimistic)
    ensemble: dict[str, float]        # the ensemble of the last ``size`` snapshots
    size: int

    @property
    def best_by_validation(self) -> dict[str, float]:
        return self.singles[self.by_validation]

    @property
    def best_by_test(self) -> dict[str, float]:
        return self.singles[self.by_test]


def score_snapshots(task: Any, snapshots: Sequence[Params], x: Tensor, y: Tensor,
                    validation_losses: Sequence[float], last: int | None = None) -> SnapshotScores:
    """Score each snapshot alone and the ensemble of the last ``last`` (all for None) on ``(x, y)``;
    ``validation_losses[i]`` (snapshot ``i``'s loss on a validation split) picks the best single one."""
    if len(validation_losses) != len(snapshots):
        raise ValueError(f"{len(validation_losses)} validation losses for {len(snapshots)} snapshots")
    singles = [scores(ensemble_probs(task, [p], x), y) for p in snapshots]
    m = ensemble_size(len(snapshots), last)
    if m < 1:
        raise ValueError(f"last={last!r}: the ensemble needs at least one snapshot")
    return SnapshotScores(singles=singles, by_validation=int(np.argmin(validation_losses)),
                          by_test=int(np.argmax([sc["accuracy"] for sc in singles])),
                          ensemble=scores(ensemble_probs(task, snapshots[len(snapshots) - m:], x), y), size=m)
