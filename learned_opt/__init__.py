"""learned-opt: learned optimizers and the hand-crafted rules they are compared with.

    import learned_opt as lo
    rule = lo.load("pretrained/mlp_digits.pt")    # a meta-trained optimizer, from its checkpoint alone
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
    """Rebuild a meta-trained optimizer from its checkpoint alone (see ``learned_opt.meta.checkpoint.load_rule``)."""
    from .meta.checkpoint import load_rule
    return load_rule(path, device)
