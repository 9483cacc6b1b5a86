"""The interface every inner problem implements, and small shared helpers.

A :class:`Task` owns everything about one inner problem except its parameters::

    params = task.init_params(generator)           # {"name": Tensor} on task.device
    batch = task.sample_batch(generator, "train")  # tuple of tensors (maybe empty)
    loss = task.loss(params, batch)                # scalar, differentiable in params
    task.metrics(params, "test")                   # {"loss": ..., "accuracy": ...}

``loss`` is a plain function of the parameter dictionary, so it works inside a
differentiable unroll, under ``torch.no_grad`` and under ``torch.func``
transforms.

Buffers (state the loss updates and no optimizer trains, such as BatchNorm running
statistics): a task may keep such tensors in the params dictionary and name them in
``buffer_names``. Then ``loss_and_buffers(params, batch)`` returns the loss and the
buffers' new values; :func:`~learned_opt.unroll.unroll` gives the rule (its ``init`` and
``update``) only the other entries (:func:`trainable`), differentiates the loss only
with respect to those, and carries the buffers from step to step in the params it
returns, so ``metrics(params)`` sees them. A task without buffers (every task but
:class:`~learned_opt.tasks.module.ModuleTask` on a module with buffers) needs none of this:
``buffer_names`` is empty and ``loss_and_buffers`` is ``(loss, {})``. All randomness (initialisation, batches, dropout masks) comes from
the generator passed in: the same generator state gives the same numbers on the
same device. A generator may live on the CPU or on ``task.device``; numbers are
drawn on the generator's device and then moved to ``task.device``.

A :class:`TaskFamily` samples tasks (a distribution to meta-train on).
"""
from __future__ import annotations

import abc
from typing import Mapping, TypeVar

import torch
from torch import Tensor

from baselines.checks import check_choice, check_int

Params = dict[str, Tensor]
Batch = tuple
SPLITS = ("train", "test")

T = TypeVar("T")


class Task(abc.ABC):
    """One inner optimisation problem; see the module docstring.

    Attributes:
        name: short identifier, e.g. ``"mlp_digits"``.
        device: where params, batches and data live.
        dtype: floating dtype of params and data (``float64`` for gradient checks).
        batch_size: examples per batch, or ``None`` for full batch.
        is_classifier: whether :meth:`metrics` reports ``"accuracy"``.
    """

    name: str
    device: torch.device
    dtype: torch.dtype
    batch_size: int | None
    is_classifier: bool = False
    buffer_names: frozenset[str] = frozenset()   # params entries the loss updates and no rule trains

    @abc.abstractmethod
    def init_params(self, generator: torch.Generator) -> Params:
        """Fresh inner parameters on ``self.device``, drawn from ``generator``."""

    @abc.abstractmethod
    def sample_batch(self, generator: torch.Generator, split: str = "train") -> Batch:
        """A batch from ``split`` (``"train"`` or ``"test"``) as a tuple of tensors."""

    @abc.abstractmethod
    def loss(self, params: Params, batch: Batch) -> Tensor:
        """Scalar loss of ``params`` on ``batch``, differentiable w.r.t. ``params``."""

    def loss_and_buffers(self, params: Params, batch: Batch) -> tuple[Tensor, Params]:
        """The loss and the new values of the ``buffer_names`` entries; ``(loss(params, batch), {})`` by default."""
        return self.loss(params, batch), {}

    @abc.abstractmethod
    def metrics(self, params: Params, split: str = "test",
                max_examples: int | None = None) -> dict[str, float]:
        """``{"loss": ...}`` (plus ``"accuracy"`` for classifiers) on a whole split."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device}, batch_size={self.batch_size})"


class TaskFamily(abc.ABC):
    """A distribution over tasks."""

    @abc.abstractmethod
    def sample(self, generator: torch.Generator) -> Task:
        """Draw one task using ``generator``."""


# --------------------------------------------------------------------------- helpers


def trainable(task: Task | None, params: Params) -> Params:
    """The entries of ``params`` a rule trains: all but the task's ``buffer_names`` (``params`` itself when
    it has none)."""
    names = getattr(task, "buffer_names", None)
    if not names:
        return params
    return {k: v for k, v in params.items() if k not in names}


def choose(kind: str, name: str, table: Mapping[str, T]) -> T:
    """``table[name]``, or a :class:`~baselines.checks.ConfigError` naming ``kind``, ``name`` and the choices."""
    return table[check_choice(kind, name, tuple(table))]


def check_split(split: str) -> str:
    """Return ``split`` if it is ``"train"`` or ``"test"``, else raise ``ValueError``."""
    return check_choice("split", split, SPLITS)


def sample_examples(data: tuple[Tensor, Tensor], batch_size: int | None, generator: torch.Generator,
                    device: torch.device) -> tuple[Tensor, Tensor]:
    """``batch_size`` examples of ``data`` (inputs, targets) drawn with replacement, or all of them (None)."""
    x, y = data
    if batch_size is None:
        return x, y
    index = randint(len(x), (batch_size,), generator, device)
    return x[index], y[index]


def first_examples(data: tuple[Tensor, Tensor], max_examples: int | None) -> tuple[Tensor, Tensor]:
    """The first ``max_examples`` examples of ``data`` (all of them for None): what metrics are computed on."""
    x, y = data
    if max_examples is None:
        return x, y
    check_int("max_examples", max_examples, 1)
    return x[:max_examples], y[:max_examples]


def check_float_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A floating ``torch.dtype`` from a dtype or its name (``"float64"``), else ``ValueError``."""
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype or its name (e.g. 'float32'); got {dtype!r}")
    return resolved


def randn(shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype,
          device: torch.device) -> Tensor:
    """Standard Gaussian draw (float32, on ``generator.device``), cast to ``dtype`` on ``device``.

    Drawing in float32 whatever ``dtype`` is makes a float64 task the same
    problem as its float32 twin, only more precise.
    """
    return torch.randn(shape, generator=generator, device=generator.device).to(device, dtype)


def uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator, dtype: torch.dtype,
            device: torch.device) -> Tensor:
    """``U(-bound, bound)`` draw (float32, on ``generator.device``), cast to ``dtype`` on ``device``."""
    u = torch.rand(shape, generator=generator, device=generator.device)
    return ((2 * u - 1) * bound).to(device, dtype)


def randint(high: int, shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Integers in ``[0, high)`` drawn on ``generator.device``, moved to ``device``."""
    return torch.randint(high, shape, generator=generator, device=generator.device).to(device)


class SingleTaskFamily(TaskFamily):
    """The degenerate family that always returns the same task.

    Meta-training on one task (e.g. the learning-to-learn MNIST MLP) still sees
    a fresh initialisation per unroll, through ``task.init_params(generator)``.
    """

    def __init__(self, task: Task):
        self.task = task

    def sample(self, generator: torch.Generator) -> Task:
        return self.task
