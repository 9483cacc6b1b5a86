"""What every learned update rule shares: an ``nn.Module`` whose meta-parameters are its parameters,
with the :class:`baselines.base.UpdateRule` methods (``init``, ``update``) and the bookkeeping below.

A new learned rule subclasses :class:`LearnedRule`, implements ``config`` (its constructor arguments,
JSON-able, so checkpoints rebuild it), ``init`` and a pure ``update``; the adapter
(:class:`baselines.RuleOptimizer`), checkpoints, populations and the estimators then work with it.
"""
from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["FusedStepRule", "LearnedRule"]


class LearnedRule(nn.Module):
    """Base class of the learned rules: one hyperparameter ``lr`` (a plain output multiplier, so torch
    lr schedulers scale a meta-trained rule's steps), no in-place fast path, ``repr`` from ``config``."""

    hparam_names = ("lr",)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able): ``type(self)(**self.config())`` rebuilds the rule."""
        raise NotImplementedError

    def numeric_hparams(self) -> bool:
        return False  # no in-place fast path: the adapter always calls the pure ``update``

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())


class FusedStepRule(LearnedRule):
    """A learned rule that :mod:`.fused` may serve (the celo core, alone or with its controllers): the
    ``torch.optim`` adapter's in-place path. ``numeric_hparams()`` is True where the fused C step applies, and
    :class:`baselines.RuleOptimizer` then calls ``update_`` (the fused step in place; the pure ``update``
    written back where it does not apply) instead of the pure ``update``."""

    def numeric_hparams(self) -> bool:
        from . import fused
        return fused.applies(self)

    def update_(self, grads: list, bufs: dict, params: list, step: int) -> dict:
        from . import fused
        new = fused.rule_step_(self, grads, bufs, params, step)
        if new is not None:
            return new
        names = [str(i) for i in range(len(params))]
        state = {"step": step, **{b: dict(zip(names, ts)) for b, ts in bufs.items()}}
        new_params, new_state = self.update(dict(zip(names, grads)), state, dict(zip(names, params)))
        for n, p in zip(names, params):
            p.copy_(new_params[n])
        return {b: [new_state[b][n] for n in names] for b in bufs}
