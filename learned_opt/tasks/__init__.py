"""Inner problems for learned optimizers, and their data.

Registry::

    make_task("mlp", dataset="digits", hidden_sizes=[20])   # -> Task
    make_family("quadratic_family", dim=10)                  # -> TaskFamily
    make_dataset("mnist5k")                                  # -> Dataset

``TASKS``, ``FAMILIES`` and ``DATASETS`` map the allowed names to their
constructors; an unknown name raises ``ValueError`` listing the allowed ones.
"""
from __future__ import annotations

from typing import Any, Callable

from .augment import ReparamTask, log_uniform_scales
from .base import Batch, Params, SingleTaskFamily, Task, TaskFamily, choose
from .conv import ConvTask
from .datasets import DATASETS, Dataset, clear_cache, download, make_dataset, read_idx
from .general import GeneralFamily
from .mlp import ACTIVATIONS, LogRegTask, MLPFamily, MLPTask
from .models import MODELS, TEXT_SOURCES, module_task
from .module import ModuleTask
from .noisy_quadratic import NoisyQuadraticTask
from .quadratic import QuadraticFamily, QuadraticTask
from .regression import AutoencoderTask, TeacherRegressionTask
from .surfaces import SURFACES, Surface

TASKS: dict[str, Callable[..., Task]] = {
    "quadratic": QuadraticTask,
    "noisy_quadratic": NoisyQuadraticTask,
    "mlp": MLPTask,
    "logreg": LogRegTask,
    "conv": ConvTask,
    **SURFACES,
    "regression": TeacherRegressionTask,
    "autoencoder": AutoencoderTask,
    "module": module_task,
}


def make_task(name: str, **kwargs: Any) -> Task:
    """Build task ``name`` (a key of ``TASKS``) with constructor arguments ``kwargs``."""
    return choose("task", name, TASKS)(**kwargs)


def _single_task_family(task: str = "quadratic", **task_kwargs: Any) -> SingleTaskFamily:
    """``SingleTaskFamily(make_task(task, **task_kwargs))``."""
    return SingleTaskFamily(make_task(task, **task_kwargs))


FAMILIES: dict[str, Callable[..., TaskFamily]] = {
    "quadratic_family": QuadraticFamily,
    "mlp_family": MLPFamily,
    "single_task": _single_task_family,
    "general_family": GeneralFamily,
}


def make_family(name: str, **kwargs: Any) -> TaskFamily:
    """Build task family ``name`` (a key of ``FAMILIES``) with constructor arguments ``kwargs``."""
    return choose("family", name, FAMILIES)(**kwargs)


__all__ = [
    "ACTIVATIONS", "AutoencoderTask", "Batch", "ConvTask", "DATASETS", "Dataset", "FAMILIES", "GeneralFamily",
    "LogRegTask", "MLPFamily", "MLPTask", "MODELS", "ModuleTask", "TEXT_SOURCES", "module_task", "NoisyQuadraticTask", "Params", "QuadraticFamily", "QuadraticTask", "ReparamTask", "SURFACES",
    "SingleTaskFamily", "Surface", "TASKS", "Task", "TaskFamily", "TeacherRegressionTask", "clear_cache", "download",
    "log_uniform_scales", "make_dataset", "make_family", "make_task", "read_idx",
]
