"""Hand-crafted optimizers as pure update rules, learning-rate schedules, and the torch.optim adapter.

This package depends on torch only; ``learned_opt`` builds on it, never the reverse.
"""
from .adapter import RuleOptimizer
from .base import HParam, LR, Params, Rule, State, UpdateRule, is_schedule, resolve
from .rules import GD, RULES, SGD, Adadelta, Adagrad, Adam, AdamW, Momentum, Nesterov, RMSprop, make_rule
from .schedules import (SCHEDULES, Constant, CosineWarmRestarts, CyclicLR, Exponential, RangeTestResult,
                        ReduceOnPlateau, SnapshotCollector, StepDecay, lr_range_test, make_schedule)

__all__ = [
    "UpdateRule", "Rule", "Params", "State", "HParam", "LR", "is_schedule", "resolve",
    "GD", "SGD", "Momentum", "Nesterov", "Adagrad", "RMSprop", "Adam", "AdamW", "Adadelta",
    "RULES", "make_rule", "RuleOptimizer",
    "Constant", "StepDecay", "Exponential", "CyclicLR", "CosineWarmRestarts", "ReduceOnPlateau",
    "SnapshotCollector", "lr_range_test", "RangeTestResult", "SCHEDULES", "make_schedule",
]
