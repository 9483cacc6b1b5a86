"""Task augmentation by reparameterisation (Metz et al. 2022): the same function, other parameter scales.

:class:`ReparamTask` wraps any task. For every parameter tensor ``k`` it holds a positive scalar
``c_k``; the optimizer sees and updates ``w'_k = w_k / c_k`` and the loss is the wrapped task's at
``w_k = c_k * w'_k``::

    init_params(g)       = {k: w_k / c_k}        with w = task.init_params(g)
    loss(w', batch)      = task.loss({k: c_k * w'_k}, batch)
    d loss / d w'_k      = c_k * (d task.loss / d w_k)          (chain rule)

So the loss along any trajectory of the underlying parameters is unchanged, but the optimizer sees
parameters ``1 / c_k`` and gradients ``c_k`` times as large, tensor by tensor: a rule that only works
at the usual scales is penalised during meta-training. :func:`log_uniform_scales` draws the ``c_k``
log-uniformly in ``[low, high]`` (``1e-3 .. 1e3`` by default) from a generator.

Batches are the wrapped task's. Populations of augmented tasks batch through the wrapped tasks'
own fast path (:class:`learned_opt.tasks.population.PopulationTask`, mode ``"reparam"``).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import Tensor

from .base import Batch, Params, Task

__all__ = ["ReparamTask", "log_uniform_scales", "SCALE_RANGE"]

SCALE_RANGE = (1e-3, 1e3)


def check_scale_range(field: str, value: Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` with ``0 < low <= high < inf``; otherwise a ValueError naming the field."""
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
          and 0 < value[0] <= value[1])
    if not ok:
        raise ValueError(f"{field}={value!r} must be [low, high] with 0 < low <= high (finite)")
    return float(value[0]), float(value[1])


def log_uniform_scales(names: Sequence[str], generator: torch.Generator,
                       low: float = SCALE_RANGE[0], high: float = SCALE_RANGE[1]) -> dict[str, float]:
    """One scale per name, ``exp(U(log low, log high))``, drawn in ``names`` order from ``generator``."""
    low, high = check_scale_range("scale range", (low, high))
    u = torch.rand(len(names), generator=generator, device=generator.device, dtype=torch.float64).cpu()
    logs = math.log(low) + u * (math.log(high) - math.log(low))
    return {k: float(v) for k, v in zip(names, logs.exp().tolist())}


class ReparamTask(Task):
    """``task`` seen through per-tensor parameter scales; see the module docstring.

    Args:
        task: the wrapped task (any :class:`Task`).
        scales: ``{param name: c > 0}`` for every parameter tensor of ``task``.

    Attributes: ``task``, ``scales`` (``{name: 0-dim tensor}`` in the task's dtype and device), and the
    wrapped task's ``device``, ``dtype``, ``batch_size``, ``is_classifier``; ``name`` is
    ``<task.name>_reparam``.
    """

    def __init__(self, task: Task, scales: Mapping[str, float | Tensor]):
        if not isinstance(task, Task):
            raise TypeError(f"ReparamTask wraps a Task; got {type(task).__name__}")
        if getattr(task, "buffer_names", None):
            raise ValueError(f"ReparamTask wraps tasks without buffers; {task.name} has "
                             f"{sorted(task.buffer_names)}")
        self.task = task
        self.device, self.dtype, self.batch_size = task.device, task.dtype, task.batch_size
        self.is_classifier = task.is_classifier
        self.name = f"{task.name}_reparam"
        self.scales: dict[str, Tensor] = {}
        for k, c in dict(scales).items():
            value = float(c)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"scales[{k!r}]={c!r} must be a positive finite number")
            self.scales[k] = torch.tensor(value, dtype=self.dtype, device=self.device)

    @classmethod
    def random(cls, task: Task, generator: torch.Generator, low: float = SCALE_RANGE[0],
               high: float = SCALE_RANGE[1]) -> "ReparamTask":
        """``task`` with :func:`log_uniform_scales` for its parameter tensors (names found by one
        ``init_params`` with a throwaway generator; the scales come from ``generator``)."""
        names = list(task.init_params(torch.Generator().manual_seed(0)))
        return cls(task, log_uniform_scales(names, generator, low, high))

    def __repr__(self) -> str:
        return f"ReparamTask({self.task!r}, scales={ {k: float(v) for k, v in self.scales.items()} })"

    def _check(self, params: Mapping[str, Tensor]) -> None:
        if params.keys() != self.scales.keys():
            raise KeyError(f"ReparamTask: the parameters {sorted(params)} do not match the scales "
                           f"{sorted(self.scales)}")

    def original_params(self, params: Params) -> Params:
        """The wrapped task's parameters ``{k: c_k * w'_k}``."""
        self._check(params)
        return {k: self.scales[k] * w for k, w in params.items()}

    def init_params(self, generator: torch.Generator) -> Params:
        params = self.task.init_params(generator)
        self._check(params)
        return {k: w / self.scales[k] for k, w in params.items()}

    def sample_batch(self, generator: torch.Generator, split: str = "train") -> Batch:
        return self.task.sample_batch(generator, split)

    def loss(self, params: Params, batch: Batch) -> Tensor:
        return self.task.loss(self.original_params(params), batch)

    def metrics(self, params: Params, split: str = "test", max_examples: int | None = None) -> dict[str, float]:
        return self.task.metrics(self.original_params(params), split, max_examples)
