"""Short-horizon bias (Wu et al. 2018; Vicol et al. 2021): SGD's learning rate meta-learned over a long
horizon in short truncations with each estimator, for comparison with the best lr of the full horizon.

:func:`meta_config` turns one ``configs/short_horizon_bias.yaml`` config into the meta-training config of
one estimator (learned SGD with a single meta-parameter, its log lr, on a single task);
:func:`check_config` checks the whole config, each estimator's meta-training config included, before
any work; :func:`final_lr` is the reported value of a meta-learned lr history.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..schema import WANDB, ConfigError, Field, check, choice, delegated, device, integer, list_of, number
from . import ESTIMATORS
from .trainer import check_config as check_meta_train_config

POSITIVE = number(0, low_open=True)
SCHEMA = {  # the fields of configs/short_horizon_bias.yaml; meta, es and pes are checked as meta-training's
    "seed": Field(integer(0)), "device": Field(device),
    "task": Field(delegated), "horizon": Field(integer(1)), "initial_lr": Field(POSITIVE),
    "estimators": Field(list_of(choice(*ESTIMATORS), nonempty=True, distinct=True)),
    "meta": Field(delegated), "es": Field(delegated), "pes": Field(delegated),
    "grid": {"lrs": Field(integer(2)), "low": Field(POSITIVE), "high": Field(POSITIVE), "seeds": Field(integer(1))},
    "wandb": WANDB,
}


def meta_config(cfg: dict, estimator: str) -> dict:
    """The meta-training config that learns SGD's lr on the task with ``estimator``."""
    task = dict(cfg["task"])
    return {"seed": cfg["seed"], "device": cfg["device"], "distributed": False, "progress": True,
            "optimizer": {"name": "learned_sgd", "lr": cfg["initial_lr"], "momentum": 0.0, "steps": 1},
            "family": {"name": "single_task", "task": task.pop("name"), **task},
            "meta": {**cfg["meta"], "estimator": estimator, "horizon": cfg["horizon"], "optimizer": "adam",
                     "clip_grad_norm": None, "divergence_factor": 1e3, "population": cfg["meta"]["tasks_per_step"]},
            "es": cfg["es"], "pes": cfg["pes"], "checkpoint_every": 100, "validation": {"every": 0},
            "wandb": {"mode": "disabled"}}


def check_config(cfg: dict) -> None:
    """Every field, and every estimator's meta-training config, before any work."""
    check(cfg, SCHEMA)
    for name in cfg["estimators"]:
        check_meta_train_config(meta_config(cfg, name))
    if not cfg["grid"]["low"] < cfg["grid"]["high"]:
        raise ConfigError(f"grid.low={cfg['grid']['low']!r} is not allowed; allowed: a number below "
                          f"grid.high={cfg['grid']['high']!r}")


def final_lr(history: Sequence[float]) -> float:
    """The geometric mean of the last tenth of a meta-learned lr history (at least its last value)."""
    tail = np.asarray(history, dtype=float)[-max(1, len(history) // 10):]
    return float(np.exp(np.mean(np.log(tail))))
