"""Each tensor's step times the signal-to-noise ratio of its gradient, as Adam's steps have it.

With its own Adam moments (``beta1``, ``beta2``; ``t`` = updates made before this one, ``t + 1`` after)::

    m <- beta1 * m + (1 - beta1) * g,   v <- beta2 * v + (1 - beta2) * g^2
    m_hat = m / (1 - beta1^(t+1)),      v_hat = v / (1 - beta2^(t+1))
    s <- s * sqrt(mean(m_hat^2) / (mean(v_hat) + eps))        (means over the tensor)

The factor is the RMS of Adam's ``m_hat / sqrt(v_hat)`` over the tensor (computed as a ratio of means): about
1 while the gradient keeps its direction and about ``sqrt((1 - beta1) / (1 + beta1)) = 0.23`` when it is
pure noise. A rule with a normalised output otherwise takes the same step RMS in noisy and in steady phases,
where Adam's steps shrink with the signal-to-noise ratio; this puts that back, still free of the gradient's
scale. State: ``m`` and ``v`` (full shape). No meta-parameters.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from baselines.base import Params, State, check_range

from .base import EPS, Controller

__all__ = ["SNRScale"]


class SNRScale(Controller):
    """The signal-to-noise scale; see the module docstring. Args: ``beta1``, ``beta2``, each in (0, 1)."""

    name = "snr"
    keys = ("m", "v")

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999):
        super().__init__()
        check_range("snr.beta1", beta1, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_range("snr.beta2", beta2, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        self.beta1, self.beta2 = float(beta1), float(beta2)

    def config(self) -> dict[str, Any]:
        return {"beta1": self.beta1, "beta2": self.beta2}

    def init_tensor(self, p: Tensor) -> dict[str, Tensor]:
        return {"m": torch.zeros_like(p), "v": torch.zeros_like(p)}

    def apply(self, steps: Params, grads: Params, params: Params, state: State, t: int) -> tuple[Params, State]:
        b1, b2 = self.beta1, self.beta2
        new: State = {"m": {}, "v": {}}
        out: Params = {}
        for k, s in steps.items():
            g = grads[k].to(s.dtype)
            m = b1 * state["m"][k].to(s.dtype) + (1 - b1) * g
            v = b2 * state["v"][k].to(s.dtype) + (1 - b2) * g * g
            new["m"][k], new["v"][k] = m, v
            dims = self.dims(s)
            mean = (lambda x: x.mean(dim=dims, keepdim=True)) if dims else (lambda x: x)  # noqa: E731
            ratio = mean(m * m) / (1 - b1 ** (t + 1)) ** 2 / (mean(v) / (1 - b2 ** (t + 1)) + EPS)
            out[k] = s * torch.sqrt(ratio)
        return out, new
