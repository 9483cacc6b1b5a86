"""The inner problems in flight: what every meta-gradient estimator advances, one truncation at a time.

    problems = InnerProblems(family, horizon=100, truncation=20, num_tasks=4, device=dev, generator=g)
    for idx in problems.groups():               # slot indices unrolled together (``population``)
        members = problems.prepare(rule, idx)   # fresh tasks where a slot is empty or at its horizon
        steps = problems.steps(members)         # this truncation's length
        ... unroll ...; problems.advance(members, new_params, new_states, steps)  # or problems.drop(idx)

A *slot* (:class:`Slot`) holds one inner problem: a task sampled from the family, its
parameters, the rule's state, its inner step ``t``, the generator of its batches, and the
reference loss (its first loss since the last reset, what ``log_ratio`` and the divergence
test are relative to). A rule with ``uses_horizon = True`` gets ``init(params, horizon=...)``. A slot is reset to a fresh task after ``horizon`` inner steps (or
after the task's own ``horizon`` attribute, when its family sets one); estimators may keep
their own per-slot data in ``slot.extra`` (a dict of tensors, saved and restored with the
slot, cleared at a reset).

Task seeds: slot ``i`` draws the seeds of its successive tasks from its own stream, a CPU
generator seeded with ``base + slot_offset + i`` where ``base`` is one draw from
``generator``. A worker of a data-parallel run passes ``slot_offset = rank * num_tasks``,
so the union of the workers' slots is exactly the slots of one process with
``world_size * num_tasks`` tasks. :meth:`InnerProblems.noise_generator` gives each slot a
second stream for an estimator's random perturbations, likewise keyed by the global slot index.

Populations (``population=P > 1``): the slots form groups of ``P`` consecutive slots whose
tasks share parameter shapes (a member whose sampled task has other shapes than the group's
first member is redrawn from its stream), unrolled at once as one batched
:class:`~learned_opt.tasks.population.PopulationTask`. Groups start and reset together.

``stagger=True`` shortens each slot's *first* horizon by a random whole number of
truncations (drawn from the slot's stream), so that the slots reset at different times
instead of all at once: what persistent estimators (PES) need to see every phase of the
horizon in every meta-step.

Meta-losses of one truncation (over its inner training losses ``l_1..l_K``):
``mean`` (mean of the l_k), ``log_mean`` (mean of log l_k), ``log_ratio`` (mean of
log(l_k / l_ref), ``l_ref`` the slot's reference loss: 0 at the start of every task, so no
task dominates by the size of its losses). ``log_ratio_floor`` (with ``log_ratio``) clips each
log(l_k / l_ref) from below: a task whose loss collapses (memorised, ``l_k`` ~ 1e-13) then stops
paying for ever finer convergence, and its log-ratios of -30 no longer outweigh every other task.
``ratio`` (mean of l_k / l_ref: the area under the task's loss curve relative to its first loss, what
a mean-loss score rewards; the early steps weigh most, a loss already near 0 adds nothing).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from baselines.checks import boolean, check_choice, check_int

from ..tasks.base import Task, TaskFamily
from ..tasks.population import PopulationTask
from ..unroll import init_state

__all__ = ["InnerProblems", "Slot", "Estimate", "META_LOSSES", "DEFAULT_META_LOSS", "truncation_loss", "detach_tree", "tree_to", "shapes"]

META_LOSSES = ("mean", "log_mean", "log_ratio", "ratio")
DEFAULT_META_LOSS = "log_mean"   # configs/meta_train.yaml says the same (tested)
MAX_REDRAWS = 1000  # populations: draws per member to find a task of the group's shapes
NOISE_SALT = 0x5DEECE66D  # separates a slot's noise stream from its task-seed stream


def check_floor(floor: float | None, meta_loss: str) -> float | None:
    """``log_ratio_floor``: ``None`` or a finite negative number, and only with ``meta_loss="log_ratio"``."""
    if floor is None:
        return None
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not -1e9 < floor < 0:
        raise ValueError(f"log_ratio_floor={floor!r} is not allowed; allowed: null or a finite negative number "
                         f"(e.g. -6.9 = log(1e-3): a step's loss counts down to 1e-3 x the task's first loss)")
    if meta_loss != "log_ratio":
        raise ValueError(f"log_ratio_floor={floor!r} needs meta_loss='log_ratio' (got {meta_loss!r})")
    return float(floor)


def truncation_loss(losses: Tensor, kind: str, reference: Tensor | float | None = None,
                    floor: float | None = None) -> Tensor:
    """The meta-loss ``kind`` (:data:`META_LOSSES`) of the losses of a truncation: a scalar for ``losses`` of
    shape ``(K,)``, one per member ``(N,)`` for ``(K, N)``. ``reference``: the per-member reference losses
    (``log_ratio``, ``ratio``; defaults to the first row of ``losses``). ``floor``: ``log_ratio`` only, each
    step's log-ratio clipped below at it. Also what the meta-trainer's validation scores a held-out run with."""
    if kind == "mean":
        return losses.mean(0)
    if kind == "log_mean":
        return losses.clamp_min(1e-30).log().mean(0)
    if reference is None:
        reference = losses[0].detach()
    ref = torch.as_tensor(reference, dtype=losses.dtype, device=losses.device).clamp_min(1e-30)
    if kind == "ratio":
        return losses.mean(0) / ref
    ratios = losses.clamp_min(1e-30).log() - ref.log()
    return (ratios if floor is None else ratios.clamp_min(floor)).mean(0)


def detach_tree(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach()
    if isinstance(obj, dict):
        return {k: detach_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(detach_tree(v) for v in obj)
    return obj


def tree_to(obj: Any, device: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: tree_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(tree_to(v, device) for v in obj)
    return obj


def shapes(params: dict) -> dict:
    return {k: tuple(v.shape) for k, v in params.items()}


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
    horizon: int = 0                      # inner steps before this slot is reset
    extra: dict = field(default_factory=dict)  # an estimator's own per-slot tensors


@dataclass
class Estimate:
    """One meta-gradient estimate, as every estimator returns it."""
    meta_loss: float | None          # mean over the tasks that counted; None when none did
    grads: list[Tensor] | None       # mean meta-gradient over those tasks, one per meta-parameter
    counted: int                     # tasks that contributed
    diverged: int                    # truncations cut (bptt) / particles clipped (es, pes)
    inner_loss: float | None         # mean inner training loss over the counted truncations
    grad_sum: list[Tensor] | None = None  # sum (not mean) of the counted meta-gradients (for all-reduce)
    meta_loss_sum: float = 0.0       # sums over the counted tasks (for all-reduce)
    inner_loss_sum: float = 0.0


def finish_estimate(total: list[Tensor] | None, losses: list[float], inner: list[float], diverged: int) -> Estimate:
    """The :class:`Estimate` of the tasks that counted: ``losses``/``inner`` hold one value per
    counted task and ``total`` the sum of their meta-gradients."""
    counted = len(losses)
    if not counted or total is None:
        return Estimate(None, None, 0, diverged, None)
    return Estimate(sum(losses) / counted, [g / counted for g in total], counted, diverged,
                    sum(inner) / counted, total, sum(losses), sum(inner))


class InnerProblems:
    """See the module docstring.

    Args:
        family: the task distribution. horizon, truncation: T and K (a task's own ``horizon``
            attribute, when set, replaces T for that task).
        num_tasks: slots. device: where inner problems live. generator: seeds the slots' streams.
        population: slots unrolled at once as one batched population (divides ``num_tasks``).
        slot_offset: global index of slot 0 (data-parallel workers: ``rank * num_tasks``).
        meta_loss: ``mean``, ``log_mean``, ``log_ratio`` or ``ratio``.
        log_ratio_floor: ``log_ratio`` only: each step's log(loss / reference) is clipped below at this
            (a negative number; ``None``: no floor).
        stagger: shorten every slot's first horizon by a random number of truncations.
    """

    def __init__(self, family: TaskFamily, *, horizon: int, truncation: int, num_tasks: int,
                 device: torch.device, generator: torch.Generator, population: int = 1, slot_offset: int = 0,
                 meta_loss: str = DEFAULT_META_LOSS, stagger: bool = False, log_ratio_floor: float | None = None):
        if truncation < 1 or horizon < truncation:
            raise ValueError(f"need 1 <= truncation <= horizon, got truncation={truncation}, horizon={horizon}")
        check_int("num_tasks", num_tasks, 1)
        check_choice("meta_loss", meta_loss, META_LOSSES)
        if isinstance(population, bool) or not isinstance(population, int) or population < 1 \
                or num_tasks % population:
            raise ValueError(f"population={population!r} must be a positive integer that divides "
                             f"num_tasks={num_tasks} (the slots are unrolled in groups of that size)")
        check_int("slot_offset", slot_offset, 0)
        boolean("stagger", stagger)
        self.log_ratio_floor = check_floor(log_ratio_floor, meta_loss)
        self.family, self.horizon, self.truncation = family, horizon, truncation
        self.num_tasks, self.device, self.generator = num_tasks, device, generator
        self.population, self.slot_offset, self.meta_loss, self.stagger = population, slot_offset, meta_loss, stagger
        self.base = int(torch.randint(0, 2**62, (), generator=generator))
        self.streams = [torch.Generator().manual_seed(self.base + slot_offset + i) for i in range(num_tasks)]
        self.slots: list[Slot | None] = [None] * num_tasks
        self.started = [False] * num_tasks  # whether slot i has had a task (stagger: only its first is shortened)
        self._populations: dict[tuple, PopulationTask] = {}

    # ------------------------------------------------------------------ slots
    def groups(self) -> list[list[int]]:
        P = self.population
        return [list(range(s, s + P)) for s in range(0, self.num_tasks, P)]

    def noise_generator(self, i: int) -> torch.Generator:
        """A CPU generator for slot ``i``'s perturbations, keyed by its global index (not by rank)."""
        return torch.Generator().manual_seed((self.base + self.slot_offset + i) ^ NOISE_SALT)

    def new_slot(self, rule: nn.Module, i: int, task_seed: int | None = None, shapes_: dict | None = None) -> Slot:
        """A fresh task for slot ``i`` (seed drawn from its stream unless given); with ``shapes_``, the
        first draw whose parameter shapes match them (populations)."""
        for _ in range(MAX_REDRAWS):
            seed = task_seed if task_seed is not None else int(torch.randint(0, 2**62, (), generator=self.streams[i]))
            task = self.family.sample(torch.Generator().manual_seed(seed))
            init_gen = torch.Generator(device=self.device).manual_seed(seed)
            params = task.init_params(init_gen)
            if task_seed is not None or shapes_ is None or shapes(params) == shapes_:
                break
        else:
            raise ValueError(f"population={self.population}: no task of the group's parameter shapes in "
                             f"{MAX_REDRAWS} draws from {type(self.family).__name__}; use a family whose tasks "
                             f"share one shape, or population=1")
        batches = torch.Generator(device=self.device).manual_seed(seed + 1)
        horizon = int(getattr(task, "horizon", None) or self.horizon)
        with torch.no_grad():  # a rule with fraction-of-horizon features is told the task's horizon
            state = init_state(rule, params, horizon, task)
        return Slot(seed, task, params, state, batches, horizon=horizon)

    def prepare(self, rule: nn.Module, idx: list[int]) -> list[Slot]:
        """The group's slots, every one replaced by a fresh task when any is empty or at its horizon."""
        if any(self.slots[i] is None or self.slots[i].t >= self.slots[i].horizon for i in idx):
            shapes_ = None
            for i in idx:
                self.slots[i] = self.new_slot(rule, i, shapes_=shapes_)
                shapes_ = shapes(self.slots[i].params) if len(idx) > 1 else None
            if self.stagger and not any(self.started[i] for i in idx):
                first = self.slots[idx[0]]
                cut = int(torch.randint(0, max(first.horizon // self.truncation, 1), (),
                                        generator=self.streams[idx[0]])) * self.truncation
                for i in idx:
                    self.slots[i].horizon = max(self.slots[i].horizon - cut, self.truncation)
            for i in idx:
                self.started[i] = True
        return [self.slots[i] for i in idx]

    def steps(self, members: list[Slot]) -> int:
        """The length of this truncation: ``truncation``, or what is left of the group's horizon."""
        return min(self.truncation, members[0].horizon - members[0].t)

    def drop(self, idx: list[int]) -> None:
        """Forget the group's inner problems: they start a fresh task at their next truncation."""
        for i in idx:
            self.slots[i] = None

    def advance(self, members: list[Slot], params: list[dict], states: list[dict], steps: int) -> None:
        for m, p, s in zip(members, params, states):
            m.params, m.state, m.t = detach_tree(p), detach_tree(s), m.t + steps

    def note_reference(self, members: list[Slot], first: Tensor) -> None:
        """Record each member's first loss since its reset (``first``: one value per member, or per
        member times ``repeat`` particles, of which the first of each member's block is taken)."""
        values = first.detach().reshape(-1).tolist()
        per = len(values) // len(members)
        for j, m in enumerate(members):
            if m.reference_loss is None:
                m.reference_loss = float(values[j * per])

    def references(self, members: list[Slot], repeat: int = 1) -> Tensor | float | None:
        """The members' reference losses (each repeated ``repeat`` times) for ``unroll``, or None when
        any is unknown (then ``unroll`` takes the first loss of this truncation)."""
        refs = [m.reference_loss for m in members]
        if any(r is None for r in refs):
            return None
        if len(members) == 1 and repeat == 1:
            return refs[0]
        return torch.tensor([r for r in refs for _ in range(repeat)], dtype=torch.float64, device=self.device)

    def population_task(self, members: list[Slot], repeat: int = 1) -> PopulationTask:
        """The members' tasks, each repeated ``repeat`` times (particles fed the same batches), as one
        population (cached)."""
        key = (tuple(id(m.task) for m in members), repeat)
        if key not in self._populations:
            live = {id(s.task) for s in self.slots if s is not None}
            self._populations = {k: v for k, v in self._populations.items() if all(t in live for t in k[0])}
            self._populations[key] = PopulationTask([m.task for m in members for _ in range(repeat)],
                                                    same_batches=repeat)
        return self._populations[key]

    # ------------------------------------------------------------------ meta-loss
    def loss(self, losses: Tensor, reference: Tensor | float | None = None) -> Tensor:
        """Meta-loss of a truncation (:func:`truncation_loss` with this object's ``meta_loss`` and floor)."""
        return truncation_loss(losses, self.meta_loss, reference, self.log_ratio_floor)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        """Everything needed to continue bit-for-bit: each slot's task seed, inner params/state, RNG."""
        slots = []
        for s in self.slots:
            if s is None:
                slots.append({})
                continue
            entry = {"task_seed": s.task_seed, "params": {k: v.cpu() for k, v in s.params.items()},
                     "state": detach_tree(tree_to(s.state, "cpu")), "batches": s.batches.get_state(),
                     "t": s.t, "reference_loss": s.reference_loss, "horizon": s.horizon}
            if s.extra:
                entry["extra"] = detach_tree(tree_to(s.extra, "cpu"))
            slots.append(entry)
        return {"generator": self.generator.get_state(), "streams": [g.get_state() for g in self.streams],
                "slots": slots, "started": list(self.started)}

    def load_state_dict(self, sd: dict, rule: nn.Module) -> None:
        if len(sd["slots"]) != self.num_tasks:
            raise ValueError(f"checkpoint has {len(sd['slots'])} inner slots but num_tasks={self.num_tasks}")
        self.generator.set_state(sd["generator"])
        # older checkpoints drew task seeds from one shared generator and have no per-slot streams:
        # they continue with fresh streams (the inner problems in flight are restored exactly)
        for g, st in zip(self.streams, sd.get("streams", [])):
            g.set_state(st)
        self.slots = []
        for i, s in enumerate(sd["slots"]):
            if not s:
                self.slots.append(None)
                continue
            slot = self.new_slot(rule, i, task_seed=int(s["task_seed"]))
            slot.params = {k: v.to(self.device) for k, v in s["params"].items()}
            slot.state = tree_to(s["state"], self.device)
            slot.batches.set_state(s["batches"])
            slot.t, slot.reference_loss = int(s["t"]), s["reference_loss"]
            slot.horizon = int(s.get("horizon", slot.horizon))
            slot.extra = tree_to(s.get("extra", {}), self.device)
            self.slots.append(slot)
        self.started = list(sd.get("started", [s is not None for s in self.slots]))


def clone_generator(g: torch.Generator) -> torch.Generator:
    c = torch.Generator(device=g.device)
    c.set_state(g.get_state())
    return c
