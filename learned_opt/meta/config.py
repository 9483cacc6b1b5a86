"""The meta-training config (``configs/meta_train.yaml``): every field, its type and range, in one schema.

:func:`check_meta_train_config` runs before any work (nothing is built, written or locked
before it passes). The ``optimizer:`` and ``family:`` groups are checked by their own
constructors (:func:`learned_opt.schema.check_call`), so a new learned rule or task family
needs no entry here. Keys that nothing reads are errors.
"""
from __future__ import annotations

import torch

from ..optimizers import CONTROLLERS, LEARNED_RULES, controller_specs
from ..schema import (WANDB, ConfigError, Field, boolean, check, check_call, choice, delegated, device, integer,
                      number, optional, section)
from ..tasks import FAMILIES
from .bptt import TruncatedBPTT
from .es import TruncatedES
from .inner import DEFAULT_META_LOSS, META_LOSSES
from .pes import PES

META_OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}
# the meta-gradient estimators by their config names (sibling files over the inner problems in flight)
ESTIMATORS = {"bptt": TruncatedBPTT, "es": TruncatedES, "pes": PES}
DEFAULT_ESTIMATOR = "bptt"   # configs/meta_train.yaml says the same (tested)


# es and pes: antithetic perturbations of the meta-parameters (std) and pairs per task (a diverging
# particle's loss is clipped at meta.divergence_factor x its reference loss)
PERTURBATION = {"std": Field(number(0, low_open=True), required=True), "pairs": Field(integer(1), required=True)}

SCHEMA = {
    "seed": Field(integer(0), required=True),
    "device": Field(device),
    "distributed": Field(boolean),
    "progress": Field(boolean),
    "resume": Field(boolean),
    "checkpoint_every": Field(integer(0)),                 # 0: only at the end
    "snapshot_every": Field(integer(0)),                   # 0: no snapshots
    "optimizer": Field(delegated, required=True),          # checked by the rule's constructor (check_groups)
    "family": Field(delegated, required=True),             # checked by the family's constructor (check_groups)
    "meta": {
        "steps": Field(integer(1), required=True),
        "horizon": Field(integer(1), required=True),
        "truncation": Field(integer(1), required=True),
        "tasks_per_step": Field(integer(1), required=True),
        "optimizer": Field(choice(*META_OPTIMIZERS)),
        "lr": Field(number(0, low_open=True), required=True),
        "clip_grad_norm": Field(optional(number(0, low_open=True))),
        "first_order": Field(boolean),
        "meta_loss": Field(choice(*META_LOSSES)),
        "log_ratio_floor": Field(optional(number(-1e9, 0, high_open=True))),
        "divergence_factor": Field(number(0, low_open=True, finite=False)),
        "population": Field(integer(1)),
        "checkpoint_segments": Field(integer(1)),
        "estimator": Field(choice(*ESTIMATORS)),
        "stagger": Field(boolean),
    },
    "validation": Field(optional(section({"every": Field(integer(0)), "tasks": Field(integer(0)),
                                          "steps": Field(integer(1)),
                                          "metric": Field(choice("mean_loss", "log_ratio", "ratio"))}))),
    "wandb": Field(optional(section(WANDB))),
    "es": Field(optional(section(PERTURBATION))),
    "pes": Field(optional(section(PERTURBATION))),
}


def check_meta_train_config(cfg: dict) -> None:
    """Every bad value or unknown key raises :class:`ConfigError` here, before any work starts."""
    check(cfg, SCHEMA)
    meta = cfg["meta"]
    if meta["truncation"] > meta["horizon"]:
        raise ConfigError(f"meta.truncation={meta['truncation']} is not allowed; allowed: an integer "
                          f"<= meta.horizon={meta['horizon']}")
    population = meta.get("population", 1)
    if meta["tasks_per_step"] % population:
        raise ConfigError(f"meta.population={population!r} is not allowed; allowed: an integer >= 1 that divides "
                          f"meta.tasks_per_step={meta['tasks_per_step']} (tasks are unrolled in groups of that size)")
    segments = meta.get("checkpoint_segments", 1)
    if segments > meta["truncation"]:
        raise ConfigError(f"meta.checkpoint_segments={segments!r} is not allowed; allowed: an integer in "
                          f"[1, meta.truncation={meta['truncation']}] (1: no gradient checkpointing)")
    if meta.get("log_ratio_floor") is not None and meta.get("meta_loss", DEFAULT_META_LOSS) != "log_ratio":
        raise ConfigError(f"meta.log_ratio_floor={meta['log_ratio_floor']!r} is not allowed with meta.meta_loss="
                          f"{meta.get('meta_loss', DEFAULT_META_LOSS)!r}; allowed: null (or set meta.meta_loss=log_ratio)")
    val = cfg.get("validation") or {}
    if val.get("every", 0) and val.get("tasks", 0) < 1:
        raise ConfigError(f"validation.tasks={val.get('tasks', 0)!r} is not allowed with validation.every="
                          f"{val['every']}; allowed: an integer >= 1 (or validation.every=0: no validation)")
    estimator = meta.get("estimator", DEFAULT_ESTIMATOR)
    if estimator in ("es", "pes") and not cfg.get(estimator):
        raise ConfigError(f"meta.estimator={estimator} needs the block {estimator}: {{std, pairs}}")
    check_groups(cfg)


def _group(cfg: dict, key: str, registry: dict) -> tuple[str, dict]:
    group = cfg[key]
    if not isinstance(group, dict) or "name" not in group:
        raise ConfigError(f"{key}={group!r} is not allowed; allowed: a mapping with `name` (one of "
                          f"{', '.join(registry)}) and that one's options")
    kwargs = dict(group)
    name = kwargs.pop("name")
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(f"{key}.name={name!r} is not allowed; allowed: {', '.join(registry)}")
    return name, kwargs


def check_groups(cfg: dict) -> None:
    """Build the learned rule and the task family once (on the CPU, the global RNG untouched), so that
    their constructors check every option; a family checks that its datasets can be found."""
    name, kwargs = _group(cfg, "optimizer", LEARNED_RULES)
    try:
        controllers = controller_specs(kwargs.pop("controllers", None), "optimizer.controllers")
    except ValueError as e:
        raise ConfigError(str(e)) from e
    with torch.random.fork_rng(devices=[]):
        check_call("optimizer", f"learned optimizer {name!r}", LEARNED_RULES[name], kwargs)
    for spec in controllers:
        cname = spec["name"]
        if cname not in CONTROLLERS:
            raise ConfigError(f"optimizer.controllers.{cname}: unknown controller; allowed: {', '.join(CONTROLLERS)}")
        check_call(f"optimizer.controllers.{cname}", f"controller {cname!r}", CONTROLLERS[cname],
                   {k: v for k, v in spec.items() if k != "name"})
    name, kwargs = _group(cfg, "family", FAMILIES)
    check_call("family", f"task family {name!r}", FAMILIES[name], kwargs, inject={"device": "cpu"})
