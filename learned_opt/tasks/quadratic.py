"""The random quadratic of Andrychowicz et al. (2016), "Learning to learn by
gradient descent by gradient descent"::

    f(theta) = ||W theta - y||^2,   W in R^{d x d},  y in R^d,  W_ij, y_i ~ N(0, 1)
    grad f(theta) = 2 W^T (W theta - y)

``W`` and ``y`` are drawn once, at construction; the parameters are
``{"theta": (d,)}`` with ``theta ~ N(0, I)`` at initialisation. The problem is
deterministic: ``sample_batch`` returns ``()``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from baselines.checks import check_int

from .base import Batch, Params, Task, TaskFamily, check_float_dtype, check_split, randn


class QuadraticTask(Task):
    """One random quadratic; see the module docstring.

    Args:
        dim: dimension ``d`` (default 10, as in the paper).
        seed: seeds a CPU generator for ``W`` and ``y`` when ``generator`` is not given.
        generator: draw ``W`` and ``y`` from this generator instead (used by the family).
        device, dtype: where and in which precision ``W``, ``y`` and params live.
            Numbers are drawn in float32 and then cast, so ``dtype`` changes the
            precision, not the problem.
    """

    batch_size = None

    def __init__(self, dim: int = 10, seed: int = 0, generator: torch.Generator | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
                 name: str = "quadratic"):
        self.dim = check_int("dim", dim, 1)
        self.device = torch.device(device)
        self.dtype = check_float_dtype(dtype)
        self.name = name
        if generator is None:
            generator = torch.Generator().manual_seed(seed)
        self.W = randn((dim, dim), generator, self.dtype, self.device)
        self.y = randn((dim,), generator, self.dtype, self.device)
        self._theta64: Tensor | None = None

    def init_params(self, generator: torch.Generator) -> Params:
        return {"theta": randn((self.dim,), generator, self.dtype, self.device)}

    def sample_batch(self, generator: torch.Generator, split: str = "train") -> Batch:
        check_split(split)
        return ()

    def loss(self, params: Params, batch: Batch = ()) -> Tensor:
        residual = self.W @ params["theta"] - self.y
        return (residual * residual).sum()

    @torch.no_grad()
    def metrics(self, params: Params, split: str = "test", max_examples: int | None = None) -> dict[str, float]:
        check_split(split)
        return {"loss": self.loss(params).item()}

    def _solution64(self) -> Tensor:
        """Least-squares minimiser in float64 on the CPU (``lstsq`` with the SVD-based ``gelsd`` driver)."""
        if self._theta64 is None:
            w, y = self.W.double().cpu(), self.y.double().cpu()
            self._theta64 = torch.linalg.lstsq(w, y.unsqueeze(1), driver="gelsd").solution.squeeze(1)
        return self._theta64

    def solution(self) -> Tensor:
        """``argmin_theta ||W theta - y||^2`` (minimum-norm if ``W`` is singular), on the task's device and dtype."""
        return self._solution64().to(self.device, self.dtype)

    def min_loss(self) -> float:
        """``min_theta f(theta)``, evaluated in float64 (about 0 when ``W`` is invertible)."""
        residual = self.W.double().cpu() @ self._solution64() - self.y.double().cpu()
        return (residual @ residual).item()


class QuadraticFamily(TaskFamily):
    """Random quadratics of one dimension: each sample draws a new ``W`` and ``y``."""

    def __init__(self, dim: int = 10, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32):
        self.dim = check_int("dim", dim, 1)
        self.device = torch.device(device)
        self.dtype = check_float_dtype(dtype)

    def sample(self, generator: torch.Generator) -> QuadraticTask:
        return QuadraticTask(self.dim, generator=generator, device=self.device, dtype=self.dtype)
