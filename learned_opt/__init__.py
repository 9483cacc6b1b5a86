"""learned-opt: learned optimizers and the hand-crafted rules they are compared with.

    import learned_opt as lo
    rule = lo.load("celo")    # the shipped general-purpose learned optimizer (or a file path)
    task = lo.make_task("mlp", dataset="digits")
    params = task.init_params(g)
    res = lo.unroll(task, rule, params, rule.init(params), 100, g)

The hand-crafted rules, schedules and the ``torch.optim`` adapter live in the
sibling package ``baselines``.
"""
from typing import Any

from .tasks import make_dataset, make_family, make_task
from .unroll import UnrollResult, unroll

__all__ = ["load", "make_dataset", "make_family", "make_task", "unroll", "UnrollResult"]


def load(path: Any, device: Any = "cpu"):
    """Rebuild a meta-trained optimizer from its file alone, or a shipped one by its short name (``"celo"``);
    see :func:`learned_opt.optimizers.files.load_rule`."""
    from .optimizers.files import load_rule
    return load_rule(path, device)
