"""Hand-crafted update rules: GD/SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam, AdamW, Adadelta.

Each rule's ``update`` is the pure, differentiable reference formula (one
tensor at a time, any hyperparameter may be a tensor that requires grad, ``lr``
may be a schedule). Where the adapter benchmark asks for speed, a rule also
has ``update_``: the same formula over lists of tensors with in-place
``torch._foreach_*`` kernels, used only under ``no_grad`` with plain-number
hyperparameters. Both are checked against ``torch.optim`` in the tests.

Notation: ``g`` gradient, ``w`` parameter, ``t`` = 1-based step, ``lr`` the
learning rate at this step, ``wd`` weight decay.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import LR, HParam, Params, Rule, State, check_betas, check_keys, check_range, resolve, zeros_like
from .checks import check_choice

__all__ = ["SGD", "GD", "Momentum", "Nesterov", "Adagrad", "RMSprop", "Adam", "AdamW", "Adadelta"]


def _l2(grads: Params, params: Params, weight_decay: HParam) -> Params:
    """Coupled (L2) weight decay as torch.optim defines it: g <- g + wd * w."""
    if isinstance(weight_decay, (int, float)) and weight_decay == 0:
        return grads
    return {k: g + weight_decay * params[k] for k, g in grads.items()}


def _l2_(grads: list[Tensor], params: list[Tensor], weight_decay: float) -> list[Tensor]:
    return torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay != 0 else grads


class SGD(Rule):
    """Stochastic gradient descent with optional (Nesterov) momentum, as ``torch.optim.SGD``.

    Plain:      w <- w - lr * g
    Momentum:   b <- mu * b + (1 - dampening) * g   (b_1 = g),   w <- w - lr * b
    Nesterov:   b as above,                                     w <- w - lr * (g + mu * b)

    With dampening 0 this is the lecture's momentum m = a*m + g, w = w - lr*m.
    ``momentum`` may be a schedule too (e.g. ``CyclicLR.momentum`` for cycling it
    inversely to the learning rate, Smith 2015).
    Full-batch gradient descent is this rule on a full-batch task; the rule
    does not know or care how the gradient was estimated.
    """

    hparam_names = ("lr", "momentum", "dampening", "nesterov", "weight_decay")
    schedulable = ("lr", "momentum")

    def __init__(self, lr: LR = 1e-2, momentum: HParam = 0.0, dampening: HParam = 0.0,
                 nesterov: bool = False, weight_decay: HParam = 0.0):
        check_range("lr", lr, 0.0)
        check_range("momentum", momentum, 0.0, 1.0)
        check_range("dampening", dampening, 0.0, 1.0, high_inclusive=True)
        check_range("weight_decay", weight_decay, 0.0)
        if nesterov and (isinstance(momentum, (int, float)) and momentum <= 0
                         or isinstance(dampening, (int, float)) and dampening != 0):
            raise ValueError(f"nesterov=True requires momentum > 0 and dampening == 0, "
                             f"got momentum={momentum!r}, dampening={dampening!r}")
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.nesterov, self.weight_decay = bool(nesterov), weight_decay

    def _has_momentum(self) -> bool:
        return not (isinstance(self.momentum, (int, float)) and self.momentum == 0)

    def init(self, params: Params) -> State:
        state: State = {"step": 0}
        if self._has_momentum():
            state["momentum_buffer"] = zeros_like(params)
        return state

    def update(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        check_keys(grads, params)
        step = state["step"]
        lr = resolve(self.lr, step)
        grads = _l2(grads, params, self.weight_decay)
        new_state: State = {"step": step + 1}
        if self._has_momentum():
            mu, damp = resolve(self.momentum, step), self.dampening
            if step == 0:
                bufs = {k: g.clone() for k, g in grads.items()}
            else:
                bufs = {k: mu * b + (1 - damp) * grads[k] for k, b in state["momentum_buffer"].items()}
            new_state["momentum_buffer"] = bufs
            directions = {k: g + mu * bufs[k] for k, g in grads.items()} if self.nesterov else bufs
        else:
            directions = grads
        return {k: w - lr * directions[k] for k, w in params.items()}, new_state

    def update_(self, grads: list[Tensor], bufs: dict[str, list[Tensor]], params: list[Tensor],
                step: int) -> dict[str, list[Tensor]]:
        lr = float(resolve(self.lr, step))
        grads = _l2_(grads, params, self.weight_decay)
        if self._has_momentum():
            mu = float(resolve(self.momentum, step))
            if step == 0:
                buf = [g.clone() for g in grads]
            else:
                buf = bufs["momentum_buffer"]
                torch._foreach_mul_(buf, mu)
                torch._foreach_add_(buf, grads, alpha=1 - self.dampening)
            bufs = {"momentum_buffer": buf}
            grads = torch._foreach_add(grads, buf, alpha=mu) if self.nesterov else buf
        torch._foreach_add_(params, grads, alpha=-lr)
        return bufs


class GD(SGD):
    """Gradient descent: w <- w - lr * g (SGD with no momentum; the task decides the batch)."""

    hparam_names = ("lr", "weight_decay")

    def __init__(self, lr: LR = 1e-2, weight_decay: HParam = 0.0):
        super().__init__(lr=lr, weight_decay=weight_decay)


class Momentum(SGD):
    """Heavy-ball momentum in the lecture's form: m <- a * m + g, w <- w - lr * m.

    Equal to ``torch.optim.SGD(momentum=a, dampening=0)``.
    """

    hparam_names = ("lr", "momentum", "weight_decay")

    def __init__(self, lr: LR = 1e-2, momentum: HParam = 0.9, weight_decay: HParam = 0.0):
        super().__init__(lr=lr, momentum=momentum, weight_decay=weight_decay)


class Nesterov(SGD):
    """Nesterov momentum: the gradient is taken at the look-ahead point.

    Look-ahead form (Sutskever et al. 2013): v <- a v - lr * grad f(w + a v), w <- w + v.
    Writing u = w + a v for the look-ahead point turns it into the form that
    ``torch.optim.SGD(nesterov=True)`` uses, which is what this rule stores:
    b <- a b + g(u),  u <- u - lr (g(u) + a b). The parameters held here are
    therefore the look-ahead points (the tests check the equivalence).
    """

    hparam_names = ("lr", "momentum", "weight_decay")

    def __init__(self, lr: LR = 1e-2, momentum: HParam = 0.9, weight_decay: HParam = 0.0):
        super().__init__(lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


class Adagrad(Rule):
    """AdaGrad (Duchi et al. 2011), as ``torch.optim.Adagrad``.

    s <- s + g^2,   w <- w - lr_t * g / (sqrt(s) + eps),   lr_t = lr / (1 + (t - 1) * lr_decay)
    """

    hparam_names = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def __init__(self, lr: LR = 1e-2, lr_decay: HParam = 0.0, weight_decay: HParam = 0.0,
                 initial_accumulator_value: float = 0.0, eps: HParam = 1e-10):
        check_range("lr", lr, 0.0)
        check_range("lr_decay", lr_decay, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        check_range("initial_accumulator_value", initial_accumulator_value, 0.0)
        check_range("eps", eps, 0.0, low_inclusive=False)
        self.lr, self.lr_decay, self.weight_decay = lr, lr_decay, weight_decay
        self.initial_accumulator_value, self.eps = initial_accumulator_value, eps

    def init(self, params: Params) -> State:
        return {"step": 0, "sum": {k: torch.full_like(p, self.initial_accumulator_value)
                                   for k, p in params.items()}}

    def update(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        check_keys(grads, params)
        step = state["step"]
        clr = resolve(self.lr, step) / (1 + step * self.lr_decay)
        grads = _l2(grads, params, self.weight_decay)
        sums = {k: s + grads[k] * grads[k] for k, s in state["sum"].items()}
        new = {k: w - clr * grads[k] / (sums[k].sqrt() + self.eps) for k, w in params.items()}
        return new, {"step": step + 1, "sum": sums}


class RMSprop(Rule):
    """RMSprop (Tieleman & Hinton 2012), as ``torch.optim.RMSprop``; alpha = 0.99 by default.

    v <- alpha v + (1 - alpha) g^2
    centered:  a <- alpha a + (1 - alpha) g,   d = sqrt(v - a^2) + eps,   else d = sqrt(v) + eps
    momentum:  b <- mu b + g / d,  w <- w - lr b;   without:  w <- w - lr g / d
    """

    hparam_names = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")

    def __init__(self, lr: LR = 1e-2, alpha: HParam = 0.99, eps: HParam = 1e-8,
                 weight_decay: HParam = 0.0, momentum: HParam = 0.0, centered: bool = False):
        check_range("lr", lr, 0.0)
        check_range("alpha", alpha, 0.0, 1.0)
        check_range("eps", eps, 0.0, low_inclusive=False)
        check_range("weight_decay", weight_decay, 0.0)
        check_range("momentum", momentum, 0.0, 1.0)
        self.lr, self.alpha, self.eps = lr, alpha, eps
        self.weight_decay, self.momentum, self.centered = weight_decay, momentum, bool(centered)

    def _has_momentum(self) -> bool:
        return not (isinstance(self.momentum, (int, float)) and self.momentum == 0)

    def init(self, params: Params) -> State:
        state: State = {"step": 0, "square_avg": zeros_like(params)}
        if self.centered:
            state["grad_avg"] = zeros_like(params)
        if self._has_momentum():
            state["momentum_buffer"] = zeros_like(params)
        return state

    def update(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        check_keys(grads, params)
        step, a = state["step"], self.alpha
        lr = resolve(self.lr, step)
        grads = _l2(grads, params, self.weight_decay)
        sq = {k: a * v + (1 - a) * grads[k] * grads[k] for k, v in state["square_avg"].items()}
        new_state: State = {"step": step + 1, "square_avg": sq}
        if self.centered:
            ga = {k: torch.lerp(m, grads[k], 1 - a) for k, m in state["grad_avg"].items()}
            new_state["grad_avg"] = ga
            denom = {k: (v - ga[k] * ga[k]).sqrt() + self.eps for k, v in sq.items()}
        else:
            denom = {k: v.sqrt() + self.eps for k, v in sq.items()}
        if self._has_momentum():
            bufs = {k: self.momentum * b + grads[k] / denom[k] for k, b in state["momentum_buffer"].items()}
            new_state["momentum_buffer"] = bufs
            new = {k: w - lr * bufs[k] for k, w in params.items()}
        else:
            new = {k: w - lr * grads[k] / denom[k] for k, w in params.items()}
        return new, new_state

    def update_(self, grads: list[Tensor], bufs: dict[str, list[Tensor]], params: list[Tensor],
                step: int) -> dict[str, list[Tensor]]:
        lr, a = float(resolve(self.lr, step)), self.alpha
        grads = _l2_(grads, params, self.weight_decay)
        sq = bufs["square_avg"]
        torch._foreach_mul_(sq, a)
        torch._foreach_addcmul_(sq, grads, grads, value=1 - a)
        if self.centered:
            ga = bufs["grad_avg"]
            torch._foreach_lerp_(ga, grads, 1 - a)
            denom = torch._foreach_addcmul(sq, ga, ga, value=-1)
            torch._foreach_sqrt_(denom)
        else:
            denom = torch._foreach_sqrt(sq)
        torch._foreach_add_(denom, self.eps)
        if self._has_momentum():
            buf = bufs["momentum_buffer"]
            torch._foreach_mul_(buf, self.momentum)
            torch._foreach_addcdiv_(buf, grads, denom)
            torch._foreach_add_(params, buf, alpha=-lr)
        else:
            torch._foreach_addcdiv_(params, grads, denom, value=-lr)
        return bufs


class Adam(Rule):
    """Adam (Kingma & Ba 2015) with bias correction, as ``torch.optim.Adam``.

    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
    AMSGrad:  v_max <- max(v_max, v) and v_max replaces v below
    w <- w - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    ``weight_decay`` is coupled L2 (g <- g + wd w); see :class:`AdamW` for decoupled decay.
    """

    hparam_names = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    decoupled = False

    def __init__(self, lr: LR = 1e-3, betas: tuple[HParam, HParam] = (0.9, 0.999), eps: HParam = 1e-8,
                 weight_decay: HParam = 0.0, amsgrad: bool = False):
        check_range("lr", lr, 0.0)
        check_betas(betas)
        check_range("eps", eps, 0.0, low_inclusive=False)
        check_range("weight_decay", weight_decay, 0.0)
        self.lr, self.betas, self.eps = lr, tuple(betas), eps
        self.weight_decay, self.amsgrad = weight_decay, bool(amsgrad)

    def init(self, params: Params) -> State:
        state: State = {"step": 0, "exp_avg": zeros_like(params), "exp_avg_sq": zeros_like(params)}
        if self.amsgrad:
            state["max_exp_avg_sq"] = zeros_like(params)
        return state

    def update(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        check_keys(grads, params)
        step = state["step"]
        t = step + 1
        lr = resolve(self.lr, step)
        b1, b2 = self.betas
        if self.decoupled:
            params = {k: w * (1 - lr * self.weight_decay) for k, w in params.items()}
        else:
            grads = _l2(grads, params, self.weight_decay)
        m = {k: torch.lerp(mk, grads[k], 1 - b1) for k, mk in state["exp_avg"].items()}
        v = {k: b2 * vk + (1 - b2) * grads[k] * grads[k] for k, vk in state["exp_avg_sq"].items()}
        new_state: State = {"step": t, "exp_avg": m, "exp_avg_sq": v}
        if self.amsgrad:
            v = {k: torch.maximum(vm, v[k]) for k, vm in state["max_exp_avg_sq"].items()}
            new_state["max_exp_avg_sq"] = v
        step_size = lr / (1 - b1 ** t)
        bc2_sqrt = (1 - b2 ** t) ** 0.5
        new = {k: w - step_size * m[k] / (v[k].sqrt() / bc2_sqrt + self.eps) for k, w in params.items()}
        return new, new_state

    def update_(self, grads: list[Tensor], bufs: dict[str, list[Tensor]], params: list[Tensor],
                step: int) -> dict[str, list[Tensor]]:
        t = step + 1
        lr = float(resolve(self.lr, step))
        b1, b2 = self.betas
        if self.decoupled:
            torch._foreach_mul_(params, 1 - lr * self.weight_decay)
        else:
            grads = _l2_(grads, params, self.weight_decay)
        m, v = bufs["exp_avg"], bufs["exp_avg_sq"]
        torch._foreach_lerp_(m, grads, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
        if self.amsgrad:
            torch._foreach_maximum_(bufs["max_exp_avg_sq"], v)
            v = bufs["max_exp_avg_sq"]
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, (1 - b2 ** t) ** 0.5)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, m, denom, value=-lr / (1 - b1 ** t))
        return bufs


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay, as ``torch.optim.AdamW``.

    w <- w (1 - lr wd), then the Adam step on the un-decayed gradient.
    """

    decoupled = True

    def __init__(self, lr: LR = 1e-3, betas: tuple[HParam, HParam] = (0.9, 0.999), eps: HParam = 1e-8,
                 weight_decay: HParam = 1e-2, amsgrad: bool = False):
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


