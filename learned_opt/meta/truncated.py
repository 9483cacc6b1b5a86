"""Truncated back-propagation through the unroll: the meta-gradient estimator.

Each of ``num_tasks`` slots holds one inner problem sampled from a task family.
A call to :meth:`TruncatedBPTT.estimate` advances every slot by ``truncation``
inner steps with the one :func:`~learned_opt.unroll.unroll` (differentiable, full
second order or ``first_order``), takes the meta-loss over those steps, and
back-propagates it into the rule's meta-parameters. The inner state is carried
(detached) into the next truncation, and a slot is reset to a fresh task after
``horizon`` inner steps (Andrychowicz et al. 2016: horizon 100, truncation 20).

Meta-loss per truncation: ``mean`` of the inner training losses, or ``log_mean``,
the mean of their logarithms (less dominated by the tasks with the largest
losses). Truncations whose inner run diverges, or whose meta-gradient is not
finite, are cut: they contribute nothing, are counted, and their slot is reset.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..tasks.base import Task, TaskFamily
from ..unroll import unroll

META_LOSSES = ("mean", "log_mean")


def detach_tree(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach()
    if isinstance(obj, dict):
        return {k: detach_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(detach_tree(v) for v in obj)
    return obj


@dataclass
class Slot:
    """One inner problem in flight."""
    task_seed: int
    task: Task
    params: dict
    state: dict
    batches: torch.Generator
    t: int = 0
    reference_loss: float | None = None


@dataclass
class Estimate:
    meta_loss: float | None          # mean over the tasks that counted; None when none did
    grads: list[Tensor] | None       # mean meta-gradient over those tasks, one per meta-parameter
    counted: int                     # tasks that contributed
    diverged: int                    # truncations cut (diverged inner run or non-finite meta-gradient)
    inner_loss: float | None         # mean inner training loss over the counted truncations


class TruncatedBPTT:
    def __init__(self, family: TaskFamily, *, horizon: int, truncation: int, num_tasks: int,
                 device: torch.device, generator: torch.Generator, first_order: bool = False,
                 meta_loss: str = "mean", divergence_factor: float = 1e3):
        if truncation < 1 or horizon < truncation:
            raise ValueError(f"need 1 <= truncation <= horizon, got truncation={truncation}, horizon={horizon}")
        if num_tasks < 1:
            raise ValueError(f"num_tasks={num_tasks} must be >= 1")
        if meta_loss not in META_LOSSES:
            raise ValueError(f"meta_loss={meta_loss!r} is not allowed; allowed: {', '.join(META_LOSSES)}")
        self.family, self.horizon, self.truncation = family, horizon, truncation
        self.num_tasks, self.device, self.generator = num_tasks, device, generator
        self.first_order, self.meta_loss, self.divergence_factor = first_order, meta_loss, divergence_factor
        self.slots: list[Slot | None] = [None] * num_tasks

    # ------------------------------------------------------------------ inner problems
    def _new_slot(self, rule: nn.Module, task_seed: int | None = None, batch_state: Tensor | None = None) -> Slot:
        if task_seed is None:
            task_seed = int(torch.randint(0, 2**62, (), generator=self.generator))
        task = self.family.sample(torch.Generator().manual_seed(task_seed))
        init_gen = torch.Generator(device=self.device).manual_seed(task_seed)
        params = task.init_params(init_gen)
        batches = torch.Generator(device=self.device).manual_seed(task_seed + 1)
        with torch.no_grad():
            state = rule.init(params)
        return Slot(task_seed, task, params, state, batches)

    def _loss(self, losses: Tensor) -> Tensor:
        return losses.mean() if self.meta_loss == "mean" else losses.clamp_min(1e-30).log().mean()

    def estimate(self, rule: nn.Module) -> Estimate:
        """Advance every slot by one truncation; the mean meta-gradient of those that stayed finite."""
        meta_params = [p for p in rule.parameters() if p.requires_grad]
        total: list[Tensor] | None = None
        losses, inner, counted, diverged = [], [], 0, 0
        for i in range(self.num_tasks):
            slot = self.slots[i]
            if slot is None or slot.t >= self.horizon:
                slot = self.slots[i] = self._new_slot(rule)
            steps = min(self.truncation, self.horizon - slot.t)
            res = unroll(slot.task, rule, detach_tree(slot.params), detach_tree(slot.state), steps, slot.batches,
                         differentiable=True, first_order=self.first_order,
                         divergence_factor=self.divergence_factor, reference_loss=slot.reference_loss)
            if slot.reference_loss is None and res.steps_done:
                slot.reference_loss = float(res.losses[0].detach())
            if res.diverged or res.steps_done == 0:
                diverged += 1
                self.slots[i] = None
                continue
            loss = self._loss(res.losses)
            grads = torch.autograd.grad(loss, meta_params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(meta_params, grads)]
            if not all(torch.isfinite(g).all() for g in grads):
                diverged += 1
                self.slots[i] = None
                continue
            total = grads if total is None else [a + b for a, b in zip(total, grads)]
            losses.append(float(loss.detach()))
            inner.append(float(res.losses.detach().mean()))
            counted += 1
            slot.params, slot.state, slot.t = detach_tree(res.params), detach_tree(res.state), slot.t + steps
        if not counted:
            return Estimate(None, None, 0, diverged, None)
        return Estimate(sum(losses) / counted, [g / counted for g in total], counted, diverged,
                        sum(inner) / counted)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        """Everything needed to continue bit-for-bit: each slot's task seed, inner params/state, RNG."""
        slots = []
        for s in self.slots:
            if s is None:
                slots.append({})
                continue
            slots.append({"task_seed": s.task_seed, "params": {k: v.cpu() for k, v in s.params.items()},
                          "state": detach_tree(_to(s.state, "cpu")), "batches": s.batches.get_state(),
                          "t": s.t, "reference_loss": s.reference_loss})
        return {"generator": self.generator.get_state(), "slots": slots}

    def load_state_dict(self, sd: dict, rule: nn.Module) -> None:
        if len(sd["slots"]) != self.num_tasks:
            raise ValueError(f"checkpoint has {len(sd['slots'])} inner slots but num_tasks={self.num_tasks}")
        self.generator.set_state(sd["generator"])
        self.slots = []
        for s in sd["slots"]:
            if not s:
                self.slots.append(None)
                continue
            slot = self._new_slot(rule, task_seed=int(s["task_seed"]))
            slot.params = {k: v.to(self.device) for k, v in s["params"].items()}
            slot.state = _to(s["state"], self.device)
            slot.batches.set_state(s["batches"])
            slot.t, slot.reference_loss = int(s["t"]), s["reference_loss"]
            self.slots.append(slot)


def _to(obj: Any, device: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj
