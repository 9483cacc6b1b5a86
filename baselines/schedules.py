"""Learning-rate schedules, snapshot-ensemble hooks and the LR range test.

A schedule is a callable ``sched(step) -> lr`` where ``step`` is the 0-based
index of the update being made; a rule calls ``lr = sched(state["step"])``
(see :func:`baselines.base.resolve`). Every schedule here matches its
``torch.optim.lr_scheduler`` counterpart: ``sched(k)`` is the lr that the
k-th ``optimizer.step()`` (k = 0, 1, ...) uses when the torch scheduler's
``step()`` is called once after every optimizer step.

==========================  ============================================
here                        torch.optim.lr_scheduler
==========================  ============================================
:class:`Constant`           (no scheduler)
:class:`StepDecay`          ``StepLR``
:class:`Exponential`        ``ExponentialLR``
:class:`CyclicLR`           ``CyclicLR`` (built-in modes; momentum too)
:class:`CosineWarmRestarts` ``CosineAnnealingWarmRestarts``
:class:`ReduceOnPlateau`    ``ReduceLROnPlateau`` (stateful, fed a metric)
==========================  ============================================

Cyclic schedules (:class:`CyclicLR`, :class:`CosineWarmRestarts`) also say
where their cycles end, which :class:`SnapshotCollector` uses to take the
snapshots of a snapshot ensemble. :func:`lr_range_test` is Smith's test for
choosing the bounds of a cyclic schedule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import Tensor

from .base import Params, check_range
from .checks import check_choice, check_int

__all__ = [
    "Constant", "StepDecay", "Exponential", "CyclicLR", "CosineWarmRestarts", "ReduceOnPlateau",
    "SnapshotCollector", "RangeTestResult", "lr_range_test", "SCHEDULES", "make_schedule",
]


class _Schedule:
    """Shared ``__repr__``: the class name and the constructor arguments in ``_fields``."""

    _fields: tuple[str, ...] = ()

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({args})"


class Constant(_Schedule):
    """lr(step) = lr."""

    _fields = ("lr",)

    def __init__(self, lr: float):
        check_range("lr", lr, 0.0)
        self.lr = lr

    def __call__(self, step: int) -> float:
        return self.lr


class StepDecay(_Schedule):
    """lr(step) = lr * gamma ** (step // step_size), as ``StepLR``."""

    _fields = ("lr", "step_size", "gamma")

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        check_range("lr", lr, 0.0)
        check_int("step_size", step_size, 1)
        check_range("gamma", gamma, 0.0, low_inclusive=False)
        self.lr, self.step_size, self.gamma = lr, step_size, gamma

    def __call__(self, step: int) -> float:
        return self.lr * self.gamma ** (step // self.step_size)


class Exponential(_Schedule):
    """lr(step) = lr * gamma ** step, as ``ExponentialLR``."""

    _fields = ("lr", "gamma")

    def __init__(self, lr: float, gamma: float):
        check_range("lr", lr, 0.0)
        check_range("gamma", gamma, 0.0, low_inclusive=False)
        self.lr, self.gamma = lr, gamma

    def __call__(self, step: int) -> float:
        return self.lr * self.gamma ** step


class CyclicLR(_Schedule):
    """Cyclical learning rate (Smith 2015, arXiv:1506.01186), as torch's ``CyclicLR``.

    A cycle has ``T = step_size_up + step_size_down`` steps: the lr rises
    linearly from ``base_lr`` to the peak over ``step_size_up`` steps, then
    falls back over ``step_size_down`` steps (default: ``step_size_up``)::

        cycle = 1 + step // T                      (1-based)
        x     = step / T - (cycle - 1)             (position in the cycle, in [0, 1))
        r     = step_size_up / T
        h     = x / r            if x <= r  else  (x - 1) / (r - 1)      (in [0, 1])
        lr    = base_lr + (max_lr - base_lr) * h * scale

    with ``scale`` = 1 (``"triangular"``), ``1 / 2 ** (cycle - 1)``
    (``"triangular2"``: the amplitude halves every cycle) or ``gamma ** step``
    (``"exp_range"``). With ``cycle_momentum=True``, :meth:`momentum` cycles
    inversely: ``max_momentum - (max_momentum - base_momentum) * h * scale``,
    so momentum is highest where the lr is lowest.

    The lr is ``base_lr`` at the first step of each cycle; :meth:`is_cycle_end`
    marks the last step of each cycle (the step before the lr starts rising again).
    """

    MODES = ("triangular", "triangular2", "exp_range")
    _fields = ("base_lr", "max_lr", "step_size_up", "step_size_down", "mode", "gamma",
               "cycle_momentum", "base_momentum", "max_momentum")

    def __init__(self, base_lr: float, max_lr: float, step_size_up: int = 2000,
                 step_size_down: Optional[int] = None, mode: str = "triangular", gamma: float = 1.0,
                 cycle_momentum: bool = False, base_momentum: float = 0.8, max_momentum: float = 0.9):
        check_range("base_lr", base_lr, 0.0)
        check_range("max_lr", max_lr, base_lr)
        check_int("step_size_up", step_size_up, 1)
        if step_size_down is not None:
            check_int("step_size_down", step_size_down, 1)
        check_choice("mode", mode, self.MODES)
        check_range("gamma", gamma, 0.0, 1.0, low_inclusive=False, high_inclusive=True)
        if cycle_momentum:
            check_range("base_momentum", base_momentum, 0.0, 1.0)
            check_range("max_momentum", max_momentum, base_momentum, 1.0)
        self.base_lr, self.max_lr, self.mode, self.gamma = base_lr, max_lr, mode, gamma
        self.step_size_up, self.step_size_down = step_size_up, step_size_down
        self.cycle_momentum, self.base_momentum, self.max_momentum = cycle_momentum, base_momentum, max_momentum
        self._total = step_size_up + (step_size_up if step_size_down is None else step_size_down)

    def cycle(self, step: int) -> int:
        """1-based index of the cycle that ``step`` belongs to."""
        return step // self._total + 1

    def is_cycle_end(self, step: int) -> bool:
        """True when ``step`` is the last step of its cycle (the next one starts a new cycle)."""
        return (step + 1) % self._total == 0

    def cycle_ends(self, num_steps: int) -> list[int]:
        """The steps in ``range(num_steps)`` for which :meth:`is_cycle_end` holds."""
        return list(range(self._total - 1, num_steps, self._total))

    def _height_and_scale(self, step: int) -> tuple[float, float]:
        # The same floating-point operations as torch's CyclicLR.get_lr.
        cycle = self.cycle(step)
        x = 1.0 + step / self._total - cycle
        ratio = self.step_size_up / self._total
        height = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        if self.mode == "triangular":
            scale = 1.0
        elif self.mode == "triangular2":
            scale = 1 / (2.0 ** (cycle - 1))
        else:
            scale = self.gamma ** step
        return height, scale

    def __call__(self, step: int) -> float:
        height, scale = self._height_and_scale(step)
        return self.base_lr + (self.max_lr - self.base_lr) * height * scale

    def momentum(self, step: int) -> float:
        """Momentum at ``step``, cycling inversely to the lr (requires ``cycle_momentum=True``)."""
        if not self.cycle_momentum:
            raise ValueError("momentum() needs cycle_momentum=True; got cycle_momentum=False")
        height, scale = self._height_and_scale(step)
        return self.max_momentum - (self.max_momentum - self.base_momentum) * height * scale


class CosineWarmRestarts(_Schedule):
    """Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2017, arXiv:1608.03983).

    As torch's ``CosineAnnealingWarmRestarts`` stepped once per update::

        lr(step) = eta_min + (lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2

    where cycle ``i`` (0-based) lasts ``T_i = T_0 * T_mult ** i`` steps and
    ``T_cur`` is the number of steps since the last restart. The position is
    found by integer arithmetic, so cycle boundaries are exact for any length.
    The last step of a cycle has ``T_cur = T_i - 1``: its lr is the lowest of
    the cycle, and the next step restarts at ``lr``.
    """

    _fields = ("lr", "T_0", "T_mult", "eta_min")

    def __init__(self, lr: float, T_0: int, T_mult: int = 1, eta_min: float = 0.0):
        check_range("lr", lr, 0.0)
        check_int("T_0", T_0, 1)
        check_int("T_mult", T_mult, 1)
        check_range("eta_min", eta_min, 0.0)
        self.lr, self.T_0, self.T_mult, self.eta_min = lr, T_0, T_mult, eta_min

    def _position(self, step: int) -> tuple[int, int, int]:
        """(0-based cycle index, T_cur, T_i) of ``step``."""
        if self.T_mult == 1:
            return step // self.T_0, step % self.T_0, self.T_0
        cycle, start, length = 0, 0, self.T_0
        while step >= start + length:
            cycle, start, length = cycle + 1, start + length, length * self.T_mult
        return cycle, step - start, length

    def cycle(self, step: int) -> int:
        """1-based index of the cycle that ``step`` belongs to."""
        return self._position(step)[0] + 1

    def is_cycle_end(self, step: int) -> bool:
        """True when ``step`` is the last update of its cycle (the next step restarts)."""
        _, t_cur, t_i = self._position(step)
        return t_cur == t_i - 1

    def cycle_ends(self, num_steps: int) -> list[int]:
        """The steps in ``range(num_steps)`` for which :meth:`is_cycle_end` holds."""
        ends, length, end = [], self.T_0, self.T_0 - 1
        while end < num_steps:
            ends.append(end)
            length *= self.T_mult
            end += length
        return ends

    def __call__(self, step: int) -> float:
        _, t_cur, t_i = self._position(step)
        return self.eta_min + (self.lr - self.eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


class ReduceOnPlateau(_Schedule):
    """Reduce the lr by ``factor`` when a metric stops improving, as ``ReduceLROnPlateau``.

    Call :meth:`step` with a validation metric (e.g. once per epoch); calling
    the object returns the current lr whatever the step. The logic, per metric::

        improved = metric < best * (1 - threshold)   (mode "min", threshold_mode "rel")
                   metric < best - threshold         ("min", "abs")
                   metric > best * (1 + threshold)   ("max", "rel")
                   metric > best + threshold         ("max", "abs")
        if improved: best = metric; num_bad_epochs = 0  else: num_bad_epochs += 1
        if cooldown_counter > 0: cooldown_counter -= 1; num_bad_epochs = 0
        if num_bad_epochs > patience:
            new = max(lr * factor, min_lr); lr = new if lr - new > eps
            cooldown_counter = cooldown; num_bad_epochs = 0

    ``best`` starts at +inf ("min") or -inf ("max"). :meth:`state_dict` is
    JSON-serialisable (non-finite ``best`` is stored as a string).
    """

    MODES = ("min", "max")
    THRESHOLD_MODES = ("rel", "abs")
    _fields = ("lr", "mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps")
    _state_keys = ("lr", "best", "num_bad_epochs", "cooldown_counter", "num_reductions")

    def __init__(self, lr: float, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr: float = 0.0, eps: float = 1e-8):
        check_range("lr", lr, 0.0)
        check_choice("mode", mode, self.MODES)
        check_range("factor", factor, 0.0, 1.0, low_inclusive=False)
        check_int("patience", patience, 0)
        check_range("threshold", threshold, 0.0)
        check_choice("threshold_mode", threshold_mode, self.THRESHOLD_MODES)
        check_int("cooldown", cooldown, 0)
        check_range("min_lr", min_lr, 0.0)
        check_range("eps", eps, 0.0)
        self.lr = float(lr)
        self.mode, self.factor, self.patience = mode, factor, patience
        self.threshold, self.threshold_mode = threshold, threshold_mode
        self.cooldown, self.min_lr, self.eps = cooldown, min_lr, eps
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.num_reductions = 0

    def _is_better(self, metric: float) -> bool:
        if self.mode == "min":
            bound = self.best * (1.0 - self.threshold) if self.threshold_mode == "rel" else self.best - self.threshold
            return metric < bound
        bound = self.best * (self.threshold + 1.0) if self.threshold_mode == "rel" else self.best + self.threshold
        return metric > bound

    def step(self, metric: float | Tensor) -> float:
        """Feed one metric value (a number or a one-element tensor); returns the lr from now on."""
        metric = float(metric)
        if self._is_better(metric):
            self.best = metric
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
                self.num_reductions += 1
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return self.lr

    def __call__(self, step: int) -> float:
        return self.lr

    def state_dict(self) -> dict[str, Any]:
        """The mutable state (not the hyperparameters), JSON-serialisable."""
        state = {k: getattr(self, k) for k in self._state_keys}
        if not math.isfinite(state["best"]):
            state["best"] = str(state["best"])  # "inf" / "-inf"; float() reads it back
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = [k for k in self._state_keys if k not in state]
        if missing:
            raise KeyError(f"ReduceOnPlateau state is missing {missing}")
        self.lr, self.best = float(state["lr"]), float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.num_reductions = int(state["num_reductions"])


class SnapshotCollector:
    """Collect parameter snapshots at cycle ends, for snapshot ensembles (Huang et al. 2017).

    ``schedule`` is any schedule with ``is_cycle_end(step)`` (:class:`CosineWarmRestarts`,
    :class:`CyclicLR`). Call :meth:`maybe_snapshot` after every update with the
    step index of that update and the updated params; at each cycle end it
    stores a detached clone in :attr:`snapshots` as ``(step, params)`` and calls
    ``callback(step, params)`` with the stored clone, if given.
    """

    def __init__(self, schedule: Any, callback: Optional[Callable[[int, Params], None]] = None):
        if not callable(getattr(schedule, "is_cycle_end", None)):
            raise TypeError(f"schedule={schedule!r} has no is_cycle_end(step); "
                            f"allowed: CosineWarmRestarts, CyclicLR or any schedule with is_cycle_end")
        self.schedule, self.callback = schedule, callback
        self.snapshots: list[tuple[int, Params]] = []

    def maybe_snapshot(self, step: int, params: Params) -> bool:
        """Snapshot ``params`` if ``step`` ends a cycle; return whether it did."""
        if not self.schedule.is_cycle_end(step):
            return False
        snapshot = {k: p.detach().clone() for k, p in params.items()}
        self.snapshots.append((step, snapshot))
        if self.callback is not None:
            self.callback(step, snapshot)
        return True

    def __repr__(self) -> str:
        return f"SnapshotCollector(schedule={self.schedule!r}, snapshots={len(self.snapshots)})"


@dataclass
class RangeTestResult:
    """What :func:`lr_range_test` measured and suggests.

    ``lrs[i]``, ``losses[i]`` and ``smoothed[i]`` belong to the i-th training
    step (the last one is the diverging step if the test stopped early);
    ``diverged_at`` is the lr at which it stopped, or None if it ran to the end.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_min_lr: float
    suggested_max_lr: float
    diverged_at: Optional[float]


def lr_range_test(train_step: Callable[[float], float], min_lr: float = 1e-7, max_lr: float = 10.0,
                  num_steps: int = 100, mode: str = "exp", smooth: float = 0.05,
                  diverge_factor: float = 4.0) -> RangeTestResult:
    """Smith's learning-rate range test (arXiv:1506.01186, section 3.3).

    Runs ``train_step(lr)`` (one training step at that lr, returning the
    training loss) for ``num_steps`` steps while the lr grows from ``min_lr``
    to ``max_lr``: geometrically (``mode="exp"``, ``lr_i = min_lr *
    (max_lr / min_lr) ** (i / (num_steps - 1))``) or linearly (``"linear"``).
    The loss is smoothed by a bias-corrected exponential moving average::

        avg_i = (1 - smooth) * avg_{i-1} + smooth * loss_i,  avg_{-1} = 0
        smoothed_i = avg_i / (1 - (1 - smooth) ** (i + 1))

    (``smooth=1`` means no smoothing). The test stops early, recording
    ``diverged_at = lr_i``, once ``smoothed_i`` is NaN/Inf or exceeds
    ``diverge_factor`` times the best smoothed loss so far (losses are assumed
    positive).

    Suggested bounds for a cyclic schedule (a heuristic): ``suggested_max_lr``
    is the lr at the minimum of the smoothed loss; ``suggested_min_lr`` is the
    first lr at which the smoothed loss has fallen from its initial value by
    10% of the total fall, i.e. ``smoothed_i <= s_0 - 0.1 * (s_0 - s_min)``.
    The moving average lags the raw loss, so its minimum comes after the raw
    loss's. When the loss falls by orders of magnitude (e.g. a noise-free
    quadratic) the lag is many steps, past the lr where the raw loss already
    grows; use a larger ``smooth`` (``1`` for noise-free losses) there.
    """
    check_range("min_lr", min_lr, 0.0, low_inclusive=False)
    check_range("max_lr", max_lr, min_lr, low_inclusive=False)
    check_int("num_steps", num_steps, 2)
    check_choice("mode", mode, ("exp", "linear"))
    check_range("smooth", smooth, 0.0, 1.0, low_inclusive=False, high_inclusive=True)
    check_range("diverge_factor", diverge_factor, 1.0, low_inclusive=False)

    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, best, diverged_at = 0.0, math.inf, None
    for i in range(num_steps):
        frac = i / (num_steps - 1)
        lr = min_lr * (max_lr / min_lr) ** frac if mode == "exp" else min_lr + (max_lr - min_lr) * frac
        loss = float(train_step(lr))
        avg = (1 - smooth) * avg + smooth * loss
        s = avg / (1 - (1 - smooth) ** (i + 1))
        lrs.append(lr)
        losses.append(loss)
        smoothed.append(s)
        if not math.isfinite(s) or s > diverge_factor * best:
            diverged_at = lr
            break
        best = min(best, s)

    if not math.isfinite(smoothed[0]):
        raise ValueError(f"train_step returned loss={losses[0]!r} at the first lr, min_lr={min_lr!r}; "
                         f"allowed: a finite loss at min_lr (lower min_lr)")
    i_min = min(range(len(smoothed) - (diverged_at is not None)), key=smoothed.__getitem__)
    target = smoothed[0] - 0.1 * (smoothed[0] - smoothed[i_min])
    i_low = next(i for i in range(i_min + 1) if smoothed[i] <= target)
    return RangeTestResult(lrs=lrs, losses=losses, smoothed=smoothed, suggested_min_lr=lrs[i_low],
                           suggested_max_lr=lrs[i_min], diverged_at=diverged_at)


SCHEDULES: dict[str, type] = {
    "constant": Constant, "step": StepDecay, "exponential": Exponential, "cyclic": CyclicLR,
    "cosine_warm_restarts": CosineWarmRestarts, "reduce_on_plateau": ReduceOnPlateau,
}


def make_schedule(name: str, **kwargs: Any) -> Any:
    """Build a schedule by its config name, e.g. ``make_schedule("cyclic", base_lr=1e-3, max_lr=1e-1)``."""
    return SCHEDULES[check_choice("schedule", name, sorted(SCHEDULES))](**kwargs)
