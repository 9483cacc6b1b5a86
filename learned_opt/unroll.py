"""THE inner training loop. Meta-training, evaluation, experiments and benchmarks all call ``unroll``.

    result = unroll(task, rule, params, state, steps=100, generator=g)
    result.params, result.state, result.losses   # (steps,) training loss before each update

Differentiable or not: when gradients are enabled and anything the update depends
on requires grad (a learned rule's ``nn.Parameter``s, a tensor hyperparameter, or
the incoming params), the loop keeps the graph so that ``result.losses.mean()``
can be back-propagated into meta-parameters. ``first_order=True`` treats the
inner gradients as constants (no second derivatives), as Andrychowicz et al.
(2016) do. Otherwise it runs the updates under ``no_grad``.

A diverging inner run (a NaN/Inf loss, or a loss above ``divergence_factor``
times the reference loss) stops the loop: ``result.diverged`` says at which
step and why, ``result.losses`` holds the good steps before it, and the
returned params and state are the last ones whose loss was finite (those of
``losses[-1]``; the initial ones if the first loss was bad). NaN is never
propagated into the returned params.

Populations (:class:`learned_opt.tasks.population.PopulationTask`): a task whose loss is a
vector, one loss per independent member. The gradient is that of ``loss.sum()``
(each member gets exactly its own gradient), ``result.losses`` has shape
``(steps, N)``, the reference loss is per member (a float or an ``(N,)`` tensor may
be given), and the divergence of ANY member stops the whole population at that
step (``result.diverged_members`` lists the members that were bad). Stopping all
members, rather than masking the bad one, keeps NaN out of every gradient: a
masked member's NaN would still reach shared meta-parameters through the backward
pass (0 * NaN = NaN). The divergence check is the loop's one host sync per step.

Tasks with buffers (``task.buffer_names``, e.g. BatchNorm running statistics of a
:class:`~learned_opt.tasks.module.ModuleTask`): the params dict holds them beside the trained
tensors; the rule sees only the trained ones (:func:`~learned_opt.tasks.base.trainable`: its
state must come from ``init_state(rule, params, horizon, task)``), the loss is differentiated
with respect to those only, and each step's new buffer values (``task.loss_and_buffers``)
go into the returned params, never through the graph.

``on_divergence="freeze"`` (populations, not differentiable: what the evolution-strategies
estimators use) instead freezes only the bad members: from the step its loss went bad, a
member keeps its last good params and state, and its recorded loss is clipped to the
divergence threshold (``divergence_factor`` x its reference loss) for the remaining steps,
while the other members go on. ``result.diverged`` and ``diverged_members`` say who froze;
``result.losses`` has every step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from baselines.base import Params, State, UpdateRule
from baselines.checks import check_choice, check_int, check_number

from .tasks.base import Task, trainable

__all__ = ["unroll", "UnrollResult", "needs_graph", "init_state"]


@dataclass
class UnrollResult:
    params: Params
    state: State
    losses: Tensor                      # (steps_done,) training loss at the params before each update;
                                        # (steps_done, N) for a population of N members
    diverged: bool = False
    diverged_at: int | None = None      # index of the step whose loss was bad (its update was not applied)
    reason: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list)  # what ``callback`` returned
    diverged_members: list[int] | None = None  # populations: the members whose loss was bad

    @property
    def steps_done(self) -> int:
        return int(self.losses.shape[0])


def _tensors(obj: Any):
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def init_state(rule: UpdateRule, params: Params, horizon: int, task: Task | None = None) -> State:
    """``rule.init(params)``, or ``rule.init(params, horizon=horizon)`` for a rule with fraction-of-horizon
    features (``uses_horizon = True``, e.g. celo): the one place a run's length reaches a rule. With
    ``task``, its buffers (``task.buffer_names``) are left out: the rule never trains them."""
    params = trainable(task, params)
    return rule.init(params, horizon=horizon) if getattr(rule, "uses_horizon", False) else rule.init(params)


def needs_graph(rule: UpdateRule, params: Params, state: State | None = None) -> bool:
    """True when something the update depends on requires grad (and grad mode is on)."""
    if not torch.is_grad_enabled():
        return False
    if isinstance(rule, nn.Module) and any(p.requires_grad for p in rule.parameters()):
        return True
    hparams = rule.hparams() if hasattr(rule, "hparams") else {}
    return any(t.requires_grad for t in _tensors([hparams, params, state or {}]))


def unroll(task: Task, rule: UpdateRule, params: Params, state: State, steps: int,
           generator: Any, *, differentiable: bool | None = None, first_order: bool = False,
           divergence_factor: float = 1e3, reference_loss: float | Tensor | None = None,
           callback: Callable[[int, Params, Tensor], dict[str, Any] | None] | None = None,
           callback_every: int = 0, progress: bool | str = False, on_divergence: str = "stop") -> UnrollResult:
    """Run ``steps`` updates of ``rule`` on ``task`` from ``(params, state)``.

    Args:
        generator: source of the training batches (drawn with ``task.sample_batch``): a
            ``torch.Generator``, or one per member for a population.
        differentiable: keep the graph through the updates; ``None`` decides with :func:`needs_graph`.
        first_order: with ``differentiable``, drop second-order terms (gradients are constants).
        divergence_factor: a loss above ``divergence_factor * reference_loss`` counts as divergence.
        reference_loss: defaults to the loss at the first step of this call (per member for a
            population: a float for all, or a tensor of shape ``(N,)``).
        callback: ``callback(step, params, loss)`` every ``callback_every`` steps (and after the last
            update, with ``step == steps``); its returned dicts are collected in ``result.records``.
        progress: show a tqdm bar (a string is used as its description).
        on_divergence: ``"stop"`` (the whole run stops at the first bad loss) or ``"freeze"``
            (populations without a graph: bad members are frozen, the rest go on).
    """
    check_int("steps", steps, 0)
    check_choice("on_divergence", on_divergence, ("stop", "freeze"))
    check_number("divergence_factor", divergence_factor, 1, low_open=True)
    graph = needs_graph(rule, params, state) if differentiable is None else differentiable
    if graph and not torch.is_grad_enabled():
        raise RuntimeError("differentiable=True inside torch.no_grad(): enable grad mode to unroll differentiably")
    freeze = on_divergence == "freeze"
    if freeze and (graph or getattr(task, "population_size", None) is None):
        raise ValueError("on_divergence='freeze' needs a population task and an unroll without a graph")
    frozen: Tensor | None = None
    first_bad: int | None = None
    losses: list[Tensor] = []
    records: list[dict[str, Any]] = []
    ref = reference_loss
    last_good = (params, state)
    steps_iter = range(steps)
    if progress:
        from tqdm.auto import tqdm
        steps_iter = tqdm(steps_iter, desc=progress if isinstance(progress, str) else "unroll", leave=False)

    def record(step: int, p: Params, loss: Tensor) -> None:
        out = callback(step, p, loss)
        if out is not None:
            records.append(out)

    buffer_names = getattr(task, "buffer_names", frozenset())   # duck-typed tasks may not have it
    buffers: Params = {}
    for step in steps_iter:
        batch = task.sample_batch(generator, "train")
        if buffer_names:
            buffers = {k: v.detach() for k, v in params.items() if k in buffer_names}
        if graph:
            p = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in params.items()
                 if k not in buffer_names}
            loss = task.loss_and_buffers({**p, **buffers}, batch) if buffer_names else task.loss(p, batch)
            if buffer_names:
                loss, buffers = loss
            # first order: the gradient is a constant, but the loss keeps its graph for the meta-loss
            grads = torch.autograd.grad(_total(loss), list(p.values()), create_graph=not first_order,
                                        retain_graph=True)
        else:
            with torch.enable_grad():
                p = {k: v.detach().requires_grad_() for k, v in params.items() if k not in buffer_names}
                loss = task.loss_and_buffers({**p, **buffers}, batch) if buffer_names else task.loss(p, batch)
                if buffer_names:
                    loss, buffers = loss
                grads = torch.autograd.grad(_total(loss), list(p.values()))
            loss = loss.detach()
        if loss.dim() == 0:
            value = float(loss.detach())  # one host sync per step: the divergence check needs it
            if ref is None:
                ref = value
            if not math.isfinite(value) or value > divergence_factor * max(abs(ref), 1e-12):
                why = "non-finite loss" if not math.isfinite(value) else \
                    f"loss {value:.4g} > {divergence_factor:g} x reference {ref:.4g}"
                return UnrollResult(*last_good, _stack(losses, params, task), True, step, why, records)
        else:  # a population: per-member reference, any bad member stops all (one host sync)
            value = loss.detach()
            if ref is None:
                ref = value.clone()
            elif not isinstance(ref, Tensor) or ref.device != value.device:
                ref = torch.as_tensor(ref, dtype=value.dtype).to(value.device).expand_as(value)
            threshold = divergence_factor * ref.abs().clamp_min(1e-12)
            bad = ~torch.isfinite(value) | (value > threshold)
            if freeze:
                frozen = bad if frozen is None else frozen | bad
                if first_bad is None and bool(frozen.any()):
                    first_bad = step
                if first_bad is not None:
                    clip = torch.nan_to_num(threshold, nan=divergence_factor, posinf=divergence_factor)
                    loss = torch.where(frozen, clip.to(value.dtype), value)
                    grads = tuple(torch.where(_member_mask(frozen, g), torch.zeros_like(g), g) for g in grads)
                    held = (params, state)
            elif bool(bad.any()):
                members = bad.nonzero().flatten().tolist()
                i = members[0]
                v, r = float(value[i]), float(ref[i])
                why = (f"member {i}: non-finite loss" if not math.isfinite(v) else
                       f"member {i}: loss {v:.4g} > {divergence_factor:g} x reference {r:.4g}")
                if len(members) > 1:
                    why += f" ({len(members)} members bad: {members})"
                return UnrollResult(*last_good, _stack(losses, params, task), True, step, why, records, members)
        last_good = (params, state)
        if callback is not None and callback_every and step % callback_every == 0:
            record(step, params, loss)
        grads = dict(zip(p, grads))
        if graph:
            params, state = rule.update(grads, state, p)
        else:
            with torch.no_grad():
                params, state = rule.update(grads, state, {k: v.detach() for k, v in p.items()})
        if buffer_names:  # the loss's new buffer values, never part of the graph
            params = {**params, **{k: v.detach() for k, v in buffers.items()}}
        if freeze and first_bad is not None:
            params, state = _hold(frozen, held[0], params), _hold(frozen, held[1], state)
        losses.append(loss)
    if callback is not None and callback_every:
        record(steps, params, losses[-1] if losses else torch.tensor(float("nan")))
    if freeze and first_bad is not None:
        members = frozen.nonzero().flatten().tolist()
        return UnrollResult(params, state, _stack(losses, params, task), True, first_bad,
                            f"{len(members)} member(s) diverged and were frozen: {members}", records, members)
    return UnrollResult(params, state, _stack(losses, params, task), False, None, None, records)


def _member_mask(mask: Tensor, like: Tensor) -> Tensor:
    """A population's per-member ``mask`` (N,) shaped to broadcast over ``like`` (N, ...)."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _hold(mask: Tensor, old: Any, new: Any) -> Any:
    """``new`` with the members in ``mask`` taken from ``old`` (tensor leaves of matching pytrees)."""
    if isinstance(new, Tensor):
        return torch.where(_member_mask(mask, new), old, new) if new.dim() else new
    if isinstance(new, dict):
        return {k: _hold(mask, old[k], v) for k, v in new.items()}
    if isinstance(new, (list, tuple)):
        return type(new)(_hold(mask, o, v) for o, v in zip(old, new))
    return new


def _total(loss: Tensor) -> Tensor:
    """What is differentiated: the loss, or the sum of a population's independent member losses."""
    return loss if loss.dim() == 0 else loss.sum()


def _stack(losses: list[Tensor], params: Params, task: Task | None = None) -> Tensor:
    if losses:
        return torch.stack(losses)
    device = next(iter(params.values())).device if params else None
    n = getattr(task, "population_size", None)
    return torch.zeros((0, n) if n else 0, device=device)
