"""Meta-training checkpoints: a rule file (:mod:`learned_opt.optimizers.files`, the format, hashes and
loading) plus the state meta-training needs to continue, and the check that a file holds it.

A run's ``checkpoint.pt`` adds to the rule file ``meta_opt`` (the meta-optimizer's state), ``torch_rng``,
``counters`` and the estimator's inner problems (``estimator``, or ``estimator_ranks`` for a distributed
run); its ``best.pt`` and snapshots hold the meta-parameters only. Reading, writing and integrity are those
of every rule file.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..optimizers.files import (CheckpointError, content_hash, load_checkpoint, load_rule, rule_from_checkpoint,
                                save_checkpoint)

__all__ = ["CheckpointError", "TRAINING_STATE", "check_resumable", "content_hash", "load_checkpoint", "load_rule",
           "rule_from_checkpoint", "save_checkpoint"]

# What a checkpoint needs beyond the meta-parameters for meta-training to continue from it.
TRAINING_STATE = ("meta_opt", "torch_rng", "counters")


def check_resumable(ckpt: dict, path: str | Path) -> None:
    """Raise unless ``ckpt`` holds a meta-training state to continue (not only meta-parameters)."""
    missing = [k for k in TRAINING_STATE if k not in ckpt]
    if "estimator" not in ckpt and "estimator_ranks" not in ckpt:
        missing.append("estimator")
    if missing:
        raise CheckpointError(f"checkpoint {path} cannot be resumed: it holds the meta-parameters only (like a run's "
                              f"best.pt), not the training state (it lacks {', '.join(missing)}). Resume from the "
                              f"run's checkpoint.pt; load this file with learned_opt.load to use the optimizer")
    for key, kind in (("meta_opt", dict), ("counters", dict), ("torch_rng", torch.Tensor)):
        if not isinstance(ckpt[key], kind):
            raise CheckpointError(f"checkpoint {path}: entry {key!r} is a {type(ckpt[key]).__name__}; "
                                  f"expected a {kind.__name__}")
