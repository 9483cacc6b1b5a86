"""The noisy quadratic model (NQM) of Wu et al. (2018, "Understanding short-horizon bias in
stochastic meta-optimization") and Zhang et al. (2019)::

    L(theta; c) = 1/2 * sum_i h_i * (theta_i - c_i)^2,     c_i ~ N(0, sigma_i^2) fresh every batch
    h_i = i^(-decay)              (i = 1..d: curvatures from 1 down to d^(-decay), ill-conditioned)
    sigma_i^2 = noise * h_i       (gradient noise is larger along the sharper directions)
    theta_0 ~ N(0, init_scale^2 I)

Under SGD with learning rate ``lr`` (``theta <- theta - lr * grad``), each coordinate's second
moment ``v_i = E[theta_i^2]`` follows exactly::

    v_i(t+1) = (1 - lr h_i)^2 v_i(t) + lr^2 h_i^2 sigma_i^2,     E[L(t)] = 1/2 sum_i h_i (v_i(t) + sigma_i^2)

so the expected loss of every learning rate over any horizon is known in closed form
(:meth:`NoisyQuadraticTask.expected_losses`): the reference the short-horizon-bias experiment
draws its grid optimum from, beside the measured grid. Parameters ``{"theta": (d,)}``; a batch
is ``(c,)``; ``metrics`` reports the expected (noise-free) loss.
"""
from __future__ import annotations

import torch
from torch import Tensor

from baselines.checks import check_int, check_number

from .base import Batch, Params, Task, check_float_dtype, check_split, randn


class NoisyQuadraticTask(Task):
    """See the module docstring.

    Args:
        dim: ``d``. decay: curvature exponent (``h_i = i^-decay``), >= 0. noise: ``sigma_i^2 / h_i``, >= 0.
        init_scale: standard deviation of ``theta_0``, > 0. device, dtype, name: as for other tasks.
    """

    batch_size = 1
    is_classifier = False

    def __init__(self, dim: int = 100, decay: float = 1.0, noise: float = 1.0, init_scale: float = 1.0,
                 device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
                 name: str = "noisy_quadratic"):
        self.dim = check_int("dim", dim, 1)
        self.decay = check_number("decay", decay, 0.0)
        self.noise = check_number("noise", noise, 0.0)
        self.init_scale = check_number("init_scale", init_scale, 0.0, low_open=True)
        self.device, self.dtype, self.name = torch.device(device), check_float_dtype(dtype), name
        i = torch.arange(1, self.dim + 1, dtype=torch.float64)
        self.h64 = i.pow(-self.decay)
        self.h = self.h64.to(self.device, self.dtype)
        self.sigma = (self.noise * self.h64).sqrt().to(self.device, self.dtype)

    def init_params(self, generator: torch.Generator) -> Params:
        return {"theta": randn((self.dim,), generator, self.dtype, self.device) * self.init_scale}

    def sample_batch(self, generator: torch.Generator, split: str = "train") -> Batch:
        check_split(split)
        return (randn((self.dim,), generator, self.dtype, self.device) * self.sigma,)

    def loss(self, params: Params, batch: Batch) -> Tensor:
        (c,) = batch
        d = params["theta"] - c
        return 0.5 * (self.h * d * d).sum(-1)

    @torch.no_grad()
    def metrics(self, params: Params, split: str = "test", max_examples: int | None = None) -> dict[str, float]:
        check_split(split)
        theta = params["theta"].double().cpu()
        return {"loss": float(0.5 * (self.h64 * (theta * theta + self.noise * self.h64)).sum())}

    def expected_losses(self, lr: Tensor | float, steps: int) -> Tensor:
        """``E[L(t)]`` for ``t = 0..steps-1`` under SGD with constant ``lr`` (a float or a float64
        tensor of any shape ``S``; the result has shape ``(*S, steps)``), in float64, from
        ``theta_0 ~ N(0, init_scale^2 I)``. Differentiable with respect to a tensor ``lr``."""
        lr = torch.as_tensor(lr, dtype=torch.float64).unsqueeze(-1)            # (*S, 1)
        h, s2 = self.h64, self.noise * self.h64
        v = torch.full_like(lr * h, self.init_scale ** 2)                      # (*S, d)
        out = []
        for _ in range(steps):
            out.append(0.5 * (h * (v + s2)).sum(-1))
            v = (1 - lr * h) ** 2 * v + lr * lr * h * h * s2
        return torch.stack(out, -1)
