"""Coordinatewise LSTM optimizer (Andrychowicz et al. 2016, "Learning to learn by gradient
descent by gradient descent").

One small two-layer LSTM is shared by every coordinate of every parameter tensor; each
coordinate ``i`` keeps its own recurrent state. Per update::

    x_i            = preprocess_gradient(g_i, p)               # 2 numbers, see below
    h0_i, c0_i     = LSTMCell_0(x_i,  (h0_i, c0_i))            # input 2  -> hidden H
    h1_i, c1_i     = LSTMCell_1(h0_i, (h1_i, c1_i))            # hidden H -> hidden H
    w_i           <- w_i + lr * output_scale * (W_out h1_i + b_out)

The LSTM outputs the step itself, sign included (``+``: nothing forces descent).
With ``step_scale="grad_rms"`` each tensor's step is also multiplied by the root mean square
of its gradient, so that the step scales with the gradient as SGD's does (the preprocessing
sees the gradient only on a log scale; use a larger ``output_scale``, e.g. 1, with it).
``LSTMCell(x, (h, c))`` with gates in torch's order ``(i, f, g, o)``::

    [i, f, g, o] = W_ih x + b_ih + W_hh h + b_hh
    c' = sigmoid(f) * c + sigmoid(i) * tanh(g),      h' = sigmoid(o) * tanh(c')

Gradient preprocessing (their appendix A), with ``p > 0`` (10 in the paper)::

    (log|g| / p, sign g)     if |g| >= exp(-p)
    (-1,         exp(p) g)   otherwise

State (the :mod:`baselines.base` convention; ``H = hidden_size``)::

    {"step": int,
     "h0": {name: Tensor(*param.shape, H)}, "c0": {...},   # layer 0 hidden and cell state
     "h1": {name: Tensor(*param.shape, H)}, "c1": {...}}   # layer 1 hidden and cell state

For speed, all coordinates of all tensors form one batch (the flattened gradients
concatenated), so an update is a handful of large matmuls and elementwise ops.

Devices and dtypes: the state lives on the params' device in their dtype. The
meta-parameters are cast to the gradients' dtype inside ``update`` (a no-op when
they agree; autograd flows through the cast), so a float32 rule can drive float64
params; for a float64 meta-gradient check, ``.double()`` the rule. The rule's
meta-parameters must be on the params' device (``rule.to(device)``).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from baselines.base import Params, State, check_keys, check_range
from baselines.checks import check_choice, check_int

from .batched import linear
from .features import STEP_SCALES, coordinate_grad_rms
from .rule import LearnedRule

__all__ = ["LSTMOptimizer", "preprocess_gradient"]

BUFFERS = ("h0", "c0", "h1", "c1")


def preprocess_gradient(g: Tensor, p: float = 10.0) -> Tensor:
    """Andrychowicz et al.'s log/sign preprocessing: a tensor of shape ``(*g.shape, 2)``.

    ``(log|g| / p, sign g)`` where ``|g| >= exp(-p)``, else ``(-1, exp(p) g)``. Both
    branches are computed; ``|g|`` is clamped below at ``exp(-p)`` inside the log so the
    unused branch never produces ``-inf`` (and no NaN reaches the backward pass).
    """
    threshold = math.exp(-p)
    big = g.abs() >= threshold
    log_part = torch.where(big, g.abs().clamp_min(threshold).log() / p, torch.full_like(g, -1.0))
    sign_part = torch.where(big, torch.sign(g), g * math.exp(p))
    return torch.stack([log_part, sign_part], dim=-1)


def _lstm_cell(x: Tensor, h: Tensor, c: Tensor, cell: nn.LSTMCell, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """One LSTM step with ``cell``'s weights (cast to ``dtype``); see the module docstring.

    Written out rather than calling ``cell(x, (h, c))`` so that any param dtype works and
    double backward (second-order meta-gradients) is plain autograd on every device. The
    gates are one batched matmul, ``[x, h] @ [W_ih, W_hh]^T + (b_ih + b_hh)``, laid out as
    ``(4, N, H)`` so that each gate is contiguous: on CPU, sigmoid/tanh over strided
    column slices of an ``(N, 4H)`` tensor are several times slower.
    """
    H = h.shape[-1]
    weight = torch.cat([cell.weight_ih, cell.weight_hh], dim=1).to(dtype)      # (4H, in + H)
    bias = (cell.bias_ih + cell.bias_hh).to(dtype)                              # (4H,)
    xh = torch.cat([x, h], dim=1)                                               # (N, in + H)
    gates = torch.baddbmm(bias.view(4, 1, H), xh.expand(4, -1, -1), weight.view(4, H, -1).transpose(1, 2))
    i, f, g, o = gates.unbind(0)                                                # each (N, H)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


class LSTMOptimizer(LearnedRule):
    """Two-layer coordinatewise LSTM optimizer; see the module docstring for the formulas.

    Args:
        hidden_size: units per LSTM layer (20 in the paper).
        preprocess_p: the ``p`` of the gradient preprocessing (10 in the paper).
        output_scale: multiplies the output layer (0.1 in the paper).
        step_scale: ``"none"`` (the paper's) or ``"grad_rms"`` (steps times each tensor's
            gradient RMS).
        input_scale: ``"none"`` (the paper's) or ``"grad_rms"`` (the gradient is divided by its
            tensor's RMS before the preprocessing, so the LSTM sees relative magnitudes).
        lr: plain output multiplier (1.0); the one hyperparameter exposed to
            :class:`baselines.adapter.RuleOptimizer`, so torch lr schedulers scale the steps.

    Meta-parameters: ``cell0`` (``nn.LSTMCell(2, H)``), ``cell1`` (``nn.LSTMCell(H, H)``) and
    ``output`` (``nn.Linear(H, 1)``, initialised 10x smaller than torch's default and with
    zero bias, so the initial steps are small). Initialisation draws from torch's global RNG.
    """

    population_dim: int | None = None  # with step_scale="grad_rms": a leading population dim to skip
    member_batched = False             # True while run with one meta-parameter set per member (batched.MemberRule)

    def __init__(self, hidden_size: int = 20, preprocess_p: float = 10.0, output_scale: float = 0.1,
                 lr: float = 1.0, step_scale: str = "none", input_scale: str = "none"):
        super().__init__()
        check_int("hidden_size", hidden_size, 1)
        check_range("preprocess_p", preprocess_p, 0.0, low_inclusive=False)
        check_range("output_scale", output_scale, 0.0, low_inclusive=False)
        check_range("lr", lr, 0.0)
        self.step_scale = check_choice("step_scale", step_scale, STEP_SCALES)
        self.input_scale = check_choice("input_scale", input_scale, STEP_SCALES)
        self.hidden_size = hidden_size
        self.preprocess_p = float(preprocess_p)
        self.output_scale = float(output_scale)
        self.lr = float(lr)
        self.cell0 = nn.LSTMCell(2, hidden_size)
        self.cell1 = nn.LSTMCell(hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, 1)
        with torch.no_grad():
            self.output.weight.mul_(0.1)
            self.output.bias.zero_()

    # ------------------------------------------------------------------ bookkeeping
    def config(self) -> dict[str, Any]:
        return {"hidden_size": self.hidden_size, "preprocess_p": self.preprocess_p,
                "output_scale": self.output_scale, "lr": self.lr, "step_scale": self.step_scale,
                "input_scale": self.input_scale}

    # ------------------------------------------------------------------ the rule
    def init(self, params: Params) -> State:
        """Zero hidden and cell states, ``(*param.shape, hidden_size)`` per tensor."""
        H = self.hidden_size
        return {"step": 0, **{b: {k: p.new_zeros((*p.shape, H)) for k, p in params.items()} for b in BUFFERS}}

    def update(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        check_keys(grads, params)
        names, H = list(params), self.hidden_size
        if not names:
            return {}, {"step": state["step"] + 1, **{b: {} for b in BUFFERS}}
        # all coordinates of all tensors as one batch: g (N,), states (N, H)
        g = torch.cat([grads[k].reshape(-1) for k in names])
        flat = {b: torch.cat([state[b][k].reshape(-1, H) for k in names]) for b in BUFFERS}
        dtype = g.dtype
        if "grad_rms" in (self.step_scale, self.input_scale):
            rms = coordinate_grad_rms(grads, names, self.population_dim).to(dtype)
        x = preprocess_gradient(g / rms if self.input_scale == "grad_rms" else g, self.preprocess_p)  # (N, 2)
        h0, c0 = _lstm_cell(x, flat["h0"], flat["c0"], self.cell0, dtype)
        h1, c1 = _lstm_cell(h0, flat["h1"], flat["c1"], self.cell1, dtype)
        out = linear(h1, self.output.weight.to(dtype), self.output.bias.to(dtype), self.member_batched).squeeze(-1)
        delta = out * (self.output_scale * self.lr)                                # (N,)
        if self.step_scale == "grad_rms":
            delta = delta * rms

        sizes = [params[k].numel() for k in names]
        new_params = {k: params[k] + d.view(params[k].shape).to(params[k].dtype)
                      for k, d in zip(names, delta.split(sizes))}
        new_state: State = {"step": state["step"] + 1}
        for b, t in zip(BUFFERS, (h0, c0, h1, c1)):
            new_state[b] = {k: part.view(*params[k].shape, H).to(params[k].dtype)
                            for k, part in zip(names, t.split(sizes))}
        return new_params, new_state
