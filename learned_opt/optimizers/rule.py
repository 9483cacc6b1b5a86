"""What every learned update rule shares: an ``nn.Module`` whose meta-parameters are its parameters,
with the :class:`baselines.base.UpdateRule` methods (``init``, ``update``) and the bookkeeping below.

A new learned rule subclasses :class:`LearnedRule`, implements ``config`` (its constructor arguments,
JSON-able, so checkpoints rebuild it), ``init`` and a pure ``update``; the adapter
(:class:`baselines.RuleOptimizer`), checkpoints, populations and the estimators then work with it.
"""
from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["LearnedRule"]


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
