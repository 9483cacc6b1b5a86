"""The general-purpose learned core: a small per-parameter MLP over normalised features, its output normalised
per tensor at every step (in the spirit of Celo/Celo2 and of Metz et al.'s per-parameter MLP optimizers).

For every parameter tensor ``w`` with gradient ``g`` (``t`` = ``state["step"]``, the number of updates made
before this one; ``H`` = the horizon given to :meth:`Celo.init`, if any)::

    m_d  <- d * m_d + (1 - d) * g                 for each d in ``decays``      (momenta)
    v_b  <- b * v_b + (1 - b) * g^2               for each b in ``rms_decays``  (second moments)
    feats = [g, w, m_d..., g / sqrt(v_b + eps)..., m_d / sqrt(v_b + eps)...]   (per coordinate)
    feats <- feats / sqrt(mean_over_tensor(feats^2) + eps)     (each feature normalised over the tensor)
    time  = [tanh(t / s) for s in step_timescales] + [min(t / H, 1), 1]   ([..., 0, 0] without H)
    d     = skip . [feats, time] + MLP([feats, time])[0]       (direction, per coordinate)
    u     = d / sqrt(mean_over_tensor(d^2) + eps)              (unit RMS over the tensor; u = d with
                                                                output_norm=False, the ablation)
    s     = 2 * sigmoid(mean_over_tensor(MLP(...)[1]))         (with magnitude=True; else 1)
    step  = step_mult * lr * (exp(log_scale) * s * u + weight_decay * w)
    w    <- w - step

So with ``magnitude=False`` the RMS of every tensor's step is exactly ``step_mult * lr * exp(log_scale)``,
whatever the gradient's scale; ``magnitude=True`` adds a learned per-tensor step size in ``(0, 2)`` times
that (a learned schedule: it sees the step and fraction-of-horizon features). All features are normalised,
so the step does not depend on the scale of the gradient or of the parameters (for RMS values well above
``sqrt(eps)``). Online mechanisms on top (a hypergradient step size, a radial gain, ...) are controllers
(:mod:`learned_opt.optimizers.controllers`), composed with this core by
:class:`~learned_opt.optimizers.controllers.Controlled`.

Initialisation: ``skip`` is one-hot on the Adam-like feature ``m_0.9 / sqrt(v_0.999)`` (the decays nearest
to 0.9 and 0.999; the momentum nearest to 0.9 without ``rms_decays``) and the MLP's last layer is scaled by
0.01, so the untrained rule already takes a per-tensor normalised Adam step. ``log_scale`` starts at 0
(a meta-parameter with ``learn_scale=True``, a fixed buffer otherwise).

State: ``{"step": int, "momentum_<d>": {name: Tensor}, ..., "rms_<b>": {name: Tensor}, ..., "horizon": int}``
(``horizon`` only when ``init`` was given one). Sign convention: ``new = w - step``.

Batched populations: every per-tensor reduction skips ``population_dim`` when it is set. Batched
meta-parameters: ``update`` has no host syncs, no data-dependent control flow and no in-place ops, so it runs
under ``torch.func.vmap`` over stacked meta-parameters through ``torch.func.functional_call``. The
evolution-strategies estimators call :meth:`Celo.update_members` instead (under ``no_grad``): the member
dim first and per-member MLP weights in batched matmuls, about 1.5x faster than ``vmap`` on CPU.
Meta-parameters are cast to the features' dtype.

Applying the rule without a meta-gradient (under ``torch.no_grad``: evaluation, the ``torch.optim``
adapter), ``update`` takes the fused step of :mod:`.fused` where it applies (contiguous float32/float64 CPU
tensors, the shipped architecture): the same numbers (``tests/test_fused.py``) without the per-coordinate
feature tensors, at a few times Adam's cost. ``LEARNED_OPT_FUSED=off`` turns it off.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.base import Params, State, check_keys, check_range
from baselines.checks import boolean, check_int

from . import fused
from .batched import linear
from .features import momentum_key, reduce_dims, rms_key, second_moment_normalize
from .rule import FusedStepRule

__all__ = ["Celo", "DECAYS", "RMS_DECAYS", "TIMESCALES"]

DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999)
RMS_DECAYS = (0.95, 0.999)
TIMESCALES = (1, 10, 100, 1000, 10000)
EPS = 1e-20                 # in every normalisation: RMS values down to ~1e-10 are normalised exactly;
                            # small enough for scale invariance, large enough that float32 backward
                            # passes through rsqrt stay finite at exactly zero inputs
INIT_OUT_SCALE = 0.01       # the MLP's last layer starts this much smaller than torch's default
NUM_TIME_HORIZON = 2        # fraction-of-horizon features: [min(t / H, 1), 1] (zeros without H)


def _decay_list(field: str, values: Sequence[float], key, allow_empty: bool) -> list[float]:
    values = [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in values]
    if not values and not allow_empty:
        raise ValueError(f"{field}=[] must name at least one decay in (0, 1)")
    for i, d in enumerate(values):
        check_range(f"{field}[{i}]", d, 0.0, 1.0, low_inclusive=False)
    if len({key(d) for d in values}) != len(values):
        raise ValueError(f"{field}={values!r} must be distinct")
    return values


class Celo(FusedStepRule):
    """The per-parameter MLP core with per-tensor normalised steps; see the module docstring.

    Args:
        hidden_sizes: widths of the ReLU hidden layers (``(8, 8)``).
        decays: momentum decays, each in (0, 1), distinct.
        rms_decays: decays of the EMAs of ``g^2`` behind the Adam-like features (may be empty).
        step_timescales: the ``s`` of the step embeddings ``tanh(t / s)``, each > 0.
        step_mult: the step's RMS per tensor before the learned scale (``1e-3``), > 0.
        lr: plain output multiplier (1.0), the hyperparameter :class:`baselines.adapter.RuleOptimizer`
            exposes (torch lr schedulers scale the steps with it). Not an Adam-style learning rate.
        magnitude: learn a per-tensor step size ``2 * sigmoid(mean(MLP output 2))`` in (0, 2).
        learn_scale: ``log_scale`` is a meta-parameter; else fixed at 0.
        output_norm: normalise each tensor's direction to unit RMS (True); False keeps the MLP's raw
            direction (an ablation: the step's size is then whatever the MLP outputs).
        weight_decay: decoupled weight decay, ``step_mult * lr * weight_decay * w`` added to the step, >= 0.

    Meta-parameters: ``layers`` (``nn.Linear``s, torch's default initialisation from torch's global RNG, last
    layer scaled by 0.01), ``skip`` (the linear direction term) and, with ``learn_scale``, ``log_scale``.
    """

    population_dim: int | None = None  # set to skip a leading population dim in every reduction
    uses_horizon = True                # init(params, horizon=...) gives fraction-of-horizon features
    member_batched = False             # True while run with one meta-parameter set per member (batched.MemberRule)
    _members: dict[str, Tensor] | None = None   # the members' meta-parameters while in update_members

    def __init__(self, hidden_sizes: Sequence[int] = (8, 8), decays: Sequence[float] = DECAYS,
                 rms_decays: Sequence[float] = RMS_DECAYS, step_timescales: Sequence[float] = TIMESCALES,
                 step_mult: float = 1e-3, lr: float = 1.0, magnitude: bool = True, learn_scale: bool = True,
                 output_norm: bool = True, weight_decay: float = 0.0):
        super().__init__()
        hidden_sizes = list(hidden_sizes)
        for i, h in enumerate(hidden_sizes):
            check_int(f"hidden_sizes[{i}]", h, 1)
        self.decays = _decay_list("decays", list(decays), momentum_key, allow_empty=False)
        self.rms_decays = _decay_list("rms_decays", list(rms_decays), rms_key, allow_empty=True)
        step_timescales = list(step_timescales)
        for i, s in enumerate(step_timescales):
            check_range(f"step_timescales[{i}]", s, 0.0, low_inclusive=False)
        check_range("step_mult", step_mult, 0.0, low_inclusive=False)
        check_range("lr", lr, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        for field, flag in (("magnitude", magnitude), ("learn_scale", learn_scale), ("output_norm", output_norm)):
            boolean(field, flag)
        self.hidden_sizes = [int(h) for h in hidden_sizes]
        self.step_timescales = [float(s) for s in step_timescales]
        self.step_mult, self.lr, self.weight_decay = float(step_mult), float(lr), float(weight_decay)
        self.magnitude, self.learn_scale, self.output_norm = magnitude, learn_scale, output_norm

        k, r = len(self.decays), len(self.rms_decays)
        self.num_features = 2 + k + r * (1 + k)
        self.num_inputs = self.num_features + len(self.step_timescales) + NUM_TIME_HORIZON
        sizes = [self.num_inputs, *self.hidden_sizes, 2]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        skip = torch.zeros(self.num_inputs)
        skip[self.init_feature_index()] = 1.0
        self.skip = nn.Parameter(skip)
        with torch.no_grad():
            self.layers[-1].weight.mul_(INIT_OUT_SCALE)
            self.layers[-1].bias.zero_()
        if learn_scale:
            self.log_scale = nn.Parameter(torch.tensor(0.0))
        else:
            self.register_buffer("log_scale", torch.tensor(0.0))
        self.register_buffer("inv_timescales", torch.tensor([1.0 / s for s in self.step_timescales]),
                             persistent=False)

    # ------------------------------------------------------------------ bookkeeping
    def config(self) -> dict[str, Any]:
        return {"hidden_sizes": list(self.hidden_sizes), "decays": list(self.decays),
                "rms_decays": list(self.rms_decays), "step_timescales": list(self.step_timescales),
                "step_mult": self.step_mult, "lr": self.lr, "magnitude": self.magnitude,
                "learn_scale": self.learn_scale, "output_norm": self.output_norm, "weight_decay": self.weight_decay}

    @property
    def momentum_keys(self) -> list[str]:
        return [momentum_key(d) for d in self.decays]

    @property
    def rms_keys(self) -> list[str]:
        return [rms_key(b) for b in self.rms_decays]

    def feature_names(self) -> list[str]:
        """Names of the MLP's inputs, in order (features, then time)."""
        m = [f"m_{d:g}" for d in self.decays]
        adam = [f"{x}/sqrt(v_{b:g})" for b in self.rms_decays for x in ("g", *m)]
        return (["g", "w", *m, *adam] + [f"tanh(t/{s:g})" for s in self.step_timescales]
                + ["t/horizon", "has_horizon"])

    def init_feature_index(self) -> int:
        """Index of the feature the untrained direction follows: ``m_0.9 / sqrt(v_0.999)`` (nearest decays)."""
        d = min(range(len(self.decays)), key=lambda i: abs(self.decays[i] - 0.9))
        if not self.rms_decays:
            return 2 + d
        b = min(range(len(self.rms_decays)), key=lambda i: abs(self.rms_decays[i] - 0.999))
        return 2 + len(self.decays) + b * (1 + len(self.decays)) + 1 + d

    # ------------------------------------------------------------------ features and the MLP
    def _dims(self, x: Tensor, trailing: int = 0) -> tuple[int, ...]:
        """The dims of one tensor's reduction (all but the population dim), ``trailing`` feature dims excluded."""
        return reduce_dims(x.dim() - trailing, self.population_dim)

    def features(self, grad: Tensor, param: Tensor, momenta: Sequence[Tensor], rms: Sequence[Tensor]) -> Tensor:
        """Normalised per-coordinate features of one tensor: shape ``(*param.shape, num_features)``."""
        raw = [grad, param.to(grad.dtype), *momenta]
        for v in rms:
            inv = torch.rsqrt(v + EPS)
            raw += [grad * inv, *(m * inv for m in momenta)]
        x = torch.stack(raw, dim=-1)
        return second_moment_normalize(x, self._dims(x, 1), EPS)

    def time_features(self, step: int, horizon: int | None, like: Tensor) -> Tensor:
        """``[tanh(step / s)..., min(step / horizon, 1), 1]`` (last two 0 without a horizon), ``like``'s dtype."""
        inv = self.inv_timescales.to(device=like.device, dtype=torch.float64)
        frac = [min(step / horizon, 1.0), 1.0] if horizon else [0.0, 0.0]
        return torch.cat([torch.tanh(inv * step), inv.new_tensor(frac)]).to(like.dtype)

    def _meta(self, name: str) -> Tensor:
        """A meta-parameter (or buffer) by name: the rule's own, or in :meth:`update_members` the members'
        stacked ``(P, ...)`` values when they are among the perturbed ones."""
        members = self._members
        if members is not None and name in members:
            return members[name]
        module, _, attr = name.rpartition(".")
        return getattr(self.get_submodule(module) if module else self, attr)

    def _per_member(self, value: Tensor, like: Tensor) -> Tensor:
        """A learned scale shaped to multiply ``like``: in :meth:`update_members` one value per member
        (``(P,)`` viewed as ``(P, 1, ...)``), otherwise the scalar itself."""
        return value.view(-1, *[1] * (like.dim() - 1)) if self._members is not None else value

    def mlp_members(self, feats: Tensor, time: Tensor) -> Tensor:
        """:meth:`mlp` with each member's own weights (in :meth:`update_members`): ``feats`` ``(P, N, features)``,
        ``time`` the ``(T,)`` time features (the same for every coordinate, so folded into the first
        layer's bias and the skip's constant), returns ``(P, N, 2)``."""
        nf = self.num_features
        h = feats
        for i in range(len(self.layers)):
            w = self._meta(f"layers.{i}.weight").to(feats.dtype)
            b = self._meta(f"layers.{i}.bias").to(feats.dtype)
            if i == 0:
                w, b = w[:, :, :nf], b + w[:, :, nf:] @ time
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i < len(self.layers) - 1:
                h = h.relu_()
        skip = self._meta("skip").to(feats.dtype)
        direction = h[..., 0] + (feats @ skip[:, :nf].unsqueeze(-1)).squeeze(-1) + (skip[:, nf:] @ time).unsqueeze(-1)
        return torch.stack([direction, h[..., 1]], dim=-1)

    def mlp(self, x: Tensor) -> Tensor:
        """The MLP on a batch of inputs ``(N, num_inputs)``: ``(N, 2)`` = (direction, magnitude) with the skip."""
        h = x
        for i, layer in enumerate(self.layers):
            h = linear(h, layer.weight.to(x.dtype), layer.bias.to(x.dtype), self.member_batched)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        direction = h[:, 0] + x @ self.skip.to(x.dtype)
        return torch.stack([direction, h[:, 1]], dim=-1)

    # ------------------------------------------------------------------ the rule
    def init(self, params: Params, horizon: int | None = None) -> State:
        """Zero momenta and second moments; ``horizon`` (the planned number of updates) enables the
        fraction-of-horizon features and is kept in the state."""
        state: State = {"step": 0}
        for key in (*self.momentum_keys, *self.rms_keys):
            state[key] = {k: torch.zeros_like(p) for k, p in params.items()}
        if horizon is not None:
            check_int("horizon", horizon, 1)
            state["horizon"] = horizon
        return state

    def update_members(self, meta: dict[str, Tensor], grads: Params, state: State, params: Params,
                       workspace: dict | None = None) -> tuple[Params, State]:
        """:meth:`update` of ``P`` population members at once under ``no_grad``, member ``i`` with the
        meta-parameters ``meta[name][i]`` (every tensor has a leading member dim ``P``): what
        :class:`~.batched.MemberRule` calls instead of ``vmap`` (the evolution-strategies estimators).
        The same code as :meth:`update` with the population dim first, each member's coordinates
        through its own MLP as one batched matmul, and the learned scale per member. Equal to
        :meth:`update` on each member up to float rounding (tested)."""
        if self.population_dim is not None:
            raise ValueError("update_members gives each member its own tensors: leave population_dim unset")
        fast = fused.members_step(self, meta, grads, state, params)   # one kernel call for every member
        if fast is not None:
            return fast
        saved = {k: vars(self)[k] for k in ("population_dim", "_members") if k in vars(self)}
        self.population_dim, self._members = 0, meta
        try:
            return self.update(grads, state, params)
        finally:
            for k in ("population_dim", "_members"):
                if k in saved:
                    setattr(self, k, saved[k])
                else:
                    delattr(self, k)

    def steps(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        """The steps ``w - new_w`` of every tensor and the new state (:meth:`update` without the subtraction:
        what :class:`~.controllers.Controlled` reads and its controllers change)."""
        check_keys(grads, params)
        names, step, horizon = list(params), state["step"], state.get("horizon")
        new_state: State = {"step": step + 1}
        for key, d in zip(self.momentum_keys, self.decays):
            new_state[key] = {k: d * m + (1 - d) * grads[k] for k, m in state[key].items()}
        for key, b in zip(self.rms_keys, self.rms_decays):
            new_state[key] = {k: b * v + (1 - b) * grads[k] * grads[k] for k, v in state[key].items()}
        if horizon is not None:
            new_state["horizon"] = horizon
        if not names:
            return {}, new_state

        alpha = self.step_mult * self.lr
        feats = [self.features(grads[k], params[k], [new_state[key][k] for key in self.momentum_keys],
                               [new_state[key][k] for key in self.rms_keys]) for k in names]
        members = self._members is not None   # (P, coordinates, features): one MLP per member
        lead = (feats[0].shape[0],) if members else ()
        flat = torch.cat([f.reshape(*lead, -1, self.num_features) for f in feats], dim=len(lead))
        time = self.time_features(step, horizon, flat)
        out = self.mlp_members(flat, time) if members else \
            self.mlp(torch.cat([flat, time.expand(flat.shape[0], -1)], dim=-1))
        scale = torch.exp(self._meta("log_scale").to(out.dtype)) * alpha
        sizes = [params[k][0].numel() if members else params[k].numel() for k in names]
        steps: Params = {}
        for k, o in zip(names, out.split(sizes, dim=len(lead))):
            o = o.reshape(*params[k].shape, 2)
            direction, mag = o[..., 0], o[..., 1]
            dims = self._dims(direction)
            u = second_moment_normalize(direction, dims, EPS) if self.output_norm else direction
            if self.magnitude:
                u = u * (2 * torch.sigmoid(mag.mean(dim=dims, keepdim=True) if dims else mag))
            s = self._per_member(scale, u) * u
            if self.weight_decay:
                s = s + (alpha * self.weight_decay) * params[k].to(s.dtype)
            steps[k] = s
        return steps, new_state

    def update(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        fast = fused.rule_step(self, grads, state, params)   # the same numbers without feature tensors, where it serves
        if fast is not None:
            return fast
        steps, new_state = self.steps(grads, state, params)
        return {k: params[k] - steps[k].to(params[k].dtype) for k in params}, new_state
