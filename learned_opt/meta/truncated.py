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

Task seeds: slot ``i`` draws the seeds of its successive tasks from its own stream,
a CPU generator seeded with ``base + slot_offset + i`` where ``base`` is one draw from
``generator``. A worker of a data-parallel run (:mod:`learned_opt.meta.distributed`)
passes ``slot_offset = rank * num_tasks``, so the union of the workers' slots is
exactly the slots of one process with ``world_size * num_tasks`` tasks.

Populations (``population=P > 1``): the slots form groups of ``P`` consecutive slots,
each group unrolled at once as one :class:`~learned_opt.population.PopulationTask`
(batched; the MLP optimizer normalises per member). Members of a group share their
parameter shapes: a member whose sampled task has other shapes than the group's
first member is redrawn from its stream (same family, conditioned on the shapes).
The meta-gradient is the same as with ``population=1`` (mean over members of the
per-member meta-loss gradients); groups start, reset and diverge together: if any
member diverges, the group's truncation is cut and all ``P`` members count as cut.

Gradient checkpointing (``checkpoint_segments=S > 1``): a truncation runs as ``S``
segments; the forward keeps no graph, only each segment's input tensors, and the
backward pass recomputes one segment at a time (differentiably, with the same
batches) and back-propagates through it, so the memory of the graph is about that
of one segment plus the segment boundaries, for about one extra forward pass of
time. The meta-gradient is the same as without it (to rounding). (A custom
``autograd.Function``, not ``torch.utils.checkpoint``: see :func:`_checkpointed_unroll`.)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..population import PopulationTask, population_rule, stack_trees, unstack_tree
from ..tasks.base import Task, TaskFamily
from ..unroll import UnrollResult, unroll

META_LOSSES = ("mean", "log_mean")
MAX_REDRAWS = 1000  # populations: draws per member to find a task of the group's shapes


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
    grad_sum: list[Tensor] | None = None  # sum (not mean) of the counted meta-gradients (for all-reduce)
    meta_loss_sum: float = 0.0       # sums over the counted tasks (for all-reduce)
    inner_loss_sum: float = 0.0


