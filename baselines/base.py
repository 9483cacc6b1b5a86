"""The one interface every optimizer in this project implements.

An optimizer is a pure *update rule* over a dictionary of tensors::

    state = rule.init(params)
    new_params, new_state = rule.update(grads, state, params)

``update`` never writes into its inputs. Every operation is differentiable with
respect to params, grads, state and any hyperparameter given as a tensor, so a
rule can sit inside a differentiable unroll (meta-training), a ``no_grad``
unroll (evaluation), or behind :class:`baselines.adapter.RuleOptimizer`
(ordinary PyTorch training loops).

State convention (shared by hand-crafted and learned rules, relied on by the
adapter and by checkpoints)::

    {"step": int,                      # number of updates applied so far
     "<buffer>": {param_name: Tensor}, # one dict per per-parameter buffer
     ...}

Hyperparameters may be Python numbers or tensors (possibly requiring grad);
``lr`` may also be a schedule, i.e. any callable ``step -> float | Tensor``.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Protocol, Union, runtime_checkable

import torch
from torch import Tensor

from .checks import ConfigError

Params = dict[str, Tensor]
State = dict[str, Any]
Schedule = Callable[[int], Union[float, Tensor]]
HParam = Union[float, Tensor]
LR = Union[float, Tensor, Schedule]


@runtime_checkable
class UpdateRule(Protocol):
    """Anything with ``init`` and a pure ``update``; see the module docstring."""

    def init(self, params: Params) -> State: ...

    def update(self, grads: Params, state: State, params: Params) -> tuple[Params, State]: ...


def is_schedule(value: Any) -> bool:
    """A schedule is a callable of the step that is not itself a tensor or number."""
    return callable(value) and not isinstance(value, (Tensor, numbers.Number))


def resolve(value: LR, step: int) -> HParam:
    """Value of a hyperparameter at ``step`` (0-based index of the update being made)."""
    return value(step) if is_schedule(value) else value


def _scalar(value: Any) -> float | None:
    """Float value of a number or one-element tensor, or None for schedules."""
    if is_schedule(value):
        return None
    if isinstance(value, Tensor):
        if value.numel() != 1:
            return None  # per-coordinate hyperparameters are checked elementwise below
        return float(value.detach())
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"hyperparameter must be a number, a tensor or a schedule, got {type(value).__name__}")


_CHECKS = True  # switched off only inside Rule.unchecked


def check_range(name: str, value: Any, low: float, high: float = math.inf,
                low_inclusive: bool = True, high_inclusive: bool = False) -> None:
    """Raise :class:`~baselines.checks.ConfigError` (a ``ValueError``) naming ``name``, its value and the
    allowed range, as every check in :mod:`baselines.checks` does; for a rule's hyperparameters, which may
    be tensors: schedules are checked when they are evaluated, not here. Tensors are
    checked on their current value (elementwise for non-scalar tensors).
    """
    if is_schedule(value) or not _CHECKS:
        return
    if isinstance(value, Tensor) and value.numel() != 1:
        vals = value.detach().flatten().tolist()
    else:
        try:
            vals = [_scalar(value)]
        except TypeError:
            raise TypeError(f"{name}={value!r} is not allowed; allowed: a number, a tensor or a schedule "
                            f"(got {type(value).__name__})") from None
    lo_ok = (lambda v: v >= low) if low_inclusive else (lambda v: v > low)
    hi_ok = (lambda v: v <= high) if high_inclusive else (lambda v: v < high)
    for v in vals:
        if math.isnan(v) or not (lo_ok(v) and hi_ok(v)):
            lb = "[" if low_inclusive else "("
            rb = "]" if high_inclusive else ")"
            raise ConfigError(f"{name}={v!r} is not allowed; allowed: a number in {lb}{low}, {high}{rb}")


def check_hparam(name: str, value: Any, schedulable: tuple[str, ...] = ()) -> None:
    """The checks every rule's hyperparameter passes, whatever the rule (used by the adapter for rules
    that are not a :class:`Rule`, e.g. learned ones, whose ``lr`` is a plain output multiplier).

    ``value`` must be a real number (not a bool) or a tensor, or a schedule where ``name`` is in
    ``schedulable``; never NaN; ``lr`` must lie in ``[0, inf)`` as for the hand-crafted rules.
    """
    if is_schedule(value):
        if name in schedulable:
            return
        raise TypeError(f"{name}={value!r} is not allowed; allowed: a number or a one-element tensor (this rule "
                        f"takes no schedule for {name})")
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
        raise TypeError(f"{name}={value!r} is not allowed; allowed: a number or a tensor (got {type(value).__name__})")
    if name == "lr":
        check_range("lr", value, 0.0)
    else:
        check_range(name, value, -math.inf, math.inf, high_inclusive=True)  # any value but NaN


def check_betas(betas: Any) -> None:
    if not _CHECKS:
        return
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas={betas!r} must be a pair (beta1, beta2); allowed: each in [0, 1)")
    check_range("betas[0]", betas[0], 0.0, 1.0)
    check_range("betas[1]", betas[1], 0.0, 1.0)


def zeros_like(params: Params) -> dict[str, Tensor]:
    return {k: torch.zeros_like(p, memory_format=torch.preserve_format) for k, p in params.items()}


def check_keys(grads: Params, params: Params) -> None:
    if grads.keys() != params.keys():
        missing = sorted(set(params) - set(grads))
        extra = sorted(set(grads) - set(params))
        raise KeyError(f"grads and params must have the same keys; missing grads for {missing}, unexpected {extra}")


class Rule:
    """Base class for the hand-crafted rules: hyperparameter bookkeeping only.

    Subclasses set ``hparam_names`` (the constructor arguments that the
    :class:`~baselines.adapter.RuleOptimizer` exposes as param-group entries)
    and implement ``init`` and ``update``. A subclass may also implement
    ``update_`` (trailing underscore): an in-place fast path over lists of
    tensors, used by the adapter under ``no_grad`` when every hyperparameter
    is a plain number. It must compute the same formula as ``update``.
    """

    hparam_names: tuple[str, ...] = ()
    schedulable: tuple[str, ...] = ("lr",)  # hyperparameters that may be schedules (callables of the step)

    @classmethod
    def unchecked(cls, **hparams: Any) -> "Rule":
        """Build without range checks: for values valid by construction (e.g. the sigmoid of a
        meta-parameter), where a check would only cost a host sync per update on a GPU."""
        global _CHECKS
        _CHECKS = False
        try:
            return cls(**hparams)
        finally:
            _CHECKS = True

    def hparams(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in self.hparam_names}

    def __repr__(self) -> str:
        def fmt(v: Any) -> str:
            if isinstance(v, Tensor):
                return f"tensor({v.detach().tolist()})" if v.numel() == 1 else f"tensor(shape={tuple(v.shape)})"
            return repr(v)
        args = ", ".join(f"{k}={fmt(v)}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"

    def numeric_hparams(self) -> bool:
        """True when every hyperparameter is a plain number or, where allowed, a schedule.

        Only then may the adapter use the in-place fast path ``update_``.
        """
        def plain(v: Any) -> bool:
            if isinstance(v, (tuple, list)):
                return all(plain(x) for x in v)
            return isinstance(v, numbers.Number)
        return all(plain(v) or (n in self.schedulable and is_schedule(v)) for n, v in self.hparams().items())

    # Default: no fast path.
    update_ = None
