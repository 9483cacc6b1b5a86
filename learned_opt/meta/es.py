"""Truncated antithetic evolution strategies (``meta.estimator=es``).

For every inner problem in flight (:class:`~learned_opt.meta.inner.InnerProblems`) and each of
``pairs`` antithetic pairs, draw ``eps_j ~ N(0, std^2 I)`` over the flattened trainable
meta-parameters ``theta`` (``D`` numbers), and unroll one truncation from the slot's inner state
with ``theta + eps_j`` and with ``theta - eps_j`` (the same batches for both: common random
numbers). With ``L+_j, L-_j`` the two meta-losses of the truncation::

    g = 1 / (2 * pairs * std^2) * sum_j eps_j * (L+_j - L-_j)

is an unbiased estimate of the gradient of the Gaussian-smoothed truncation meta-loss
``E_eps[L(theta + eps)]`` (Salimans et al. 2017; Metz et al. 2019). Only forward unrolls: all
``2 * pairs + 1`` particles of a slot (the unperturbed one first, whose state the slot keeps for
its next truncation) run at once as one population under ``no_grad``, the rule evaluated with
one meta-parameter set per particle (:class:`~learned_opt.optimizers.batched.MemberRule`). With
``population=P``, ``P`` slots of one shape share that population.

Like truncated BPTT it sees one truncation at a time, so it shares its short-horizon bias;
:mod:`~learned_opt.meta.pes` removes it. A particle whose inner loss diverges is frozen and its
loss clipped to the divergence threshold (``divergence_factor`` x its reference loss) for the
rest of the truncation; it still counts (that is the ES signal that the direction is bad), the
number of such particles is reported as ``diverged``, and a slot whose unperturbed particle
diverged starts a fresh task. No NaN reaches the estimate.

Perturbations come from one stream per slot, keyed by the slot's global index, so data-parallel
workers together draw exactly what one process with all their slots would.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from baselines.checks import check_int, check_number

from ..tasks.base import TaskFamily
from ..tasks.population import stack_trees, unstack_tree
from ..unroll import UnrollResult, unroll
from ..optimizers.batched import MemberRule, meta_vector, unflatten_meta
from .inner import DEFAULT_META_LOSS, Estimate, InnerProblems, Slot, clone_generator, detach_tree, finish_estimate

__all__ = ["TruncatedES", "check_es_options"]


def check_es_options(std: float, pairs: int, field: str = "es") -> None:
    check_number(f"{field}.std", std, 0, low_open=True)
    check_int(f"{field}.pairs", pairs, 1)


class TruncatedES:
    """See the module docstring.

    Args:
        family, horizon, truncation, num_tasks, device, generator, population, slot_offset,
        meta_loss, stagger, log_ratio_floor: the inner problems (:class:`~learned_opt.meta.inner.InnerProblems`).
        std: standard deviation of the perturbations. pairs: antithetic pairs per slot.
        divergence_factor: a particle's inner loss above this x its reference loss is clipped.
    """

    name = "es"
    center = True  # particle 0 of each slot is unperturbed and carries the slot forward

    def __init__(self, family: TaskFamily, *, horizon: int, truncation: int, num_tasks: int,
                 device: torch.device, generator: torch.Generator, std: float = 0.01, pairs: int = 4,
                 meta_loss: str = DEFAULT_META_LOSS, divergence_factor: float = 1e3, population: int = 1,
                 slot_offset: int = 0, stagger: bool = False,
                 log_ratio_floor: float | None = None):
        check_es_options(std, pairs, self.name)
        check_number("divergence_factor", divergence_factor, 1, low_open=True)
        self.inner = InnerProblems(family, horizon=horizon, truncation=truncation, num_tasks=num_tasks,
                                   device=device, generator=generator, population=population,
                                   slot_offset=slot_offset, meta_loss=meta_loss, stagger=stagger,
                                   log_ratio_floor=log_ratio_floor)
        self.std, self.pairs, self.divergence_factor = float(std), int(pairs), float(divergence_factor)
        self.noise = [self.inner.noise_generator(i) for i in range(num_tasks)]

    @property
    def slots(self) -> list[Slot | None]:
        return self.inner.slots

    @property
    def particles(self) -> int:
        """Particles per slot."""
        return 2 * self.pairs + (1 if self.center else 0)

    # ------------------------------------------------------------------ the estimate
    def estimate(self, rule: nn.Module) -> Estimate:
        """Advance every slot by one truncation; the mean over slots of their ES gradient estimates."""
        inner = self.inner
        with torch.no_grad():
            theta = meta_vector(rule).to(inner.device)
            total: Tensor | None = None
            losses: list[float] = []
            inner_losses: list[float] = []
            diverged = 0
            for idx in inner.groups():
                members = inner.prepare(rule, idx)
                steps = inner.steps(members)
                eps = torch.stack([torch.randn(self.pairs, theta.numel(), generator=self.noise[i])
                                   for i in idx]).to(inner.device, theta.dtype) * self.std   # (G, pairs, D)
                directions = self._directions(members, eps)                                 # (G, pairs, D)
                res, gens = self._run(rule, members, theta, eps, steps)
                for m, g in zip(members, gens[::self.particles]):
                    m.batches.set_state(g.get_state())
                if any(m.reference_loss is None for m in members):
                    inner.note_reference(members, res.losses[0])
                ref = inner.references(members, repeat=self.particles)
                loss = inner.loss(res.losses, ref).view(len(idx), self.particles)           # (G, M)
                raw = res.losses.mean(0).view(len(idx), self.particles)
                bad = set(res.diverged_members or [])
                diverged += len(bad)
                plus, minus = self._pairs(loss)
                coef = (plus - minus) / (2 * self.pairs * self.std ** 2)                    # (G, pairs)
                grads = torch.einsum("gp,gpd->gd", coef.to(theta.dtype), directions)         # (G, D)
                if not bool(torch.isfinite(grads).all()):
                    diverged += len(idx) * self.particles
                    inner.drop(idx)
                    continue
                total = grads.sum(0) if total is None else total + grads.sum(0)
                report = self._report(loss), self._report(raw)
                losses.extend(report[0].tolist())
                inner_losses.extend(report[1].tolist())
                self._carry(members, idx, res, bad, eps, steps)
        grads_list = None if total is None else list(unflatten_meta(rule, total).values())
        return finish_estimate(grads_list, losses, inner_losses, diverged)

    # ------------------------------------------------------------------ what ES and PES do differently
    def _directions(self, members: list[Slot], eps: Tensor) -> Tensor:
        """What multiplies each pair's loss difference: this truncation's perturbation."""
        return eps

    def _start(self, member: Slot) -> tuple[dict, dict]:
        """The particles' params and state (stacked, ``particles`` each) at the truncation's start."""
        M = self.particles
        return stack_trees([detach_tree(member.params)] * M), stack_trees([detach_tree(member.state)] * M)

    def _thetas(self, theta: Tensor, eps: Tensor) -> Tensor:
        """``(G * M, D)``: per slot the unperturbed theta, then theta + eps_j, theta - eps_j for each pair."""
        G = eps.shape[0]
        pm = torch.stack([theta + eps, theta - eps], dim=2).reshape(G, 2 * self.pairs, -1)   # +1 -1 +2 -2 ...
        rows = [theta.expand(G, 1, -1), pm] if self.center else [pm]
        return torch.cat(rows, dim=1).reshape(G * self.particles, -1)

    def _pairs(self, loss: Tensor) -> tuple[Tensor, Tensor]:
        off = 1 if self.center else 0
        return loss[:, off::2], loss[:, off + 1::2]

    def _report(self, values: Tensor) -> Tensor:
        """Per slot: the unperturbed particle's value (ES) or the particles' mean (PES)."""
        return values[:, 0] if self.center else values.mean(1)

    def _carry(self, members: list[Slot], idx: list[int], res: UnrollResult, bad: set, eps: Tensor,
               steps: int) -> None:
        """Keep the unperturbed particle's state for the slot's next truncation (a fresh task if it diverged)."""
        M = self.particles
        if any(g * M in bad for g in range(len(idx))):
            self.inner.drop(idx)
            return
        params, state = unstack_tree(res.params, len(idx) * M), unstack_tree(res.state, len(idx) * M)
        self.inner.advance(members, params[::M], state[::M], steps)

    def _run(self, rule: nn.Module, members: list[Slot], theta: Tensor, eps: Tensor,
             steps: int) -> tuple[UnrollResult, list[torch.Generator]]:
        M = self.particles
        starts = [self._start(m) for m in members]
        params = {k: torch.cat([s[0][k] for s in starts]) for k in starts[0][0]}
        state = _cat_trees([s[1] for s in starts])
        task = self.inner.population_task(members, repeat=M)
        gens = [clone_generator(m.batches) for m in members for _ in range(M)]
        ref = self.inner.references(members, repeat=M)
        res = unroll(task, MemberRule(rule, self._thetas(theta, eps)), params, state, steps, gens,
                     differentiable=False, divergence_factor=self.divergence_factor, reference_loss=ref,
                     on_divergence="freeze")
        return res, gens

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return {**self.inner.state_dict(), "noise": [g.get_state() for g in self.noise]}

    def load_state_dict(self, sd: dict, rule: nn.Module) -> None:
        self.inner.load_state_dict(sd, rule)
        if len(sd.get("noise", [])) != len(self.noise):
            raise ValueError(f"checkpoint has no {self.name} perturbation streams for {len(self.noise)} slots "
                             f"(was it written by another estimator?)")
        for g, st in zip(self.noise, sd["noise"]):
            g.set_state(st)


def _cat_trees(trees: list) -> object:
    """Concatenate matching pytrees of stacked tensors along dim 0 (non-tensor leaves must agree)."""
    first = trees[0]
    if isinstance(first, Tensor):
        return torch.cat(trees)
    if isinstance(first, dict):
        return {k: _cat_trees([t[k] for t in trees]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_cat_trees([t[i] for t in trees]) for i in range(len(first)))
    return stack_trees(trees)
