"""What every online controller shares, and :class:`Controlled`: any update rule with controllers on its steps.

A controller changes the step a rule takes, per tensor, from what it sees during the run (the fresh
gradient, the parameters, its own state), the way an optax transformation changes the updates before it::

    rule = Controlled(core, [RadialGain(0.1), HypergradientStepSize(0.1, shrink=2.0)])
    state = rule.init(params)                 # the core's state, plus "<controller>.<entry>" for each
    params, state = rule.update(grads, state, params)

``update``: the core's step ``s = params - core_params`` (read exactly from a core with a ``steps`` method,
e.g. :class:`~learned_opt.optimizers.celo.Celo`; by subtraction from any other rule, e.g. ``baselines.Adam``),
then each controller in order, ``s <- controller(s, ...)``, then ``params - lr * s``. The core may be any
update rule: a learned one (an ``nn.Module``, its meta-parameters under ``core.``) or a hand-crafted
:class:`baselines.base.Rule`. A controller's meta-parameters live under ``controllers.<name>.``.

State: the core's own entries (``"step"`` among them) and, for each controller, its entries prefixed by its
name (``"hypergradient.log_step"``), each ``{param name: Tensor}``. Per-tensor quantities are stored per
tensor: a tensor of the parameter's shape with every reduced dim 1 (``(1, 1)`` for a matrix; a population
dim is kept).

Populations and members: ``population_dim`` and ``member_batched`` pass through to the core and the
controllers; :meth:`Controlled.update_members` gives each part its members' meta-parameters (the
evolution-strategies path), as the learned cores do.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from baselines.base import Params, Rule, State, check_keys, check_range

from ..features import reduce_dims
from ..rule import FusedStepRule

__all__ = ["Controller", "Controlled", "EPS", "scaled_cos", "shrink_negative", "tensor_dims"]

EPS = 1e-20   # as in the learned cores: scale-free down to RMS values of ~1e-10, finite float32 backward at 0


def tensor_dims(x: Tensor, population_dim: int | None) -> tuple[int, ...]:
    """The dims of one tensor's reductions: all but the population dim."""
    return reduce_dims(x.dim(), population_dim)


