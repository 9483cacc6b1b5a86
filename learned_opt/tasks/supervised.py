"""Shared machinery of the classification tasks (MLP, logistic regression, conv net).

A subclass defines ``init_params`` and ``logits(params, x, *extra)``; this base
class owns the data, batching, the loss and the metrics::

    loss(params, (x, y, *extra)) = mean_i CE(logits(params, x, *extra)_i, y_i)
    CE(z, y) = -z_y + log sum_k exp(z_k)
"""
from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.checks import check_int

from .base import Batch, Params, Task, check_float_dtype, check_split, first_examples, sample_examples
from .datasets import Dataset, make_dataset

EVAL_CHUNK = 8192  # examples per forward pass in metrics, to bound memory


class ClassificationTask(Task):
    """Cross-entropy classification on a :class:`~learned_opt.tasks.datasets.Dataset`.

    Args:
        dataset: a dataset name (loaded with ``make_dataset(dataset, root=root,
            device=device)``) or a ready :class:`Dataset`.
        batch_size: examples per batch (drawn uniformly with replacement), or
            ``None`` for the whole split.
        device, dtype: where and in which precision params and data live.
        root: data root for the idx datasets.
        name: task name; defaults to ``"<kind>_<dataset>"``.
    """

    kind: str  # name prefix, set by subclasses
    is_classifier = True

    def __init__(self, dataset: str | Dataset = "digits", batch_size: int | None = 128,
                 device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
                 root: str | None = None, name: str | None = None):
        self.device = torch.device(device)
        self.dtype = check_float_dtype(dtype)
        self.batch_size = (None if batch_size is None else check_int("batch_size", batch_size, 1))
        if not isinstance(dataset, Dataset):
            dataset = make_dataset(dataset, root=root, device=self.device)
        self.dataset = dataset
        self.name = name if name is not None else f"{self.kind}_{dataset.name}"
        self._data = {split: (x.to(self.device, self.dtype), y.to(self.device))
                      for split, (x, y) in (("train", dataset.split("train")), ("test", dataset.split("test")))}

    @abc.abstractmethod
    def logits(self, params: Params, x: Tensor, *extra: Tensor) -> Tensor:
        """Class scores of shape ``(n, num_classes)`` for flattened inputs ``x``."""

    def sample_batch(self, generator: torch.Generator, split: str = "train") -> Batch:
        """``(x, y)``: ``batch_size`` examples of ``split`` drawn with replacement, or all of it."""
        return sample_examples(self._data[check_split(split)], self.batch_size, generator, self.device)

    def loss(self, params: Params, batch: Batch) -> Tensor:
        """Mean cross-entropy of ``logits(params, x, *extra)`` against ``y``."""
        x, y, *extra = batch
        return F.cross_entropy(self.logits(params, x, *extra), y)

    @torch.no_grad()
    def metrics(self, params: Params, split: str = "test", max_examples: int | None = None) -> dict[str, float]:
        """Mean cross-entropy and accuracy on ``split`` (its first ``max_examples`` if given)."""
        x, y = first_examples(self._data[check_split(split)], max_examples)
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for start in range(0, len(y), EVAL_CHUNK):
            logits = self.logits(params, x[start:start + EVAL_CHUNK])
            labels = y[start:start + EVAL_CHUNK]
            total_loss += F.cross_entropy(logits, labels, reduction="sum").double()
            correct += (logits.argmax(dim=1) == labels).sum()
        return {"loss": total_loss.item() / len(y), "accuracy": correct.item() / len(y)}