class Adadelta(Rule):
    """Adadelta (Zeiler 2012), as ``torch.optim.Adadelta``.

    v <- rho v + (1 - rho) g^2
    d = sqrt(u + eps) / sqrt(v + eps) * g
    u <- rho u + (1 - rho) d^2,    w <- w - lr d
    """

    hparam_names = ("lr", "rho", "eps", "weight_decay")

    def __init__(self, lr: LR = 1.0, rho: HParam = 0.9, eps: HParam = 1e-6, weight_decay: HParam = 0.0):
        check_range("lr", lr, 0.0)
        check_range("rho", rho, 0.0, 1.0)
        check_range("eps", eps, 0.0, low_inclusive=False)
        check_range("weight_decay", weight_decay, 0.0)
        self.lr, self.rho, self.eps, self.weight_decay = lr, rho, eps, weight_decay

    def init(self, params: Params) -> State:
        return {"step": 0, "square_avg": zeros_like(params), "acc_delta": zeros_like(params)}

    def update(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        check_keys(grads, params)
        step, rho, eps = state["step"], self.rho, self.eps
        lr = resolve(self.lr, step)
        grads = _l2(grads, params, self.weight_decay)
        sq = {k: rho * v + (1 - rho) * grads[k] * grads[k] for k, v in state["square_avg"].items()}
        delta = {k: (u + eps).sqrt() / (sq[k] + eps).sqrt() * grads[k] for k, u in state["acc_delta"].items()}
        acc = {k: rho * u + (1 - rho) * delta[k] * delta[k] for k, u in state["acc_delta"].items()}
        new = {k: w - lr * delta[k] for k, w in params.items()}
        return new, {"step": step + 1, "square_avg": sq, "acc_delta": acc}


RULES: dict[str, type[Rule]] = {
    "gd": GD, "sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": Adagrad,
    "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW, "adadelta": Adadelta,
}


def make_rule(name: str, **hparams: Any) -> Rule:
    """Build a rule by its config name, e.g. ``make_rule("adam", lr=3e-4)``."""
    return RULES[check_choice("rule", name, sorted(RULES))](**hparams)
