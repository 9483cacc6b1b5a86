"""A per-tensor step size adapted online by the sign of the hypergradient (Baydin et al. 2018, in log space,
made free of scale and size).

For each tensor with step ``s`` (from the rule before it), fresh gradient ``g``, ``n`` coordinates (a
population dim excluded), ``d'`` the last controlled direction (``s / rms(s)`` of the previous update, zero
before the first) and ``t`` the number of updates made before this one::

    z  = <g, d'> * sqrt(n) / (|g| |d'| + eps)            (cosine of the fresh gradient and the last step, x sqrt(n))
    a  = tanh(z)                                          (mu = 0)
    a <- mu * a + (1 - mu) * tanh(z);  a / (1 - mu^max(t, 1))   (mu > 0: a bias-corrected momentum, state ``velocity``)
    a <- k * a where a < 0                                (shrink k: fall k times faster than rise)
    l <- clamp(l + exp(log_gain) * a, F, R)               (F = -R unless a floor is set)
    s <- s * exp(l)

``<g, d'> > 0`` means the loss still falls along the last step, so a larger step would have helped
(``dL/d log(step) = -step <g, d'>``); an overshooting step turns it negative. ``z`` is ``cos * sqrt(n)``
because a noise-only gradient gives a cosine of about ``1 / sqrt(n)``: ``tanh(z)`` is then about as noisy
for every tensor size. The signal is a one-step (greedy) hypergradient: where the gradient is mostly
minibatch noise it is biased downwards, and with ``k > 1`` a pure-noise signal still has mean
``-(k - 1) / 2 * E|tanh z|``; the floor ``F`` bounds that drift.

State: ``log_step`` (``l``, per tensor), ``last_dir`` (``d'``, full shape), ``velocity`` (``a``, per tensor,
only with ``mu > 0``). Meta-parameter: ``log_gain`` (starts at ``log(gain)``; with
``learn_gain=False`` the gain is a fixed number instead).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from baselines.base import Params, State, check_range

from .base import EPS, Controller, scaled_cos, shrink_negative

__all__ = ["HypergradientStepSize"]


class HypergradientStepSize(Controller):
    """The hypergradient step size; see the module docstring.

    Args:
        gain: ``> 0``, the initial gain ``exp(log_gain)``.
        range: ``R > 0``: ``l`` stays in ``[F, R]``.
        shrink: ``k > 0``: negative signals are multiplied by ``k`` (1: rise and fall alike).
        floor: ``F`` in ``[-R, 0]``, or ``None`` for ``-R``.
        momentum: ``mu`` in ``[0, 1)``: smooth the signal before it moves ``l`` (0: no smoothing).
        learn_gain: ``log_gain`` is a meta-parameter (True), or the gain is a fixed number (False).
    """

    name = "hypergradient"

    def __init__(self, gain: float = 0.1, range: float = 3.0, shrink: float = 1.0, floor: float | None = None,
                 momentum: float = 0.0, learn_gain: bool = True):
        super().__init__()
        check_range("hypergradient.gain", gain, 0.0, low_inclusive=False)
        check_range("hypergradient.range", range, 0.0, low_inclusive=False)
        check_range("hypergradient.shrink", shrink, 0.0, low_inclusive=False)
        check_range("hypergradient.momentum", momentum, 0.0, 1.0, high_inclusive=False)
        if floor is not None:
            check_range("hypergradient.floor", floor, -float(range), 0.0)
            floor = float(floor)
        if not isinstance(learn_gain, bool):
            raise ValueError(f"hypergradient.learn_gain={learn_gain!r} is not allowed; allowed: true, false")
        self.range, self.shrink = float(range), float(shrink)
        self.floor, self.momentum = floor, float(momentum)
        self.keys = ("log_step", "last_dir") + (("velocity",) if self.momentum > 0 else ())
        self.init_gain(gain, learn_gain)

    def config(self) -> dict[str, Any]:
        return {"gain": self.gain_value, "range": self.range, "shrink": self.shrink, "floor": self.floor,
                "momentum": self.momentum, "learn_gain": self.learn_gain}

    def init_tensor(self, p: Tensor) -> dict[str, Tensor]:
        out = {"log_step": self.per_tensor_zeros(p), "last_dir": torch.zeros_like(p)}
        if self.momentum > 0:
            out["velocity"] = self.per_tensor_zeros(p)
        return out

    def apply(self, steps: Params, grads: Params, params: Params, state: State, t: int) -> tuple[Params, State]:
        new: State = {key: {} for key in self.keys}
        out: Params = {}
        mu, low = self.momentum, -self.range if self.floor is None else self.floor
        for k, s in steps.items():
            dims = self.dims(s)
            last = state["last_dir"][k].to(s.dtype)
            signal = torch.tanh(scaled_cos(grads[k].to(s.dtype), last, dims))
            if mu > 0:
                velocity = mu * state["velocity"][k].to(s.dtype) + (1 - mu) * signal
                new["velocity"][k] = velocity
                signal = velocity / (1 - mu ** max(t, 1))
            signal = shrink_negative(signal, self.shrink)
            log_step = torch.clamp(state["log_step"][k].to(s.dtype) + self.gain(s) * signal,
                                   low, self.range)
            mean_sq = (s * s).mean(dim=dims, keepdim=True) if dims else s * s
            new["log_step"][k], new["last_dir"][k] = log_step, s * torch.rsqrt(mean_sq + EPS)
            out[k] = s * torch.exp(log_step)
        return out, new
