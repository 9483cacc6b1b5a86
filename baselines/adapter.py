"""Any :class:`~baselines.base.UpdateRule` as an ordinary ``torch.optim.Optimizer``.

    opt = RuleOptimizer(model.parameters(), Adam(lr=1e-3))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)   # works: it edits group["lr"]
    for x, y in data:
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()

Each param group holds the rule's hyperparameters (``rule.hparam_names``) as
entries, so torch schedulers and per-group settings work as with torch.optim.
Per-parameter state lives in ``self.state[p]`` as ``{"step": int, <buffer>: Tensor}``,
which makes ``state_dict``/``load_state_dict`` the standard torch ones.

When the rule has an in-place fast path (``update_``) and every hyperparameter
is a plain number, the step uses it; otherwise it calls the pure ``update`` and
copies the result into the parameters. Learned rules (``nn.Module``s) plug in the
same way.

The adapter is an ordinary ``torch.optim`` citizen: ``copy.deepcopy(opt)``,
``pickle``/``torch.save`` of the whole object (the rule travels with it) and
``state_dict``/``load_state_dict`` all continue exactly. Hyperparameters given as
keyword arguments, in a param group or set later (by a scheduler) are validated
at once or at the next step: a hand-crafted rule by its own constructor, any other
rule (a learned one) by :func:`~baselines.base.check_hparam` and, when it has one,
its ``check_hparams(hparams)`` method.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from .base import Rule, UpdateRule, check_hparam

__all__ = ["RuleOptimizer"]


class RuleOptimizer(torch.optim.Optimizer):
    """Wrap ``rule`` as a ``torch.optim.Optimizer`` over ``params``.

    Keyword arguments override the rule's hyperparameters for every group
    (``RuleOptimizer(model.parameters(), Adam(), lr=3e-4)``); a param group
    dict may override them per group, as with torch.optim.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], rule: UpdateRule, **hparams: Any):
        if isinstance(rule, type):
            raise TypeError(f"rule must be an update-rule instance, got the class {rule.__name__}; "
                            f"pass an instance, e.g. RuleOptimizer(params, {rule.__name__}())")
        if not isinstance(rule, UpdateRule):
            raise TypeError(f"rule must implement init(params) and update(grads, state, params), "
                            f"got {type(rule).__name__}")
        names = tuple(getattr(rule, "hparam_names", ()))
        unknown = sorted(set(hparams) - set(names))
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {unknown} for {type(rule).__name__}; "
                             f"allowed: {list(names)}")
        defaults = {n: getattr(rule, n) for n in names}
        defaults.update(hparams)
        self.rule = rule
        self._hparam_names = names
        self._rules: dict[int, tuple[dict[str, Any], UpdateRule]] = {}
        super().__init__(params, defaults)  # add_param_group validates each group's hyperparameters

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        # validate the group's hyperparameters now, not at the first step
        self._rule_for(len(self.param_groups) - 1, self.param_groups[-1])

    # torch's Optimizer pickles only defaults, state and param_groups; the rule travels too, so that
    # copy.deepcopy, pickle and torch.save of the whole optimizer give one that continues exactly.
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(rule=self.rule, _hparam_names=self._hparam_names)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # (torch's load_state_dict calls this too, with state and param_groups only)
        had_flag = "differentiable" in state.get("defaults", getattr(self, "defaults", {}))
        super().__setstate__(state)
        if not had_flag:  # torch adds it to defaults; this adapter has no such hyperparameter
            self.defaults.pop("differentiable", None)
        self._rules = {}

    def _rule_for(self, index: int, group: dict) -> UpdateRule:
        """The rule with this group's current hyperparameters (rebuilt only when they change)."""
        hp = {n: group[n] for n in self._hparam_names}
        cached = self._rules.get(index)
        if cached is not None and all(cached[0][n] is v or _same(cached[0][n], v) for n, v in hp.items()):
            return cached[1]
        try:
            rule = _configured(self.rule, hp)
        except (TypeError, ValueError) as e:
            raise type(e)(f"param group {index}: {e}") from e
        self._rules[index] = (hp, rule)
        return rule

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            rule = self._rule_for(index, group)
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("RuleOptimizer does not support sparse gradients")
            self._init_state(rule, [p for p in params if not self.state[p]])
            by_step: dict[int, list[Tensor]] = defaultdict(list)
            for p in params:
                by_step[self.state[p]["step"]].append(p)
            for step, plist in by_step.items():
                self._apply(rule, step, plist)
        return loss

    def _init_state(self, rule: UpdateRule, fresh: list[Tensor]) -> None:
        if not fresh:
            return
        state = rule.init({str(i): p.detach() for i, p in enumerate(fresh)})
        for i, p in enumerate(fresh):
            self.state[p] = {"step": int(state["step"]),
                             **{b: v[str(i)] for b, v in state.items() if b != "step"}}

    def _apply(self, rule: UpdateRule, step: int, plist: list[Tensor]) -> None:
        buffers = [b for b in self.state[plist[0]] if b != "step"]
        fast = getattr(rule, "update_", None)
        if fast is not None and getattr(rule, "numeric_hparams", lambda: False)():
            bufs = {b: [self.state[p][b] for p in plist] for b in buffers}
            new_bufs = fast([p.grad for p in plist], bufs, plist, step)
            for b, tensors in new_bufs.items():
                for p, t in zip(plist, tensors):
                    self.state[p][b] = t
        else:
            names = [str(i) for i in range(len(plist))]
            state = {"step": step, **{b: {n: self.state[p][b] for n, p in zip(names, plist)} for b in buffers}}
            new_params, new_state = rule.update({n: p.grad for n, p in zip(names, plist)}, state,
                                                {n: p for n, p in zip(names, plist)})
            for n, p in zip(names, plist):
                p.copy_(new_params[n])
                for b in buffers:
                    self.state[p][b] = new_state[b][n]
        for p in plist:
            self.state[p]["step"] = step + 1


def _configured(rule: UpdateRule, hp: dict[str, Any]) -> UpdateRule:
    """``rule`` with the hyperparameters ``hp``, validated the way hand-crafted rules are."""
    if isinstance(rule, Rule):
        return type(rule)(**hp)  # the constructor validates every value
    schedulable = tuple(getattr(rule, "schedulable", ()))
    for n, v in hp.items():
        check_hparam(n, v, schedulable)
    check = getattr(rule, "check_hparams", None)
    if callable(check):
        check(dict(hp))
    new = copy.copy(rule)  # shares the learned rule's meta-parameters
    for n, v in hp.items():
        setattr(new, n, v)
    return new


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return False  # identity was already compared; a different tensor is a change
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - incomparable values count as changed
        return False
