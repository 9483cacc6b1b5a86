"""Per-parameter MLP optimizer in the style of Metz et al. (2019, 2020)
(google/learned_optimization, ``learned_optimizers/mlp_lopt.py``).

Per update, for every parameter tensor ``w`` with gradient ``g`` (``t`` = ``state["step"]``,
the number of updates made before this one)::

    m_d   <- d * m_d + (1 - d) * g                       for each decay d in ``decays``
    feats  = [g, w, m_d1, ..., m_dk]                      (per coordinate)
    feats <- feats / sqrt(mean_over_tensor(feats^2) + 1e-8)   (each feature normalised by its
                                                          second moment over this tensor)
    embed  = [tanh(t / s) for s in step_timescales]       (same for every coordinate)
    d, m   = MLP([feats, embed])                          (per coordinate; ReLU hidden layers)
    step   = d * exp(m * exp_mult) * step_mult
    step  <- step * sqrt(mean_over_tensor(g^2) + 1e-8)     (only with step_scale="grad_rms")
    w     <- w - lr * step

The features are normalised, so by default the step's size does not depend on the gradient's
scale (like Adam's). ``step_scale="grad_rms"`` multiplies each tensor's step by its gradient's
root mean square, so that the rule scales with the gradient as SGD and momentum do (use a larger
``step_mult``, e.g. 1, with it).

Sign convention: ``new = w - step``, so a positive ``d`` moves against the gradient-like
features (as in mlp_lopt). The MLP has ``len(decays) + 2 + len(step_timescales)`` inputs
(19 by default), ``hidden_sizes`` ReLU layers (32, 32) and 2 outputs.

State (the :mod:`baselines.base` convention)::

    {"step": int,
     "momentum_<d>": {name: Tensor(param.shape)}, ...}   # one EMA of the gradient per decay,
                                                         # key f"momentum_{d:g}", e.g. "momentum_0.9"

Batched populations: the normalisation reduces over every dim of a tensor
(:func:`reduce_dims`). Setting the attribute ``population_dim`` (e.g. ``rule.population_dim = 0``)
makes it skip that dim, so params with a leading population dim behave as that many
independent problems (the MLP itself is coordinatewise and needs no change).

All coordinates of all tensors go through the MLP as one batch. Populations with one
meta-parameter set per member (the evolution-strategies estimators) run through
:meth:`MLPOptimizer.update_members`, the same update laid out for batched matmuls. Devices and dtypes:
the state lives on the params' device in their dtype; the MLP weights are cast to the
features' dtype inside ``update`` (a no-op when they agree; autograd flows through the
cast), so a float32 rule can drive float64 params; for a float64 meta-gradient check,
``.double()`` the rule. The weights must be on the params' device (``rule.to(device)``).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.base import Params, State, check_keys, check_range
from baselines.checks import check_choice, check_int

from .batched import linear
from .features import NORM_EPS, STEP_SCALES, coordinate_grad_rms, grad_rms, reduce_dims, second_moment_normalize
from .features import momentum_key as _momentum_key
from .rule import LearnedRule

__all__ = ["MLPOptimizer"]

DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
TIMESCALES = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
def _blocks(members: int, n: int, size: int) -> list[tuple[slice, slice]]:
    """(members, coordinates) blocks of about ``size`` member-coordinates covering ``members x n``:
    whole members while one fits, else column pieces of one member."""
    if n <= size:
        step = size // n
        return [(slice(i, min(i + step, members)), slice(0, n)) for i in range(0, members, step)]
    return [(slice(i, i + 1), slice(j, min(j + size, n))) for i in range(members) for j in range(0, n, size)]


class MLPOptimizer(LearnedRule):
    """Per-parameter MLP learned optimizer; see the module docstring for the formulas.

    Args:
        hidden_sizes: widths of the ReLU hidden layers (``(32, 32)``).
        decays: momentum decays, each in (0, 1), distinct.
        step_timescales: the ``s`` of the step embeddings ``tanh(t / s)``, each > 0.
        exp_mult, step_mult: output scalings (``1e-3`` each), each > 0.
        lr: plain output multiplier (1.0); the one hyperparameter exposed to
            :class:`baselines.adapter.RuleOptimizer`, so torch lr schedulers scale the steps.
        step_scale: ``"none"`` (scale-invariant steps) or ``"grad_rms"`` (steps times each
            tensor's gradient RMS: scale-equivariant, like SGD).

    Meta-parameters: ``layers`` (an ``nn.ModuleList`` of ``nn.Linear``), torch's default
    initialisation drawn from torch's global RNG.
    """

    population_dim: int | None = None  # set to skip a leading population dim in the normalisation
    member_batched = False             # True while run with one meta-parameter set per member (batched.MemberRule)
    block_size = 8192                  # update_members: member-coordinates per MLP block (its activations stay in cache)

    def __init__(self, hidden_sizes: Sequence[int] = (32, 32), decays: Sequence[float] = DECAYS,
                 step_timescales: Sequence[float] = TIMESCALES, exp_mult: float = 1e-3,
                 step_mult: float = 1e-3, lr: float = 1.0, step_scale: str = "none"):
        super().__init__()
        hidden_sizes, decays, step_timescales = list(hidden_sizes), list(decays), list(step_timescales)
        for i, h in enumerate(hidden_sizes):
            check_int(f"hidden_sizes[{i}]", h, 1)
        if not decays:
            raise ValueError("decays=[] must name at least one momentum decay in (0, 1)")
        for i, d in enumerate(decays):
            check_range(f"decays[{i}]", d, 0.0, 1.0, low_inclusive=False)
        if len({_momentum_key(d) for d in decays}) != len(decays):
            raise ValueError(f"decays={decays!r} must be distinct")
        for i, s in enumerate(step_timescales):
            check_range(f"step_timescales[{i}]", s, 0.0, low_inclusive=False)
        check_range("exp_mult", exp_mult, 0.0, low_inclusive=False)
        check_range("step_mult", step_mult, 0.0, low_inclusive=False)
        check_range("lr", lr, 0.0)
        self.step_scale = check_choice("step_scale", step_scale, STEP_SCALES)
        self.hidden_sizes = [int(h) for h in hidden_sizes]
        self.decays = [float(d) for d in decays]
        self.step_timescales = [float(s) for s in step_timescales]
        self.exp_mult, self.step_mult, self.lr = float(exp_mult), float(step_mult), float(lr)
        self.num_features = 2 + len(self.decays)          # normalised per-coordinate features
        sizes = [self.num_features + len(self.step_timescales), *self.hidden_sizes, 2]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        # 1/s on the rule's device, so the step embedding needs no host-to-device copy per update
        self.register_buffer("inv_timescales", torch.tensor([1.0 / s for s in self.step_timescales]),
                             persistent=False)

    # ------------------------------------------------------------------ bookkeeping
    def config(self) -> dict[str, Any]:
        return {"hidden_sizes": list(self.hidden_sizes), "decays": list(self.decays),
                "step_timescales": list(self.step_timescales), "exp_mult": self.exp_mult,
                "step_mult": self.step_mult, "lr": self.lr, "step_scale": self.step_scale}

    @property
    def momentum_keys(self) -> list[str]:
        return [_momentum_key(d) for d in self.decays]

    # ------------------------------------------------------------------ features
    def step_embedding(self, step: int, like: Tensor) -> Tensor:
        """``[tanh(step / s) for s in step_timescales]`` in ``like``'s dtype and device."""
        inv = self.inv_timescales.to(device=like.device, dtype=torch.float64)
        return torch.tanh(inv * step).to(like.dtype)

    def features(self, grad: Tensor, param: Tensor, momenta: Sequence[Tensor]) -> Tensor:
        """Normalised per-coordinate features of one tensor: shape ``(*param.shape, 2 + len(decays))``.

        Order: gradient, parameter value, then the momenta in ``decays`` order; each one
        divided by the root of its mean square over the tensor (:func:`reduce_dims`).
        """
        x = torch.stack([grad, param.to(grad.dtype), *momenta], dim=-1)
        return second_moment_normalize(x, reduce_dims(x.dim() - 1, self.population_dim))

    def mlp(self, x: Tensor) -> Tensor:
        """The MLP on a batch of inputs ``(N, inputs)``: ``(N, 2)`` = (direction, magnitude)."""
        for i, layer in enumerate(self.layers):
            x = linear(x, layer.weight.to(x.dtype), layer.bias.to(x.dtype), self.member_batched)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x

    # ------------------------------------------------------------------ the rule
    def init(self, params: Params) -> State:
        """Zero momenta, one buffer per decay."""
        return {"step": 0, **{key: {k: torch.zeros_like(p) for k, p in params.items()}
                              for key in self.momentum_keys}}

    def update(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        check_keys(grads, params)
        names, step = list(params), state["step"]
        new_state: State = {"step": step + 1}
        for key, d in zip(self.momentum_keys, self.decays):
            new_state[key] = {k: d * m + (1 - d) * grads[k] for k, m in state[key].items()}
        if not names:
            return {}, new_state
        # per-tensor normalised features, then every coordinate of every tensor as one batch
        feats = torch.cat([self.features(grads[k], params[k], [new_state[key][k] for key in self.momentum_keys])
                           .reshape(-1, self.num_features) for k in names])
        embed = self.step_embedding(step, feats).expand(feats.shape[0], -1)
        out = self.mlp(torch.cat([feats, embed], dim=-1))
        direction, magnitude = out[:, 0], out[:, 1]
        delta = direction * torch.exp(magnitude * self.exp_mult) * (self.step_mult * self.lr)

        if self.step_scale == "grad_rms":
            delta = delta * coordinate_grad_rms(grads, names, self.population_dim).to(delta.dtype)
        sizes = [params[k].numel() for k in names]
        new_params = {k: params[k] - d.view(params[k].shape).to(params[k].dtype)
                      for k, d in zip(names, delta.split(sizes))}
        return new_params, new_state

    def _member_weights(self, meta: dict[str, Tensor], dtype: torch.dtype,
                        ws: dict) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """The members' layer weights ``(P, out, in)`` and biases ``(P, out, 1)`` in ``dtype``, the first
        layer split into its feature columns and its step-embedding columns (both contiguous). Kept in the
        workspace while ``meta`` holds the same tensors unchanged (an unroll's every step)."""
        key = tuple((t, t._version) for t in meta.values())
        cached = ws.get("weights")
        if cached is not None and cached[0] == dtype and len(cached[1]) == len(key) \
                and all(a is b and v == u for (a, v), (b, u) in zip(cached[1], key)):
            return cached[2]
        F_ = self.num_features
        weights, biases = [], []
        for i in range(len(self.layers)):
            weights.append(meta[f"layers.{i}.weight"].to(dtype))            # (P, out, in)
            biases.append(meta[f"layers.{i}.bias"].to(dtype).unsqueeze(-1))  # (P, out, 1)
        w_embed = weights[0][:, :, F_:].contiguous()
        weights[0] = weights[0][:, :, :F_].contiguous()
        ws["weights"] = (dtype, key, (weights, biases, w_embed))
        return weights, biases, w_embed

    def update_members(self, meta: dict[str, Tensor], grads: Params, state: State,
                       params: Params, workspace: dict | None = None) -> tuple[Params, State]:
        """:meth:`update` of ``P`` population members at once under ``no_grad``, member ``i`` with the
        meta-parameters ``meta[name][i]`` (every tensor has a leading member dim ``P``): what
        :class:`~.batched.MemberRule` calls instead of ``vmap`` (the evolution-strategies estimators).

        The same formulas, laid out for batched matmuls on CPU: the features of all coordinates as
        ``(P, features, coordinates)``, so every layer is a ``baddbmm`` whose long dim is the
        coordinates; the step embedding (the same for every coordinate) folded into the first
        layer's bias; the MLP run in blocks of ``block_size`` member-coordinates, so its hidden
        activations stay in cache; the momenta updated with one ``lerp`` per decay for all tensors.
        Equal to :meth:`update` on each member up to float rounding (tested)."""
        check_keys(grads, params)
        names, step = list(params), state["step"]
        new_state: State = {"step": step + 1}
        g_list = [grads[k] for k in names]
        for key, d in zip(self.momentum_keys, self.decays):   # m + (1 - d) * (g - m)
            new_state[key] = dict(zip(names, torch._foreach_lerp([state[key][k] for k in names], g_list, 1 - d)))
        if not names:
            return {}, new_state
        first = grads[names[0]]
        P, F_ = first.shape[0], self.num_features
        sizes = [params[k][0].numel() for k in names]
        ws = {} if workspace is None else workspace

        def buffer(name: str, *shape: int) -> Tensor:
            buf = ws.get(name)
            if buf is None or buf.shape != shape or buf.dtype != first.dtype or buf.device != first.device:
                buf = ws[name] = torch.empty(shape, dtype=first.dtype, device=first.device)
            return buf
        x = buffer("x", P, F_, sum(sizes))
        off = 0
        for k, n in zip(names, sizes):                            # each tensor's normalised features
            seg = x[:, :, off:off + n]                             # (P, F, n_k)
            for f, src in enumerate([grads[k], params[k], *(new_state[key][k] for key in self.momentum_keys)]):
                seg[:, f].copy_(src.reshape(P, n))
            # second_moment_normalize(seg, (2,)), in place on the buffer
            ms = torch.linalg.vector_norm(seg, dim=-1, keepdim=True).square_().div_(n)
            seg.mul_(ms.add_(NORM_EPS).rsqrt_())
            off += n
        weights, biases, w_embed = self._member_weights(meta, x.dtype, ws)
        embed = self.step_embedding(step, x).unsqueeze(-1)       # (E, 1)
        biases = [biases[0] + w_embed @ embed, *biases[1:]]      # the step embedding folded into the first bias
        out = buffer("out", P, 2, x.shape[2])
        blocks = _blocks(P, x.shape[2], self.block_size)
        rows0, cols0 = blocks[0]
        for rows, cols in blocks:
            h = x[rows, :, cols]
            m, c = h.shape[0], h.shape[2]
            for i, (w, b) in enumerate(zip(weights, biases)):
                dst = out[rows, :, cols] if i == len(weights) - 1 else \
                    buffer(f"h{i}", rows0.stop - rows0.start, w.shape[1], cols0.stop - cols0.start)[:m, :, :c]
                h = torch.baddbmm(b[rows], w[rows], h, out=dst)
                if i < len(weights) - 1:
                    h = h.relu_()
        delta = out[:, 0] * torch.exp(out[:, 1] * self.exp_mult) * (self.step_mult * self.lr)   # (P, n)
        if self.step_scale == "grad_rms":
            rms = [grad_rms(grads[k].reshape(P, -1), (1,)).expand(P, n) for k, n in zip(names, sizes)]
            delta = delta * torch.cat(rms, dim=1).to(delta.dtype)
        new_params = {k: params[k] - d.reshape(params[k].shape).to(params[k].dtype)
                      for k, d in zip(names, delta.split(sizes, dim=1))}
        return new_params, new_state
