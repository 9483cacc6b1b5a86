"""Persistent evolution strategies (``meta.estimator=pes``; Vicol, Metz, Sohl-Dickstein, ICML 2021).

Like :mod:`~learned_opt.meta.es`, every slot runs ``pairs`` antithetic pairs of particles with
meta-parameters ``theta + eps_j`` and ``theta - eps_j`` (``eps_j ~ N(0, std^2 I)``, fresh at every
truncation), all at once under ``no_grad``. The difference: the particles' inner states
*persist* across truncations (the ``+`` particle of pair ``j`` always continues from its own
state, and so does the ``-`` one), and each pair accumulates its perturbations since its inner
problem's last reset, ``xi_j = eps_j^(1) + ... + eps_j^(now)``. The estimate::

    g = 1 / (2 * pairs * std^2) * sum_j xi_j * (L+_j - L-_j)

is an unbiased estimate of the gradient of the (Gaussian-smoothed) meta-loss of this truncation
with respect to theta *through the whole history since the reset*, so summed over a horizon it
estimates the gradient of the full-horizon meta-loss, without the short-horizon bias of truncated
BPTT or truncated ES (``experiments/short_horizon_bias.py`` measures both). Its variance grows
with the number of truncations since the reset; use ``stagger`` so slots are at different phases.

A particle that diverges is frozen and its loss clipped (see :mod:`~learned_opt.meta.es`); its
slot then starts a fresh task, with its accumulated perturbations reset to zero. Particle
states and accumulated perturbations are part of ``state_dict``, so a run resumes bit for bit.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..unroll import UnrollResult
from .es import TruncatedES
from .inner import Slot, detach_tree

__all__ = ["PES"]


class PES(TruncatedES):
    """See the module docstring; the arguments are those of :class:`~learned_opt.meta.es.TruncatedES`."""

    name = "pes"
    center = False

    def _directions(self, members: list[Slot], eps: Tensor) -> Tensor:
        xi = [m.extra["xi"] + e if "xi" in m.extra else e for m, e in zip(members, eps)]
        self._xi = torch.stack(xi)
        return self._xi

    def _start(self, member: Slot) -> tuple[dict, dict]:
        if "params" in member.extra:
            return member.extra["params"], member.extra["state"]
        return super()._start(member)

    def _carry(self, members: list[Slot], idx: list[int], res: UnrollResult, bad: set, eps: Tensor,
               steps: int) -> None:
        """Each slot keeps its particles' states and accumulated perturbations (a fresh task if any diverged)."""
        M = self.particles
        if bad:
            self.inner.drop(idx)  # a fresh task, fresh particles, xi = 0
            return
        params, state = detach_tree(res.params), detach_tree(res.state)
        for g, m in enumerate(members):
            rows = slice(g * M, (g + 1) * M)
            m.extra = {"params": {k: v[rows] for k, v in params.items()}, "state": _rows(state, rows),
                       "xi": self._xi[g]}
        first = [{k: v[g * M] for k, v in params.items()} for g in range(len(members))]
        self.inner.advance(members, first, [m.state for m in members], steps)


def _rows(tree: object, rows: slice) -> object:
    if isinstance(tree, Tensor):
        return tree[rows]
    if isinstance(tree, dict):
        return {k: _rows(v, rows) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_rows(v, rows) for v in tree)
    return tree
