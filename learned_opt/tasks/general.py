"""A broad meta-training distribution: small image/signal classifiers of many shapes, batch sizes,
horizons and parameter scales (task diversity as in Metz et al. 2020, augmentation as in
Metz et al. 2022).

Each :meth:`GeneralFamily.sample` draws, from the generator it is given and nothing else:

* a dataset from ``datasets`` (default: ``digits``, ``mnist5k_8x8``, ``mnist1d``, ``fashion_8x8``;
  datasets whose files are absent are dropped with a warning when the family is built);
* an architecture from ``architectures`` that fits the data (``conv`` needs images):
  ``mlp``: depth uniform in ``depths``, one width log-uniform in ``widths`` for every hidden layer,
  an activation from ``activations``; ``conv``: ``conv_depths`` stride-2 3x3 ReLU convolutions of
  one channel count log-uniform in ``conv_channels``, global average pooling, a linear head;
* a batch size log-uniform in ``batch_sizes``;
* a horizon log-uniform in ``[horizon_min, horizon_max]``, rounded to a multiple of
  ``truncation`` inside that range, set as the task's ``horizon`` attribute (the number of inner
  steps after which a meta-trainer should reset this inner problem);
* with ``augment`` and probability ``augment_probability``: a
  :class:`~learned_opt.tasks.augment.ReparamTask` wrapper with per-tensor scales log-uniform in
  ``augment_range``.

Integer ranges are ``[low, high]`` inclusive; a log-uniform integer is
``round(exp(U(log(low - 0.5), log(high + 0.5))))``, so every value in the range can occur.
Task names spell the draw out, e.g. ``mlp_digits_2x37_gelu_b64_h400`` (``_reparam`` appended when
augmented). Datasets are loaded once (``make_dataset`` cache) and shared by the tasks.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import torch

from .augment import ReparamTask, check_scale_range, log_uniform_scales
from baselines.checks import boolean, check_int, check_number

from .base import Task, TaskFamily, check_float_dtype, choose
from .conv import ConvTask
from .datasets import DATASETS, FILE_DATASETS, make_dataset
from .mlp import ACTIVATIONS, MLPTask

__all__ = ["GeneralFamily", "ARCHITECTURES"]

ARCHITECTURES = ("mlp", "conv")
DEFAULT_DATASETS = ("digits", "mnist5k_8x8", "mnist1d", "fashion_8x8")
NUM_DRAWS = 10  # uniform numbers drawn per task before the augmentation scales (fixed, whatever the branch)


def _int_range(field: str, value: Sequence[int], low: int = 1) -> tuple[int, int]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value) and low <= value[0] <= value[1])
    if not ok:
        raise ValueError(f"{field}={value!r} must be [low, high]: integers with {low} <= low <= high")
    return int(value[0]), int(value[1])


def _names(field: str, kind: str, values: Sequence[str], table) -> tuple[str, ...]:
    if isinstance(values, str) or not values:
        raise ValueError(f"{field} must be a non-empty list; got {values!r}")
    for v in values:
        choose(kind, v, table)
    if len(set(values)) != len(values):
        raise ValueError(f"{field}={list(values)!r} must be distinct")
    return tuple(values)


def _pick(u: float, options: Sequence) -> Any:
    return options[min(int(u * len(options)), len(options) - 1)]


def _uniform_int(u: float, low: int, high: int) -> int:
    return min(low + int(u * (high - low + 1)), high)


def _log_uniform_int(u: float, low: int, high: int) -> int:
    a, b = math.log(low - 0.5) if low > 1 else math.log(0.5), math.log(high + 0.5)
    return min(max(int(round(math.exp(a + u * (b - a)))), low), high)


class GeneralFamily(TaskFamily):
    """The broad task distribution for a general-purpose learned optimizer; see the module docstring.

    Args:
        datasets: dataset names (``DATASETS``); each needs at least one fitting architecture.
        architectures: ``"mlp"`` and/or ``"conv"``.
        widths, depths: MLP hidden width (log-uniform) and depth (uniform) ranges, ``[16, 128]``, ``[1, 3]``.
        activations: MLP activations (``relu``, ``tanh``, ``gelu``, ``sigmoid``).
        conv_channels, conv_depths: conv channel (log-uniform) and layer-count (uniform) ranges.
        batch_sizes: batch-size range (log-uniform), ``[16, 256]``.
        horizon_min, horizon_max, truncation: the horizon range and its granularity.
        augment: whether tasks may be augmented; augment_probability: the share that are;
            augment_range: ``[low, high]`` of the per-tensor scales.
        device, dtype, root: where tasks live, their dtype, the data root for file datasets.
    """

    def __init__(self, datasets: Sequence[str] = DEFAULT_DATASETS, architectures: Sequence[str] = ARCHITECTURES,
                 widths: Sequence[int] = (16, 128), depths: Sequence[int] = (1, 3),
                 activations: Sequence[str] = ("relu", "tanh", "gelu", "sigmoid"),
                 conv_channels: Sequence[int] = (4, 16), conv_depths: Sequence[int] = (1, 2),
                 batch_sizes: Sequence[int] = (16, 256), horizon_min: int = 200, horizon_max: int = 2000,
                 truncation: int = 50, augment: bool = True, augment_probability: float = 0.5,
                 augment_range: Sequence[float] = (1e-3, 1e3), device: str | torch.device = "cpu",
                 dtype: torch.dtype | str = torch.float32, root: str | None = None):
        requested = _names("datasets", "dataset", datasets, DATASETS)
        self.architectures = _names("architectures", "architecture", architectures, {a: a for a in ARCHITECTURES})
        self.widths, self.depths = _int_range("widths", widths), _int_range("depths", depths)
        self.activations = _names("activations", "activation", activations, ACTIVATIONS)
        self.conv_channels = _int_range("conv_channels", conv_channels)
        self.conv_depths = _int_range("conv_depths", conv_depths)
        self.batch_sizes = _int_range("batch_sizes", batch_sizes)
        self.truncation = check_int("truncation", truncation, 1)
        check_int("horizon_min", horizon_min, 1)
        check_int("horizon_max", horizon_max, 1)
        self.horizon_min, self.horizon_max = horizon_min, horizon_max
        self._k = (math.ceil(horizon_min / truncation), horizon_max // truncation)
        if not 1 <= self._k[0] <= self._k[1]:
            raise ValueError(f"horizon_min={horizon_min}, horizon_max={horizon_max}: the range must hold a "
                             f"multiple of truncation={truncation}")
        boolean("augment", augment)
        self.augment = augment
        self.augment_probability = check_number("augment_probability", augment_probability, 0.0, 1.0)
        self.augment_range = check_scale_range("augment_range", augment_range)
        self.device, self.dtype, self.root = torch.device(device), check_float_dtype(dtype), root

        self.data = {}
        for name in requested:
            try:
                self.data[name] = make_dataset(name, root=root, device=self.device)
            except FileNotFoundError as err:
                if name not in FILE_DATASETS:
                    raise
                warnings.warn(f"general_family: dataset {name!r} is skipped, its files are absent "
                              f"({str(err).splitlines()[0]}; set root or $LEARNED_OPT_DATA to use it)",
                              RuntimeWarning, stacklevel=2)
        if not self.data:
            raise ValueError(f"datasets={list(requested)!r}: none is available")
        self.datasets = tuple(self.data)
        self._archs = {}
        for name, ds in self.data.items():
            fits = [a for a in self.architectures if a == "mlp" or len(ds.input_shape) == 3]
            if not fits:
                raise ValueError(f"dataset {name!r} (input_shape {ds.input_shape}) fits none of "
                                 f"architectures={list(self.architectures)!r} (conv needs images)")
            self._archs[name] = tuple(fits)

    def sample(self, generator: torch.Generator) -> Task:
        u = torch.rand(NUM_DRAWS, generator=generator, device=generator.device, dtype=torch.float64).tolist()
        dataset = _pick(u[0], self.datasets)
        arch = _pick(u[1], self._archs[dataset])
        batch_size = _log_uniform_int(u[2], *self.batch_sizes)
        k_low, k_high = self._k
        horizon_raw = math.exp(math.log(self.horizon_min) + u[3] * (math.log(self.horizon_max)
                                                                    - math.log(self.horizon_min)))
        horizon = min(max(round(horizon_raw / self.truncation), k_low), k_high) * self.truncation
        common = dict(batch_size=batch_size, device=self.device, dtype=self.dtype)
        if arch == "mlp":
            depth, width = _uniform_int(u[4], *self.depths), _log_uniform_int(u[5], *self.widths)
            activation = _pick(u[6], self.activations)
            task: Task = MLPTask(self.data[dataset], hidden_sizes=[width] * depth, activation=activation,
                                 name=f"mlp_{dataset}_{depth}x{width}_{activation}_b{batch_size}_h{horizon}", **common)
        else:
            depth, channels = _uniform_int(u[4], *self.conv_depths), _log_uniform_int(u[5], *self.conv_channels)
            task = ConvTask(self.data[dataset], channels=[channels] * depth,
                            name=f"conv_{dataset}_{depth}x{channels}_b{batch_size}_h{horizon}", **common)
        if self.augment and u[7] < self.augment_probability:
            names = list(task.init_params(torch.Generator().manual_seed(0)))
            task = ReparamTask(task, log_uniform_scales(names, generator, *self.augment_range))
        task.horizon = horizon
        return task