class TruncatedBPTT:
    """See the module docstring.

    Args:
        family: the task distribution. horizon, truncation: T and K.
        num_tasks: slots (inner problems) per estimate.
        device: where inner problems live. generator: seeds the slots' task-seed streams.
        first_order, meta_loss, divergence_factor: see the module docstring and ``unroll``.
        population: slots unrolled at once as one batched population (divides ``num_tasks``).
        checkpoint_segments: gradient-checkpointing segments per truncation (1: none).
        slot_offset: global index of slot 0 (data-parallel workers: ``rank * num_tasks``).
    """

    def __init__(self, family: TaskFamily, *, horizon: int, truncation: int, num_tasks: int,
                 device: torch.device, generator: torch.Generator, first_order: bool = False,
                 meta_loss: str = "mean", divergence_factor: float = 1e3, population: int = 1,
                 checkpoint_segments: int = 1, slot_offset: int = 0):
        if truncation < 1 or horizon < truncation:
            raise ValueError(f"need 1 <= truncation <= horizon, got truncation={truncation}, horizon={horizon}")
        if num_tasks < 1:
            raise ValueError(f"num_tasks={num_tasks} must be >= 1")
        if meta_loss not in META_LOSSES:
            raise ValueError(f"meta_loss={meta_loss!r} is not allowed; allowed: {', '.join(META_LOSSES)}")
        if isinstance(population, bool) or not isinstance(population, int) or population < 1 \
                or num_tasks % population:
            raise ValueError(f"population={population!r} must be a positive integer that divides "
                             f"num_tasks={num_tasks} (the slots are unrolled in groups of that size)")
        if isinstance(checkpoint_segments, bool) or not isinstance(checkpoint_segments, int) \
                or not 1 <= checkpoint_segments <= truncation:
            raise ValueError(f"checkpoint_segments={checkpoint_segments!r} must be an integer in "
                             f"[1, truncation={truncation}]")
        if isinstance(slot_offset, bool) or not isinstance(slot_offset, int) or slot_offset < 0:
            raise ValueError(f"slot_offset={slot_offset!r} must be an integer >= 0")
        self.family, self.horizon, self.truncation = family, horizon, truncation
        self.num_tasks, self.device, self.generator = num_tasks, device, generator
        self.first_order, self.meta_loss, self.divergence_factor = first_order, meta_loss, divergence_factor
        self.population, self.checkpoint_segments, self.slot_offset = population, checkpoint_segments, slot_offset
        base = int(torch.randint(0, 2**62, (), generator=generator))
        self.streams = [torch.Generator().manual_seed(base + slot_offset + i) for i in range(num_tasks)]
        self.slots: list[Slot | None] = [None] * num_tasks
        self._populations: dict[tuple[int, ...], PopulationTask] = {}

    # ------------------------------------------------------------------ inner problems
    def _new_slot(self, rule: nn.Module, i: int, task_seed: int | None = None,
                  shapes: dict | None = None) -> Slot:
        """A fresh task for slot ``i`` (seed drawn from its stream unless given); with ``shapes``, the
        first draw whose parameter shapes match them (populations)."""
        for _ in range(MAX_REDRAWS):
            seed = task_seed if task_seed is not None else int(torch.randint(0, 2**62, (), generator=self.streams[i]))
            task = self.family.sample(torch.Generator().manual_seed(seed))
            init_gen = torch.Generator(device=self.device).manual_seed(seed)
            params = task.init_params(init_gen)
            if task_seed is not None or shapes is None or _shapes(params) == shapes:
                break
        else:
            raise ValueError(f"population={self.population}: no task of the group's parameter shapes in "
                             f"{MAX_REDRAWS} draws from {type(self.family).__name__}; use a family whose tasks "
                             f"share one shape, or population=1")
        batches = torch.Generator(device=self.device).manual_seed(seed + 1)
        with torch.no_grad():
            state = rule.init(params)
        return Slot(seed, task, params, state, batches)

    def _loss(self, losses: Tensor) -> Tensor:
        """Meta-loss of a truncation: a scalar, or one per member ``(N,)`` for losses of shape ``(K, N)``."""
        if self.meta_loss == "mean":
            return losses.mean(0)
        return losses.clamp_min(1e-30).log().mean(0)

    def _population(self, members: list[Slot]) -> PopulationTask:
        key = tuple(id(m.task) for m in members)
        if key not in self._populations:
            self._populations = {k: v for k, v in self._populations.items()
                                 if all(any(id(s.task) == t for s in self.slots if s is not None) for t in k)}
            self._populations[key] = PopulationTask([m.task for m in members])
        return self._populations[key]

    def estimate(self, rule: nn.Module) -> Estimate:
        """Advance every slot by one truncation; the mean meta-gradient of those that stayed finite."""
        meta_params = [p for p in rule.parameters() if p.requires_grad]
        total: list[Tensor] | None = None
        losses: list[float] = []
        inner: list[float] = []
        counted, diverged, P = 0, 0, self.population
        for start in range(0, self.num_tasks, P):
            idx = list(range(start, start + P))
            if any(self.slots[i] is None or self.slots[i].t >= self.horizon for i in idx):
                shapes = None
                for i in idx:
                    self.slots[i] = self._new_slot(rule, i, shapes=shapes)
                    shapes = _shapes(self.slots[i].params) if P > 1 else None
            members = [self.slots[i] for i in idx]
            steps = min(self.truncation, self.horizon - members[0].t)
            with population_rule(rule) if P > 1 else contextlib.nullcontext():
                if P == 1:
                    slot = members[0]
                    task, gens, ref = slot.task, slot.batches, slot.reference_loss
                    params, state = detach_tree(slot.params), detach_tree(slot.state)
                else:
                    task, gens = self._population(members), [m.batches for m in members]
                    refs = [m.reference_loss for m in members]
                    ref = None if any(r is None for r in refs) else \
                        torch.tensor(refs, dtype=torch.float64, device=self.device)
                    params = stack_trees([detach_tree(m.params) for m in members])
                    state = stack_trees([detach_tree(m.state) for m in members])
                res = self._unroll(task, rule, params, state, steps, gens, ref)
                if res.steps_done and any(m.reference_loss is None for m in members):
                    first = res.losses[0].detach().reshape(-1).tolist()
                    for m, value in zip(members, first):
                        m.reference_loss = float(value)
                if res.diverged or res.steps_done == 0:
                    diverged += P
                    for i in idx:
                        self.slots[i] = None
                    continue
                loss = self._loss(res.losses)                   # scalar, or (P,) per member
                grads = torch.autograd.grad(loss.sum(), meta_params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(meta_params, grads)]
            if not all(torch.isfinite(g).all() for g in grads):
                diverged += P
                for i in idx:
                    self.slots[i] = None
                continue
            total = grads if total is None else [a + b for a, b in zip(total, grads)]
            losses.extend(loss.detach().reshape(-1).tolist())
            inner.extend(res.losses.detach().mean(0).reshape(-1).tolist())
            counted += P
            if P == 1:
                new_params, new_state = [detach_tree(res.params)], [detach_tree(res.state)]
            else:
                new_params, new_state = unstack_tree(detach_tree(res.params), P), unstack_tree(detach_tree(res.state), P)
            for m, p, s in zip(members, new_params, new_state):
                m.params, m.state, m.t = p, s, m.t + steps
        if not counted:
            return Estimate(None, None, 0, diverged, None)
        return Estimate(sum(losses) / counted, [g / counted for g in total], counted, diverged,
                        sum(inner) / counted, total, sum(losses), sum(inner))

    # ------------------------------------------------------------------ one truncation
    def _unroll(self, task: Task, rule: nn.Module, params: dict, state: dict, steps: int, gens: Any,
                ref: Any) -> UnrollResult:
        kw = dict(differentiable=True, first_order=self.first_order, divergence_factor=self.divergence_factor)
        segments = min(self.checkpoint_segments, steps)
        if segments <= 1:
            return unroll(task, rule, params, state, steps, gens, reference_loss=ref, **kw)
        lengths = [steps // segments + (1 if s < steps % segments else 0) for s in range(segments)]
        pieces: list[Tensor] = []
        for length in lengths:
            res = _checkpointed_unroll(task, rule, params, state, length, gens, ref, kw)
            pieces.append(res.losses)
            if ref is None and res.steps_done:
                ref = res.losses[0].detach()
                ref = float(ref) if ref.dim() == 0 else ref
            if res.diverged:
                res.losses = torch.cat(pieces)
                res.diverged_at = sum(p.shape[0] for p in pieces)
                return res
            params, state = res.params, res.state
        return UnrollResult(params, state, torch.cat(pieces))

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
        return {"generator": self.generator.get_state(), "streams": [g.get_state() for g in self.streams],
                "slots": slots}

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
            slot = self._new_slot(rule, i, task_seed=int(s["task_seed"]))
            slot.params = {k: v.to(self.device) for k, v in s["params"].items()}
            slot.state = _to(s["state"], self.device)
            slot.batches.set_state(s["batches"])
            slot.t, slot.reference_loss = int(s["t"]), s["reference_loss"]
            self.slots.append(slot)


def _checkpointed_unroll(task: Task, rule: nn.Module, params: dict, state: dict, steps: int, gens: Any,
                         ref: Any, kw: dict) -> UnrollResult:
    """``unroll`` for one segment, its graph recomputed in the backward pass (:class:`_Segment`).

    Forward: the segment runs without keeping a graph (``differentiable=False``: the same
    arithmetic, so the same numbers); only its input tensors are kept. Backward: the segment is
    re-run differentiably from those inputs, with copies of the batch generators reset to the
    segment's start (the same batches), and back-propagated at once; its graph is freed before
    the previous segment is recomputed.

    Why not ``torch.utils.checkpoint``: every inner step calls ``torch.autograd.grad`` inside the
    segment, and non-reentrant checkpointing answers each such call made during the forward by
    recomputing the segment up to that point and keeping the recomputed tensors, so time grows
    quadratically with the segment length and memory does not go down (it went UP to 22 GB in
    the T = K = 100 L2L setting, against ~2.3 GB without checkpointing).
    """
    gen_list = list(gens) if isinstance(gens, (list, tuple)) else [gens]
    run = _SegmentRun(task, rule, steps, gens, [g.get_state() for g in gen_list], ref, kw)
    in_leaves, run.rebuild_in = _flatten((params, state))
    meta = [p for p in rule.parameters() if p.requires_grad]
    run.meta = meta
    outs = _Segment.apply(run, len(meta), *meta, *in_leaves)
    for g, st in zip(gen_list, run.ends):
        g.set_state(st)
    first: UnrollResult = run.result
    new_params, new_state = run.rebuild_out(list(outs[:-1]))
    return UnrollResult(new_params, new_state, outs[-1], first.diverged, first.diverged_at, first.reason,
                        first.records, first.diverged_members)


class _SegmentRun:
    """What a :class:`_Segment` needs to run (and re-run) its inner steps."""

    def __init__(self, task, rule, steps, gens, starts, ref, kw):
        self.task, self.rule, self.steps, self.gens, self.starts, self.ref, self.kw = \
            task, rule, steps, gens, starts, ref, kw
        self.result: UnrollResult | None = None
        self.ends: list = []
        self.meta: list[Tensor] = []
        self.rebuild_in: Callable | None = None
        self.rebuild_out: Callable | None = None

    def generators(self) -> Any:
        copies = []
        for g, st in zip(self.gens if isinstance(self.gens, (list, tuple)) else [self.gens], self.starts):
            c = torch.Generator(device=g.device)
            c.set_state(st)
            copies.append(c)
        return copies if isinstance(self.gens, (list, tuple)) else copies[0]

    def run(self, leaves: list[Tensor], differentiable: bool) -> tuple[UnrollResult, Any]:
        p, s = self.rebuild_in(list(leaves))
        gens = self.generators()
        kw = dict(self.kw, differentiable=differentiable)
        res = unroll(self.task, self.rule, p, s, self.steps, gens, reference_loss=self.ref, **kw)
        return res, gens


class _Segment(torch.autograd.Function):
    """Inputs: the meta-parameters, then the segment's input tensors; outputs: its output tensors, then its losses."""

    @staticmethod
    def forward(ctx, run: _SegmentRun, n_meta: int, *tensors: Tensor) -> tuple[Tensor, ...]:
        leaves = tensors[n_meta:]
        res, gens = run.run(list(leaves), differentiable=False)
        if run.ref is None and res.steps_done:  # the recomputation must judge divergence alike
            first = res.losses[0]
            run.ref = float(first) if first.dim() == 0 else first.clone()
        out_leaves, run.rebuild_out = _flatten((res.params, res.state))
        run.result, run.ends = res, [g.get_state() for g in (gens if isinstance(gens, list) else [gens])]
        ctx.run, ctx.n_meta = run, n_meta
        ctx.save_for_backward(*leaves)
        ids = {id(t) for t in leaves}
        return tuple(t.clone() if id(t) in ids else t for t in (*out_leaves, res.losses))

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_outs: Tensor) -> tuple:
        run, n_meta = ctx.run, ctx.n_meta
        needs = ctx.needs_input_grad[2:]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, needs[n_meta:])]
            res, _ = run.run(leaves, differentiable=True)
            outs = [*_flatten((res.params, res.state))[0], res.losses]
            pairs = [(o, g) for o, g in zip(outs, grad_outs) if g is not None and o.requires_grad]
            wrt = [t for t, need in zip([*run.meta, *leaves], needs) if need]
            grads = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True) \
                if pairs and wrt else [None] * len(wrt)
        it = iter(grads)
        return (None, None, *[next(it) if need else None for need in needs])


def _flatten(tree: Any) -> tuple[list[Tensor], Callable[[list[Tensor]], Any]]:
    """The tensor leaves of a pytree, and a function that rebuilds the tree from new leaves."""
    leaves: list[Tensor] = []

    def spec(obj: Any) -> Any:
        if isinstance(obj, Tensor):
            leaves.append(obj)
            return _Leaf(len(leaves) - 1)
        if isinstance(obj, dict):
            return {k: spec(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(spec(v) for v in obj)
        return obj

    structure = spec(tree)

    def rebuild(new: list[Tensor], node: Any = structure) -> Any:
        if isinstance(node, _Leaf):
            return new[node.index]
        if isinstance(node, dict):
            return {k: rebuild(new, v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(rebuild(new, v) for v in node)
        return node

    return leaves, rebuild


@dataclass(frozen=True)
class _Leaf:
    index: int


def _shapes(params: dict) -> dict:
    return {k: tuple(v.shape) for k, v in params.items()}


def _to(obj: Any, device: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj
