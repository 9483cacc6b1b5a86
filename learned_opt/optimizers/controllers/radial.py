"""The part of each step along the tensor itself (its growth), scaled by a factor adapted online.

For each tensor ``w`` with at least one dim, step ``s``, fresh gradient ``g`` and ``n`` coordinates (a
population dim excluded)::

    w_hat = w / |w|,   c = <s, w_hat>                       (the radial coefficient: ``new = w - s``, c < 0 grows w)
    z     = <g, w> * sqrt(n) / (|g| |w| + eps)              (cosine of the fresh gradient and w, x sqrt(n))
    a     = tanh(z) * sign(c_last);  a <- k * a where a < 0  (c_last: the last update's c; shrink k)
    r    <- clamp(r + exp(log_gain) * a, -R, 0)
    s    <- s + (exp(r) - 1) * c * w_hat

Where the fresh gradient opposes the last radial move (the growth it made now costs loss), ``exp(r)`` falls
towards ``exp(-R)``; where it agrees, it stays at 1 (the rule's own radial part). A rule meta-trained on
short classification runs learns to grow every tensor (``cos(step, w)`` about -0.2 to -0.4 per tensor,
where Adam's step has about 0): that lowers a cross-entropy loss quickly by sharpening the logits, and
saturates units on a regression. Tensors with no dims are left alone.

State: ``log_radial`` (``r``) and ``last_radial`` (``c``), both per tensor. Meta-parameter: ``log_gain``
with ``learn_gain=True`` (by default the gain is a fixed number).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from baselines.base import Params, State, check_range

from .base import EPS, Controller, scaled_cos, shrink_negative

__all__ = ["RadialGain"]


class RadialGain(Controller):
    """The radial gain; see the module docstring.

    Args:
        gain: ``> 0``, the gain ``exp(log_gain)`` of ``r``'s updates.
        range: ``R > 0``: ``r`` stays in ``[-R, 0]``.
        shrink: ``k > 0``: negative signals are multiplied by ``k``.
        learn_gain: ``log_gain`` is a meta-parameter (True), or the gain is a fixed number (False, the default).
    """

    name = "radial"
    keys = ("log_radial", "last_radial")

    def __init__(self, gain: float = 0.1, range: float = 4.0, shrink: float = 1.0, learn_gain: bool = False):
        super().__init__()
        check_range("radial.gain", gain, 0.0, low_inclusive=False)
        check_range("radial.range", range, 0.0, low_inclusive=False)
        check_range("radial.shrink", shrink, 0.0, low_inclusive=False)
        if not isinstance(learn_gain, bool):
            raise ValueError(f"radial.learn_gain={learn_gain!r} is not allowed; allowed: true, false")
        self.range, self.shrink = float(range), float(shrink)
        self.init_gain(gain, learn_gain)

    def config(self) -> dict[str, Any]:
        return {"gain": self.gain_value, "range": self.range, "shrink": self.shrink, "learn_gain": self.learn_gain}

    def init_tensor(self, p: Tensor) -> dict[str, Tensor]:
        return {"log_radial": self.per_tensor_zeros(p), "last_radial": self.per_tensor_zeros(p)}

    def apply(self, steps: Params, grads: Params, params: Params, state: State, t: int) -> tuple[Params, State]:
        new: State = {key: {} for key in self.keys}
        out: Params = {}
        for k, s in steps.items():
            dims = self.dims(s)
            log_radial, last = state["log_radial"][k].to(s.dtype), state["last_radial"][k].to(s.dtype)
            if not dims:   # a tensor without dims has no direction to split off
                new["log_radial"][k], new["last_radial"][k], out[k] = log_radial, last, s
                continue
            w = params[k].to(s.dtype)
            w_hat = w * torch.rsqrt((w * w).sum(dim=dims, keepdim=True) + EPS)
            signal = shrink_negative(torch.tanh(scaled_cos(grads[k].to(s.dtype), w, dims)) * torch.sign(last),
                                     self.shrink)
            log_radial = torch.clamp(log_radial + self.gain(s) * signal, -self.range, 0.0)
            c = (s * w_hat).sum(dim=dims, keepdim=True)
            new["log_radial"][k], new["last_radial"][k] = log_radial, c
            out[k] = s + (torch.exp(log_radial) - 1) * c * w_hat
        return out, new