def _total(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    return x.sum(dim=dims, keepdim=True) if dims else x


def scaled_cos(a: Tensor, b: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``cos(a, b) * sqrt(n)`` over ``dims`` (``n`` coordinates, keepdim): about as noisy for every tensor size
    when ``a`` and ``b`` are unrelated (the cosine of two random directions is about ``1 / sqrt(n)``)."""
    n = math.prod(a.shape[i] for i in dims)
    return _total(a * b, dims) * math.sqrt(n) * torch.rsqrt(_total(a * a, dims) * _total(b * b, dims) + EPS)


def shrink_negative(signal: Tensor, k: float) -> Tensor:
    """``signal`` with its negative values times ``k`` (unchanged for ``k = 1``)."""
    return signal if k == 1 else torch.where(signal < 0, k * signal, signal)


class Controller(nn.Module):
    """One online mechanism acting on a rule's per-tensor steps; subclasses set ``name`` and ``keys`` (their
    state entries) and implement ``config``, ``init_tensor`` and ``apply``."""

    name = ""                    # registry name and state-key prefix
    keys: tuple[str, ...] = ()   # state entries
    population_dim: int | None = None
    _members: dict[str, Tensor] | None = None   # this controller's members' meta-parameters (update_members)

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())

    def dims(self, x: Tensor) -> tuple[int, ...]:
        return tensor_dims(x, self.population_dim)

    def per_tensor_zeros(self, p: Tensor) -> Tensor:
        """Zeros of the per-tensor shape of ``p``: every reduced dim 1, a population dim kept."""
        dims = set(self.dims(p))
        return p.new_zeros([1 if i in dims else s for i, s in enumerate(p.shape)])

    def init_tensor(self, p: Tensor) -> dict[str, Tensor]:
        """This controller's state entries for one parameter tensor."""
        raise NotImplementedError

    def init(self, params: Params) -> State:
        entries = {k: self.init_tensor(p) for k, p in params.items()}
        return {key: {k: e[key] for k, e in entries.items()} for key in self.keys}

    def apply(self, steps: Params, grads: Params, params: Params, state: State, t: int) -> tuple[Params, State]:
        """The controlled steps and this controller's new state (entries by their short keys); ``t`` is the
        number of updates made before this one."""
        raise NotImplementedError

    def meta(self, name: str, like: Tensor) -> Tensor:
        """A meta-parameter (or buffer) in ``like``'s dtype; in :meth:`Controlled.update_members` the members'
        values, viewed to broadcast against ``like`` (member dim first)."""
        if self._members is not None and name in self._members:
            value = self._members[name].to(like.dtype)
            return value.view(-1, *[1] * (like.dim() - 1))
        return getattr(self, name).to(like.dtype)

    def gain(self, like: Tensor) -> Tensor | float:
        """The controller's gain: ``exp(log_gain)`` (a meta-parameter) with ``learn_gain``, else the plain
        number it was given."""
        return torch.exp(self.meta("log_gain", like)) if self.learn_gain else self.gain_value

    def init_gain(self, value: float, learn: bool) -> None:
        """The gain ``value``: a meta-parameter ``log_gain = log(value)`` when ``learn``, else a fixed number."""
        self.gain_value, self.learn_gain = float(value), learn
        if learn:
            self.log_gain = nn.Parameter(torch.tensor(math.log(value)))


def _core_spec(core: Any) -> dict[str, Any]:
    from .. import LEARNED_RULES   # the registry of learned rules (this package is imported by it)
    if isinstance(core, Rule):
        hp = core.hparams()
        bad = {k: v for k, v in hp.items() if not isinstance(v, (int, float, bool, list, tuple, type(None)))}
        if bad:
            raise ValueError(f"Controlled.config: the core's hyperparameters {sorted(bad)} are not plain numbers "
                             f"(schedules and tensors cannot be written to a file)")
        from baselines.rules import RULES
        names = [name for name, cls in RULES.items() if type(core) is cls]
        if not names:
            raise ValueError(f"Controlled.config: {type(core).__name__} is not a registered baselines rule")
        return {"kind": "baselines", "name": names[0], "config": hp}
    for name, cls in LEARNED_RULES.items():
        if type(core) is cls:
            return {"kind": "learned", "name": name, "config": core.config()}
    raise ValueError(f"Controlled.config: {type(core).__name__} is neither a baselines rule nor a registered "
                     f"learned rule")


def build_core(spec: Any) -> Any:
    """A core from its spec (:meth:`Controlled.config`'s ``core``), or the core itself."""
    if not isinstance(spec, dict):
        if not (callable(getattr(spec, "init", None)) and callable(getattr(spec, "update", None))):
            raise ValueError(f"core={spec!r} is not an update rule (no init/update)")
        return spec
    kind, name, config = spec.get("kind", "learned"), spec.get("name"), dict(spec.get("config", {}))
    if kind == "baselines":
        from baselines.rules import make_rule
        return make_rule(name, **config)
    if kind != "learned":
        raise ValueError(f"core.kind={kind!r} is not allowed; allowed: learned, baselines")
    from .. import make_learned_rule
    if name == "controlled":
        raise ValueError("core.name='controlled' is not allowed: give the controllers of one Controlled rule as one list")
    return make_learned_rule(name, **config)


def build_controller(spec: Any) -> Controller:
    if isinstance(spec, Controller):
        return spec
    from . import CONTROLLERS
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"controllers entry {spec!r} is not allowed; allowed: a controller or a mapping "
                         f"{{name: one of {', '.join(CONTROLLERS)}, ...its options}}")
    options = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    if name not in CONTROLLERS:
        raise ValueError(f"controllers: unknown controller {name!r}; allowed: {', '.join(CONTROLLERS)}")
    return CONTROLLERS[name](**options)


