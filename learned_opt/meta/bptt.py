"""Truncated back-propagation through the unroll (``meta.estimator=bptt``).

Each call to :meth:`TruncatedBPTT.estimate` advances every inner problem in flight
(:class:`~learned_opt.meta.inner.InnerProblems`) by one truncation of ``truncation`` inner
steps with the one :func:`~learned_opt.unroll.unroll` (differentiable, full second order or
``first_order``), takes the meta-loss over those steps, and back-propagates it into the
rule's meta-parameters. The inner state is carried (detached) into the next truncation, and
a slot is reset to a fresh task after ``horizon`` inner steps (Andrychowicz et al. 2016:
horizon 100, truncation 20). The estimate is biased when the horizon is longer than the
truncation: it ignores the effect of the meta-parameters on later truncations
(short-horizon bias, Wu et al. 2018; see ``experiments/short_horizon_bias.py``).

Truncations whose inner run diverges, or whose meta-gradient is not finite, are cut: they
contribute nothing, are counted, and their slot is reset. Populations: a group's
truncation is cut if any member diverges, and all its members count as cut.

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
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..optimizers.batched import split_tree
from ..tasks.base import Task, TaskFamily
from ..tasks.population import population_rule, stack_trees, unstack_tree
from ..unroll import UnrollResult, unroll
from .inner import DEFAULT_META_LOSS, Estimate, InnerProblems, detach_tree, finish_estimate

__all__ = ["TruncatedBPTT"]


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
        stagger: see :class:`~learned_opt.meta.inner.InnerProblems`.
    """

    name = "bptt"

    def __init__(self, family: TaskFamily, *, horizon: int, truncation: int, num_tasks: int,
                 device: torch.device, generator: torch.Generator, first_order: bool = False,
                 meta_loss: str = DEFAULT_META_LOSS, divergence_factor: float = 1e3, population: int = 1,
                 checkpoint_segments: int = 1, slot_offset: int = 0, stagger: bool = False,
                 log_ratio_floor: float | None = None):
        self.inner = InnerProblems(family, horizon=horizon, truncation=truncation, num_tasks=num_tasks,
                                   device=device, generator=generator, population=population,
                                   slot_offset=slot_offset, meta_loss=meta_loss, stagger=stagger,
                                   log_ratio_floor=log_ratio_floor)
        if isinstance(checkpoint_segments, bool) or not isinstance(checkpoint_segments, int) \
                or not 1 <= checkpoint_segments <= truncation:
            raise ValueError(f"checkpoint_segments={checkpoint_segments!r} must be an integer in "
                             f"[1, truncation={truncation}]")
        self.first_order, self.divergence_factor = first_order, divergence_factor
        self.checkpoint_segments = checkpoint_segments

    @property
    def slots(self):
        return self.inner.slots

    @property
    def streams(self):
        return self.inner.streams

    def estimate(self, rule: nn.Module) -> Estimate:
        """Advance every slot by one truncation; the mean meta-gradient of those that stayed finite."""
        meta_params = [p for p in rule.parameters() if p.requires_grad]
        inner = self.inner
        total: list[Tensor] | None = None
        losses: list[float] = []
        inner_losses: list[float] = []
        diverged, P = 0, inner.population
        for idx in inner.groups():
            members = inner.prepare(rule, idx)
            steps = inner.steps(members)
            ref = inner.references(members)
            with population_rule(rule) if P > 1 else contextlib.nullcontext():
                if P == 1:
                    task, gens = members[0].task, members[0].batches
                    params, state = detach_tree(members[0].params), detach_tree(members[0].state)
                else:
                    task, gens = inner.population_task(members), [m.batches for m in members]
                    params = stack_trees([detach_tree(m.params) for m in members])
                    state = stack_trees([detach_tree(m.state) for m in members])
                res = self._unroll(task, rule, params, state, steps, gens, ref)
                if res.steps_done and any(m.reference_loss is None for m in members):
                    inner.note_reference(members, res.losses[0])
                if res.diverged or res.steps_done == 0:
                    diverged += P
                    inner.drop(idx)
                    continue
                loss = inner.loss(res.losses, None if ref is None else ref)   # scalar, or (P,) per member
                grads = torch.autograd.grad(loss.sum(), meta_params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(meta_params, grads)]
            if not all(torch.isfinite(g).all() for g in grads):
                diverged += P
                inner.drop(idx)
                continue
            total = grads if total is None else [a + b for a, b in zip(total, grads)]
            losses.extend(loss.detach().reshape(-1).tolist())
            inner_losses.extend(res.losses.detach().mean(0).reshape(-1).tolist())
            if P == 1:
                new_params, new_state = [res.params], [res.state]
            else:
                new_params, new_state = unstack_tree(detach_tree(res.params), P), unstack_tree(detach_tree(res.state), P)
            inner.advance(members, new_params, new_state, steps)
        return finish_estimate(total, losses, inner_losses, diverged)

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
        return self.inner.state_dict()

    def load_state_dict(self, sd: dict, rule: nn.Module) -> None:
        self.inner.load_state_dict(sd, rule)


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
    in_leaves, run.rebuild_in = split_tree((params, state))
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
        out_leaves, run.rebuild_out = split_tree((res.params, res.state))
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
            outs = [*split_tree((res.params, res.state))[0], res.losses]
            pairs = [(o, g) for o, g in zip(outs, grad_outs) if g is not None and o.requires_grad]
            wrt = [t for t, need in zip([*run.meta, *leaves], needs) if need]
            grads = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True) \
                if pairs and wrt else [None] * len(wrt)
        it = iter(grads)
        return (None, None, *[next(it) if need else None for need in needs])


