"""Epoch training with a validation split and a metric-driven schedule.

A run is ``epochs`` calls of :func:`~learned_opt.unroll.unroll`, ``steps_per_epoch`` updates each, on a
task whose "test" split is a validation split (:func:`~learned_opt.evaluation.suite.validation_task`
carves one out of the training split). After every epoch the validation loss and accuracy are measured;
a :class:`~baselines.ReduceOnPlateau` used as the rule's lr is fed that loss and training goes on from
the returned params and state, so the lr it returns applies from the next epoch on. A
:class:`~baselines.SnapshotCollector` sees the params after every update (through unroll's callback),
with the global update index.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from baselines import ReduceOnPlateau, SnapshotCollector
from baselines.base import Params, UpdateRule, resolve

from ..tasks.base import Task
from ..unroll import unroll
from ..utils import generator

__all__ = ["EpochRun", "steps_per_epoch", "train_epochs"]


@dataclass
class EpochRun:
    """What :func:`train_epochs` measured. ``val_loss[e]``/``val_accuracy[e]`` are after ``e`` epochs (entry 0
    before any update); ``lr_epoch[e]`` is the lr of epoch ``e + 1``'s first update; ``reductions`` lists the
    epochs after which the plateau schedule lowered the lr; ``train_loss`` is the per-update minibatch loss;
    ``diverged_at_epoch`` is the epoch in which training diverged and stopped (None if it did not)."""
    val_loss: list[float]
    val_accuracy: list[float]
    lr_epoch: list[float] = field(default_factory=list)
    reductions: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    diverged_at_epoch: int | None = None
    params: Params = field(default_factory=dict, repr=False)  # the last params (before a diverging epoch)

    @property
    def diverged(self) -> bool:
        return self.diverged_at_epoch is not None

    def to_dict(self) -> dict[str, Any]:
        """The measurements as JSON-able lists (the params left out)."""
        out = asdict(self)
        del out["params"]
        return out


def _snapshots(collector: SnapshotCollector, offset: int) -> Callable[[int, Params, Tensor], None]:
    """Unroll's callback for a chunk that starts after ``offset`` updates: hands the collector the params
    after each update with that update's global index."""
    def callback(s: int, p: Params, loss: Tensor) -> None:
        if s >= 1:  # params after s updates of this chunk, i.e. after global update offset + s - 1
            collector.maybe_snapshot(offset + s - 1, p)
    return callback


def steps_per_epoch(task: Task) -> int:
    """Updates in one pass over ``task``'s training split: ``ceil(examples / batch_size)`` (1 full-batch)."""
    n = len(task.dataset.y_train)
    return math.ceil(n / (task.batch_size or n))


def train_epochs(task: Task, rule: UpdateRule, epochs: int, steps_per_epoch: int, seed: int, device: torch.device,
                 plateau: ReduceOnPlateau | None = None, collector: SnapshotCollector | None = None,
                 eval_examples: int | None = None) -> EpochRun:
    """Train from ``task.init_params`` (seeded by ``seed``, which also draws the batches) for ``epochs`` epochs,
    validating on ``task``'s "test" split (its first ``eval_examples``) before training and after each epoch.

    With ``plateau`` (which must be the rule's lr, or nothing changes), ``plateau.step`` gets each epoch's
    validation loss; with ``collector``, ``collector.maybe_snapshot(update index, params)`` runs after every
    update. A diverging epoch ends the run (its params are not kept).
    """
    g = generator(seed, device)
    params = task.init_params(g)
    state = rule.init(params)
    val0 = task.metrics(params, "test", eval_examples)
    out = EpochRun(val_loss=[val0["loss"]], val_accuracy=[val0["accuracy"]])
    done = 0  # updates so far
    for epoch in range(1, epochs + 1):
        callback = None if collector is None else _snapshots(collector, done)
        lr_now = float(resolve(rule.lr, state["step"]))  # the lr of this epoch's first update
        res = unroll(task, rule, params, state, steps_per_epoch, g, callback=callback,
                     callback_every=1 if collector is not None else 0)
        out.train_loss += res.losses.tolist()
        if res.diverged:
            out.diverged_at_epoch = epoch
            break
        params, state = res.params, res.state
        done += steps_per_epoch
        val = task.metrics(params, "test", eval_examples)
        out.val_loss.append(val["loss"])
        out.val_accuracy.append(val["accuracy"])
        out.lr_epoch.append(lr_now)
        if plateau is not None:
            before = plateau.lr
            if plateau.step(val["loss"]) < before:
                out.reductions.append(epoch)  # the lr drops from the next epoch on
    out.params = params
    return out
