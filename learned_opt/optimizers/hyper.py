"""Hand-crafted rules whose hyperparameters are meta-learned: the simplest learned optimizers,
and the baseline the neural ones must beat.

Each is an ``nn.Module`` whose ``nn.Parameter``s are unconstrained reparameterisations of
the hyperparameters. Every update builds the hand-crafted rule of :mod:`baselines.rules`
from their current values (tensors that carry the meta-gradient) and delegates ``init``
and ``update`` to it, so each formula exists once::

    LearnedAdam:  lr = exp(log_lr),  beta1 = sigmoid(logit_beta1),  beta2 = sigmoid(logit_beta2),
                  eps = exp(log_eps);                       then baselines.rules.Adam
    LearnedSGD:   lr_t = exp(log_lrs[min(t, steps - 1)])    (t = 0-based update index: a learned
                  per-step schedule that keeps its last value beyond ``steps``),
                  momentum = sigmoid(logit_momentum);       then baselines.rules.SGD (momentum, b_1 = g)

State: that of the delegate (``{"step", "exp_avg", "exp_avg_sq"}`` for Adam,
``{"step", "momentum_buffer"}`` for SGD).

About ``lr``: the constructor's ``lr`` is the *initial value of the learned* learning
rate. The attribute ``rule.lr`` is something else: a plain output multiplier (1.0) that
scales the learned learning rate, the one hyperparameter :class:`baselines.adapter.RuleOptimizer`
exposes (``hparam_names``), so torch lr schedulers scale the steps of a meta-trained rule.
``current_hparams()["lr"]`` reports the effective value, multiplier included.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from baselines.base import Params, State, check_range
from baselines.checks import check_int
from baselines.rules import SGD, Adam

from .rule import LearnedRule

__all__ = ["LearnedAdam", "LearnedSGD"]


def _logit(x: float) -> float:
    return math.log(x / (1.0 - x))


def _check_open_unit(name: str, value: Any) -> None:
    check_range(name, value, 0.0, 1.0, low_inclusive=False)


class _HyperRule(LearnedRule):
    """A hand-crafted rule with meta-learned hyperparameters: its repr shows their current values."""

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v:.4g}" for k, v in self.current_hparams().items())


class LearnedAdam(_HyperRule):
    """Adam with meta-learned ``log_lr``, ``logit_beta1``, ``logit_beta2`` and ``log_eps``.

    Args (initial values): ``lr > 0``, ``betas`` each in (0, 1), ``eps > 0``.
    """

    def __init__(self, lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__()
        check_range("lr", lr, 0.0, low_inclusive=False)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas={betas!r} must be a pair (beta1, beta2); allowed: each in (0, 1)")
        _check_open_unit("betas[0]", betas[0])
        _check_open_unit("betas[1]", betas[1])
        check_range("eps", eps, 0.0, low_inclusive=False)
        self._config = {"lr": float(lr), "betas": [float(b) for b in betas], "eps": float(eps)}
        self.log_lr = nn.Parameter(torch.tensor(math.log(lr)))
        self.logit_beta1 = nn.Parameter(torch.tensor(_logit(betas[0])))
        self.logit_beta2 = nn.Parameter(torch.tensor(_logit(betas[1])))
        self.log_eps = nn.Parameter(torch.tensor(math.log(eps)))
        self.lr = 1.0  # output multiplier, not the learned lr (see the module docstring)

    def config(self) -> dict[str, Any]:
        return {"lr": self._config["lr"], "betas": list(self._config["betas"]), "eps": self._config["eps"]}

    def rule(self) -> Adam:
        """The hand-crafted Adam with the current (differentiable) hyperparameter values."""
        return Adam.unchecked(lr=self.lr * self.log_lr.exp(),
                    betas=(torch.sigmoid(self.logit_beta1), torch.sigmoid(self.logit_beta2)),
                    eps=self.log_eps.exp())

    def current_hparams(self) -> dict[str, float]:
        """Plain floats for logging: ``lr`` (multiplier included), ``beta1``, ``beta2``, ``eps``."""
        with torch.no_grad():
            return {"lr": self.lr * float(self.log_lr.exp()), "beta1": float(torch.sigmoid(self.logit_beta1)),
                    "beta2": float(torch.sigmoid(self.logit_beta2)), "eps": float(self.log_eps.exp())}

    def init(self, params: Params) -> State:
        return Adam().init(params)  # the state does not depend on hyperparameter values

    def update(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        return self.rule().update(grads, state, params)


class LearnedSGD(_HyperRule):
    """SGD with momentum, a meta-learned per-step schedule ``log_lrs`` and ``logit_momentum``.

    Args (initial values): ``lr > 0`` (every entry of the schedule), ``momentum`` in (0, 1), or
    exactly 0 for plain SGD (then no momentum is learned: only the schedule), ``steps``: length of
    the learned schedule (a positive integer; the meta-training horizon; 1: one constant lr).
    """

    def __init__(self, lr: float = 0.1, momentum: float = 0.9, steps: int = 100):
        super().__init__()
        check_range("lr", lr, 0.0, low_inclusive=False)
        if momentum != 0:
            _check_open_unit("momentum", momentum)
        check_int("steps", steps, 1)
        self._config = {"lr": float(lr), "momentum": float(momentum), "steps": int(steps)}
        self.steps = int(steps)
        self.log_lrs = nn.Parameter(torch.full((steps,), math.log(lr)))
        if momentum != 0:
            self.logit_momentum = nn.Parameter(torch.tensor(_logit(momentum)))
        else:
            self.logit_momentum = None  # plain SGD
        self.lr = 1.0  # output multiplier, not the learned lr (see the module docstring)

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def learning_rate(self, step: int) -> torch.Tensor:
        """The learned learning rate of the update with 0-based index ``step`` (multiplier included)."""
        return self.lr * self.log_lrs[min(step, self.steps - 1)].exp()

    def rule(self) -> SGD:
        """The hand-crafted SGD with the current (differentiable) schedule and momentum."""
        return SGD.unchecked(lr=self.learning_rate, momentum=self._momentum())

    def _momentum(self) -> torch.Tensor | float:
        return 0.0 if self.logit_momentum is None else torch.sigmoid(self.logit_momentum)

    def current_hparams(self) -> dict[str, float]:
        """Plain floats for logging: the schedule's first, last, min and max lr, and the momentum."""
        with torch.no_grad():
            lrs = self.lr * self.log_lrs.exp()
            return {"lr": float(lrs[0]), "lr_last": float(lrs[-1]), "lr_min": float(lrs.min()),
                    "lr_max": float(lrs.max()), "momentum": float(self._momentum())}

    def init(self, params: Params) -> State:
        if self.logit_momentum is None:
            return SGD().init(params)          # plain SGD: {"step": 0}
        return SGD(momentum=0.5).init(params)  # {"step": 0, "momentum_buffer": zeros}

    def update(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        return self.rule().update(grads, state, params)