class Controlled(FusedStepRule):
    """An update rule with online controllers on its steps; see the module docstring.

    Args:
        core: the rule whose steps are controlled: an update rule, or its spec
            ``{"kind": "learned" | "baselines", "name": ..., "config": {...}}`` (what :meth:`config` writes).
        controllers: applied in order; each a :class:`Controller` or ``{"name": ..., **options}``; at most
            one of each kind.
        lr: a plain multiplier of the controlled step (1.0), the hyperparameter the ``torch.optim`` adapter
            and lr schedulers set; the core's own ``lr`` is left as it is.
    """

    def __init__(self, core: Any, controllers: Sequence[Any] = (), lr: float = 1.0):
        super().__init__()
        self.core = build_core(core)
        if isinstance(controllers, (str, bytes)) or not isinstance(controllers, Sequence):
            raise ValueError(f"controllers={controllers!r} is not allowed; allowed: a list of controllers")
        built = [build_controller(c) for c in controllers]
        names = [c.name for c in built]
        if len(set(names)) != len(names):
            raise ValueError(f"controllers={names}: each controller may appear once")
        self.controllers = nn.ModuleDict({c.name: c for c in built})
        check_range("lr", lr, 0.0)
        self.lr = float(lr)

    # ------------------------------------------------------------------ attributes shared with the parts
    @property
    def uses_horizon(self) -> bool:
        return bool(getattr(self.core, "uses_horizon", False))

    def _parts(self) -> list:
        return [self.core, *self.controllers.values()]

    @property
    def population_dim(self) -> int | None:
        return self.__dict__.get("_population_dim")

    @population_dim.setter
    def population_dim(self, dim: int | None) -> None:
        self.__dict__["_population_dim"] = dim
        for part in self._parts():
            if hasattr(part, "population_dim"):
                part.population_dim = dim

    @population_dim.deleter
    def population_dim(self) -> None:
        self.population_dim = None

    @property
    def member_batched(self) -> bool:
        return bool(getattr(self.core, "member_batched", False))

    @member_batched.setter
    def member_batched(self, value: bool) -> None:
        if hasattr(self.core, "member_batched"):
            self.core.member_batched = value

    @member_batched.deleter
    def member_batched(self) -> None:
        if "member_batched" in vars(self.core):
            del self.core.member_batched

    # ------------------------------------------------------------------ bookkeeping
    def config(self) -> dict[str, Any]:
        return {"core": _core_spec(self.core),
                "controllers": [{"name": c.name, **c.config()} for c in self.controllers.values()],
                "lr": self.lr}

    def extra_repr(self) -> str:
        return f"lr={self.lr!r}"

    # ------------------------------------------------------------------ the rule
    def init(self, params: Params, horizon: int | None = None) -> State:
        state = self.core.init(params, horizon=horizon) if self.uses_horizon else self.core.init(params)
        for c in self.controllers.values():
            state.update({f"{c.name}.{key}": entry for key, entry in c.init(params).items()})
        return state

    def _core_steps(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        steps_fn = getattr(self.core, "steps", None)
        if steps_fn is not None:
            return steps_fn(grads, state, params)
        new_params, new_state = self.core.update(grads, state, params)
        return {k: params[k] - new_params[k] for k in params}, new_state

    def update(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        check_keys(grads, params)
        from .. import fused
        fast = fused.rule_step(self, grads, state, params)   # the celo core with its shipped controllers
        if fast is not None:
            return fast
        prefixes = {f"{c.name}." for c in self.controllers.values()}
        core_state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in prefixes)}
        steps, new_state = self._core_steps(grads, core_state, params)
        t = state["step"]
        for c in self.controllers.values():
            own = {key: state[f"{c.name}.{key}"] for key in c.keys}
            steps, new_own = c.apply(steps, grads, params, own, t)
            new_state.update({f"{c.name}.{key}": v for key, v in new_own.items()})
        lr = self.lr
        return {k: params[k] - (steps[k] if lr == 1 else lr * steps[k]).to(params[k].dtype) for k in params}, new_state

    def update_members(self, meta: dict[str, Tensor], grads: Params, state: State, params: Params,
                       workspace: dict | None = None) -> tuple[Params, State]:
        """:meth:`update` of ``P`` members at once under ``no_grad`` (member dim first), member ``i`` with the
        meta-parameters ``meta[name][i]`` (names as in ``named_parameters``): the core through its own
        ``update_members`` mechanism, each controller with its members' gains."""
        if self.population_dim is not None:
            raise ValueError("update_members gives each member its own tensors: leave population_dim unset")
        from .. import fused
        fast = fused.members_step(self, meta, grads, state, params)   # a celo core: one kernel call for all members
        if fast is not None:
            return fast
        core_meta = {k[len("core."):]: v for k, v in meta.items() if k.startswith("core.")}
        own = {name: {k[len(f"controllers.{name}."):]: v for k, v in meta.items()
                      if k.startswith(f"controllers.{name}.")} for name in self.controllers}
        if core_meta and not hasattr(self.core, "update_members"):
            raise ValueError(f"{type(self.core).__name__} has no update_members: it cannot run per-member "
                             f"meta-parameters")
        had_core = "_members" in vars(self.core)
        self.population_dim = 0
        if hasattr(self.core, "update_members"):
            self.core._members = core_meta
        for name, c in self.controllers.items():
            c._members = own[name]
        try:
            return self.update(grads, state, params)
        finally:
            self.population_dim = None
            if hasattr(self.core, "update_members") and not had_core:
                del self.core._members
            for c in self.controllers.values():
                del c._members
