"""Learned update rules: ``nn.Module``s implementing :class:`baselines.base.UpdateRule`, the online
controllers that wrap any rule, and the rule file format.

Their ``nn.Parameter``s are the meta-parameters; ``init``/``update`` are pure and differentiable, so the same
rule runs in a differentiable unroll (meta-training), under ``torch.no_grad`` (evaluation) and behind
:class:`baselines.adapter.RuleOptimizer`.

    rule = make_learned_rule("lstm", hidden_size=20)
    rule = make_learned_rule("celo", controllers=[{"name": "hypergradient", "gain": 0.1}])   # a Controlled core
    rule = LEARNED_RULES[name](**rule.config())      # rebuild (then ``load_state_dict``)

Each rule subclasses :class:`LearnedRule` (``optimizers/rule.py``): ``hparam_names = ("lr",)``
(``lr``: a plain float output multiplier, 1.0), ``config()`` (its JSON-able constructor arguments)
and ``numeric_hparams() -> False``. Shared feature helpers live in ``optimizers/features.py``; controllers
in ``optimizers/controllers/``; saving, loading, deriving and short names in ``optimizers/files.py``.
"""
from __future__ import annotations

from typing import Any

from .celo import Celo
from .controllers import CONTROLLERS, Controlled, controller_specs
from .features import reduce_dims, second_moment_normalize
from .hyper import LearnedAdam, LearnedSGD
from .lstm import LSTMOptimizer, preprocess_gradient
from .mlp import MLPOptimizer
from .rule import LearnedRule

__all__ = ["CONTROLLERS", "Celo", "Controlled", "LEARNED_RULES", "make_learned_rule", "LearnedRule",
           "LSTMOptimizer", "MLPOptimizer", "LearnedAdam", "LearnedSGD", "preprocess_gradient", "reduce_dims",
           "second_moment_normalize"]

LEARNED_RULES: dict[str, type[LearnedRule]] = {
    "lstm": LSTMOptimizer, "mlp": MLPOptimizer, "learned_adam": LearnedAdam, "learned_sgd": LearnedSGD,
    "celo": Celo, "controlled": Controlled,
}


def make_learned_rule(name: str, controllers: Any = (), **kwargs: Any) -> LearnedRule:
    """Build a learned rule by its config name, e.g. ``make_learned_rule("mlp", hidden_sizes=[32, 32])``;
    with ``controllers`` (see :func:`~.controllers.controller_specs`: a list, or the config group's mapping
    ``{name: {enabled: bool, ...}}``), the rule wrapped in :class:`Controlled` with them (none: the rule alone)."""
    if name not in LEARNED_RULES:
        raise ValueError(f"unknown learned optimizer {name!r}; allowed: {', '.join(LEARNED_RULES)}")
    specs = controller_specs(controllers)
    if name == "controlled":
        return Controlled(controllers=specs, **kwargs)
    rule = LEARNED_RULES[name](**kwargs)
    return Controlled(rule, specs) if specs else rule
