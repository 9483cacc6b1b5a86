"""Multilayer perceptrons and logistic regression on flattened inputs.

With hidden sizes ``h_1..h_L`` and activation ``act``::

    a_0 = x
    a_l = act(a_{l-1} W_l^T + b_l) * m_l     (l = 1..L; m_l = dropout mask or 1)
    logits = a_L W_{L+1}^T + b_{L+1}

Parameters are named ``layers.<i>.weight`` (shape ``(out, in)``) and
``layers.<i>.bias``, as in an ``nn.Sequential`` of ``nn.Linear`` layers, and
initialised like ``nn.Linear`` (kaiming-uniform with ``a = sqrt(5)``), i.e.
weight and bias ~ ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, from the generator.

The learning-to-learn MNIST setting (Andrychowicz et al. 2016) is
``MLPTask("mnist", hidden_sizes=[20], activation="sigmoid", batch_size=128)``.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.checks import check_int, check_number

from .base import Batch, Params, Task, TaskFamily, check_float_dtype, choose, randint, uniform
from .datasets import Dataset, check_available
from .supervised import ClassificationTask

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
}


def _check_hidden_sizes(hidden_sizes: Sequence[int]) -> tuple[int, ...]:
    if isinstance(hidden_sizes, (int, str)):
        raise ValueError(f"hidden_sizes must be a list of positive integers (maybe empty); got {hidden_sizes!r}")
    sizes = tuple(hidden_sizes)
    for i, size in enumerate(sizes):
        check_int(f"hidden_sizes[{i}]", size, 1)
    return sizes


class MLPTask(ClassificationTask):
    """Fully connected classifier; see the module docstring.

    Args:
        dataset: dataset name or :class:`Dataset` (see ``ClassificationTask``).
        hidden_sizes: widths of the hidden layers; empty gives logistic regression.
        activation: ``"sigmoid"``, ``"relu"``, ``"tanh"`` or ``"gelu"``.
        batch_size: examples per batch, or ``None`` for full batch.
        dropout: drop probability ``p`` after each hidden activation, in ``[0, 1)``.
            Train batches then carry one inverted-dropout mask per hidden layer,
            ``m = Bernoulli(1 - p) / (1 - p)`` of shape ``(batch, width)``, drawn
            from the batch generator: ``(x, y, m_1, ..., m_L)``. Test batches and
            ``metrics`` use no dropout.
        device, dtype, root, name: see ``ClassificationTask``.
    """

    kind = "mlp"

    def __init__(self, dataset: str | Dataset = "digits", hidden_sizes: Sequence[int] = (20,),
                 activation: str = "sigmoid", batch_size: int | None = 128, dropout: float = 0.0,
                 device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
                 root: str | None = None, name: str | None = None):
        self.hidden_sizes = _check_hidden_sizes(hidden_sizes)
        self.activation = activation
        self._act = choose("activation", activation, ACTIVATIONS)
        self.dropout = check_number("dropout", dropout, 0.0, 1.0, high_open=True)
        if self.dropout > 0 and not self.hidden_sizes:
            raise ValueError(f"dropout={dropout} needs at least one hidden layer; hidden_sizes is empty")
        super().__init__(dataset, batch_size=batch_size, device=device, dtype=dtype, root=root, name=name)

    def init_params(self, generator: torch.Generator) -> Params:
        sizes = (self.dataset.num_features, *self.hidden_sizes, self.dataset.num_classes)
        params = {}
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            bound = 1.0 / math.sqrt(fan_in)
            params[f"layers.{i}.weight"] = uniform((fan_out, fan_in), bound, generator, self.dtype, self.device)
            params[f"layers.{i}.bias"] = uniform((fan_out,), bound, generator, self.dtype, self.device)
        return params

    def logits(self, params: Params, x: Tensor, *masks: Tensor) -> Tensor:
        h = x
        for i in range(len(self.hidden_sizes)):
            h = self._act(F.linear(h, params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]))
            if masks:
                h = h * masks[i]
        out = len(self.hidden_sizes)
        return F.linear(h, params[f"layers.{out}.weight"], params[f"layers.{out}.bias"])

    def sample_batch(self, generator: torch.Generator, split: str = "train") -> Batch:
        """``(x, y)``, plus one dropout mask per hidden layer for train batches when ``dropout > 0``."""
        batch = super().sample_batch(generator, split)
        if self.dropout == 0 or split != "train":
            return batch
        n = len(batch[1])
        keep = 1.0 - self.dropout
        masks = tuple(
            (torch.rand((n, width), generator=generator, device=generator.device) < keep)
            .to(self.device, self.dtype) / keep
            for width in self.hidden_sizes)
        return (*batch, *masks)


class LogRegTask(MLPTask):
    """Multinomial logistic regression: ``logits = x W^T + b`` (an MLP without hidden layers)."""

    kind = "logreg"

    def __init__(self, dataset: str | Dataset = "digits", batch_size: int | None = 128,
                 device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
                 root: str | None = None, name: str | None = None):
        super().__init__(dataset, hidden_sizes=(), batch_size=batch_size, device=device, dtype=dtype,
                         root=root, name=name)


class MLPFamily(TaskFamily):
    """MLP tasks with dataset, width, depth and activation drawn uniformly from the given lists.

    A sampled task has ``depth`` hidden layers of ``width`` units (depth 0 is
    logistic regression) and is named ``mlp_<dataset>_<depth>x<width>_<activation>``.
    The initialisation seed varies through the generator given to ``init_params``.
    Datasets are loaded once and shared through the ``make_dataset`` cache.
    """

    def __init__(self, datasets: Sequence[str] = ("digits",), widths: Sequence[int] = (20,),
                 depths: Sequence[int] = (1,), activations: Sequence[str] = ("sigmoid",),
                 batch_size: int | None = 128, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str = torch.float32, root: str | None = None):
        self.datasets = self._nonempty("datasets", datasets)
        self.widths = self._nonempty("widths", widths)
        self.depths = self._nonempty("depths", depths)
        self.activations = self._nonempty("activations", activations)
        for name in self.datasets:  # every dataset the family may draw is there now, not at a later draw
            check_available(name, root)
        for i, width in enumerate(self.widths):
            check_int(f"widths[{i}]", width, 1)
        for i, depth in enumerate(self.depths):
            check_int(f"depths[{i}]", depth, 0)
        for activation in self.activations:
            choose("activation", activation, ACTIVATIONS)
        self.batch_size = (None if batch_size is None else check_int("batch_size", batch_size, 1))
        self.device, self.dtype, self.root = torch.device(device), check_float_dtype(dtype), root

    @staticmethod
    def _nonempty(field: str, values: Sequence) -> tuple:
        if isinstance(values, (str, int)) or len(values) == 0:
            raise ValueError(f"{field} must be a non-empty list; got {values!r}")
        return tuple(values)

    def sample(self, generator: torch.Generator) -> Task:
        def pick(options: tuple):
            return options[randint(len(options), (), generator, torch.device("cpu")).item()]

        dataset, width, depth, activation = (pick(self.datasets), pick(self.widths), pick(self.depths),
                                             pick(self.activations))
        return MLPTask(dataset, hidden_sizes=[width] * depth, activation=activation,
                       batch_size=self.batch_size, device=self.device, dtype=self.dtype, root=self.root,
                       name=f"mlp_{dataset}_{depth}x{width}_{activation}")
