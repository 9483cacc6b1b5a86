"""Mean-squared-error tasks on the classification datasets' inputs: teacher regression and autoencoders.

Both are MLPs with the parameter names and initialisation of :class:`~learned_opt.tasks.mlp.MLPTask`
(``layers.<i>.weight`` ``(out, in)``, ``layers.<i>.bias``, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``)
and a linear output layer::

    loss(params, (x, t)) = mean over examples and outputs of (mlp(params, x) - t)^2

:class:`TeacherRegressionTask`: ``t = teacher(x)``, a fixed random MLP (drawn from ``teacher_seed``,
the same initialisation) whose outputs are standardised per output with the train split's statistics,
so predicting the mean scores 1.0.
:class:`AutoencoderTask`: ``t = x`` (the normalised inputs), through a bottleneck.

``metrics`` reports ``{"loss": mean squared error}`` only (``is_classifier`` is False): no accuracy.
The labels of the dataset are not used. Batches are drawn with replacement, as for the classifiers.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.checks import check_int

from .base import (Batch, Params, Task, check_float_dtype, check_split, choose, first_examples, sample_examples,
                   uniform)
from .datasets import Dataset, make_dataset
from .mlp import ACTIVATIONS, _check_hidden_sizes
from .supervised import EVAL_CHUNK

__all__ = ["AutoencoderTask", "MSETask", "TeacherRegressionTask", "mlp_forward", "mlp_init"]


def mlp_init(sizes: Sequence[int], generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Params:
    """``nn.Linear``-style parameters of an MLP with layer sizes ``sizes`` (inputs first)."""
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = 1.0 / math.sqrt(fan_in)
        params[f"layers.{i}.weight"] = uniform((fan_out, fan_in), bound, generator, dtype, device)
        params[f"layers.{i}.bias"] = uniform((fan_out,), bound, generator, dtype, device)
    return params


def mlp_forward(params: Params, x: Tensor, depth: int, act) -> Tensor:
    """``depth`` hidden layers with ``act``, then a linear output layer."""
    h = x
    for i in range(depth):
        h = act(F.linear(h, params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]))
    return F.linear(h, params[f"layers.{depth}.weight"], params[f"layers.{depth}.bias"])


class MSETask(Task):
    """Data, batches, the MSE loss and metrics; subclasses set the targets and the architecture."""

    kind: str
    is_classifier = False

    def __init__(self, dataset: str | Dataset, hidden_sizes: Sequence[int], activation: str,
                 batch_size: int | None, device: str | torch.device, dtype: torch.dtype | str,
                 root: str | None, name: str | None):
        self.hidden_sizes = _check_hidden_sizes(hidden_sizes)
        self.activation = activation
        self._act = choose("activation", activation, ACTIVATIONS)
        self.device = torch.device(device)
        self.dtype = check_float_dtype(dtype)
        self.batch_size = (None if batch_size is None else check_int("batch_size", batch_size, 1))
        if not isinstance(dataset, Dataset):
            dataset = make_dataset(dataset, root=root, device=self.device)
        self.dataset = dataset
        self.name = name if name is not None else f"{self.kind}_{dataset.name}"
        xs = {split: dataset.split(split)[0].to(self.device, self.dtype) for split in ("train", "test")}
        targets = self._targets(xs)
        self._data = {split: (xs[split], targets[split]) for split in xs}

    @property
    def num_outputs(self) -> int:
        return self._data["train"][1].shape[1]

    def _targets(self, xs: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def init_params(self, generator: torch.Generator) -> Params:
        sizes = (self.dataset.num_features, *self.hidden_sizes, self.num_outputs)
        return mlp_init(sizes, generator, self.dtype, self.device)

    def predict(self, params: Params, x: Tensor) -> Tensor:
        return mlp_forward(params, x, len(self.hidden_sizes), self._act)

    def sample_batch(self, generator: torch.Generator, split: str = "train") -> Batch:
        """``(x, t)``: ``batch_size`` examples of ``split`` drawn with replacement, or all of it."""
        return sample_examples(self._data[check_split(split)], self.batch_size, generator, self.device)

    def loss(self, params: Params, batch: Batch) -> Tensor:
        x, t = batch
        return F.mse_loss(self.predict(params, x), t)

    @torch.no_grad()
    def metrics(self, params: Params, split: str = "test", max_examples: int | None = None) -> dict[str, float]:
        """Mean squared error on ``split`` (its first ``max_examples`` if given); no accuracy."""
        x, t = first_examples(self._data[check_split(split)], max_examples)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for start in range(0, len(x), EVAL_CHUNK):
            pred = self.predict(params, x[start:start + EVAL_CHUNK])
            total += F.mse_loss(pred, t[start:start + EVAL_CHUNK], reduction="sum").double()
        return {"loss": total.item() / t.numel()}


class TeacherRegressionTask(MSETask):
    """An MLP regressing the standardised outputs of a fixed random teacher MLP; see the module docstring.

    Args:
        dataset: inputs: a dataset name (``digits``, ``mnist1d``, ...) or a :class:`Dataset`.
        hidden_sizes, activation: the student's hidden layers (``(32,)``, ``"relu"``).
        teacher_hidden_sizes, teacher_activation: the teacher's (``(32,)``, ``"tanh"``).
        outputs: number of regression targets (4).
        teacher_seed: seed of the teacher's weights (0): the same task everywhere.
        batch_size, device, dtype, root, name: as for the classifiers (name: ``regression_<dataset>``).
    """

    kind = "regression"

    def __init__(self, dataset: str | Dataset = "digits", hidden_sizes: Sequence[int] = (32,),
                 activation: str = "relu", teacher_hidden_sizes: Sequence[int] = (32,),
                 teacher_activation: str = "tanh", outputs: int = 4, teacher_seed: int = 0,
                 batch_size: int | None = 128, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str = torch.float32, root: str | None = None, name: str | None = None):
        self.teacher_hidden_sizes = _check_hidden_sizes(teacher_hidden_sizes)
        self.teacher_activation = teacher_activation
        choose("teacher_activation", teacher_activation, ACTIVATIONS)
        self.outputs = check_int("outputs", outputs, 1)
        self.teacher_seed = check_int("teacher_seed", teacher_seed)
        super().__init__(dataset, hidden_sizes, activation, batch_size, device, dtype, root, name)

    def _targets(self, xs: dict[str, Tensor]) -> dict[str, Tensor]:
        sizes = (self.dataset.num_features, *self.teacher_hidden_sizes, self.outputs)
        teacher = mlp_init(sizes, torch.Generator().manual_seed(self.teacher_seed), torch.float64, self.device)
        act = ACTIVATIONS[self.teacher_activation]
        raw = {s: mlp_forward(teacher, x.double(), len(self.teacher_hidden_sizes), act) for s, x in xs.items()}
        mean, std = raw["train"].mean(0), raw["train"].std(0).clamp_min(1e-12)
        return {s: ((r - mean) / std).to(self.dtype) for s, r in raw.items()}


class AutoencoderTask(MSETask):
    """An MLP autoencoder reconstructing its (normalised) input through a bottleneck.

    Args:
        dataset: a dataset name or :class:`Dataset` (``digits``: 64 inputs; ``mnist5k``: 784).
        hidden_sizes: encoder and decoder widths, the bottleneck in the middle (``(32, 8, 32)``).
        activation: of the hidden layers (``"relu"``); the output layer is linear.
        batch_size, device, dtype, root, name: as for the classifiers (name: ``autoencoder_<dataset>``).
    """

    kind = "autoencoder"

    def __init__(self, dataset: str | Dataset = "digits", hidden_sizes: Sequence[int] = (32, 8, 32),
                 activation: str = "relu", batch_size: int | None = 128, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str = torch.float32, root: str | None = None, name: str | None = None):
        if not _check_hidden_sizes(hidden_sizes):
            raise ValueError("hidden_sizes must name at least one hidden layer (the bottleneck); got []")
        super().__init__(dataset, hidden_sizes, activation, batch_size, device, dtype, root, name)

    def _targets(self, xs: dict[str, Tensor]) -> dict[str, Tensor]:
        return xs
