"""The comparison protocol: optimizers x tasks x seeds, with a stated tuning budget for hand-crafted rules.

Following Schmidt, Schneider & Hennig (2021), an optimizer is judged after a
stated tuning budget, over several seeds, on several tasks:

* a hand-crafted rule is run twice: with its default hyperparameters
  (``<label>@default``) and after a search (``<label>@tuned``): a log grid or
  random search over ``lr`` (and optionally other hyperparameters) of
  ``budget`` trials, each scored on ``tuning.seeds`` (disjoint from the
  evaluation seeds) by the loss on a validation split carved out of the
  training split (never the test split);
* any ``torch.optim.Optimizer`` class named by import path (``torch_optim:``, see
  :mod:`~learned_opt.evaluation.peers`) is run and tuned like a hand-crafted rule;
* a learned rule (from a checkpoint) or a rule with meta-learned
  hyperparameters is evaluated as it is: it has no tuning knobs;
* every (optimizer, task, seed) cell runs through the one ``unroll`` and is
  saved as soon as it finishes, so an interrupted evaluation resumes without
  redoing or losing finished cells. A saved cell carries a hash of its content;
  one that is damaged is named and computed again;
* a rule that can use the run's length (``uses_horizon``, e.g. the ``celo``
  learned optimizer) is told it: ``rule.init(params, horizon=steps)``;
* a suite entry with ``requires_files: true`` (a dataset read from files, such
  as full MNIST) is skipped, with a printed note, when its files are absent;
  without it, absent files are an error before any work starts.

Every optimizer entry is checked before any work: a hand-crafted rule's options by its
constructor, each tuning candidate by building the rule with it, a learned optimizer's file
by loading it (its content hash verified) and recording the SHA-256 of its bytes, which every
later use of the file checks again (a file replaced mid-evaluation is an error, not a silent
mix of two optimizers).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baselines import RULES, make_rule
from baselines.base import UpdateRule
from baselines.torch_peer import TorchOptimRule

from ..optimizers import Controlled
from ..optimizers.controllers import controller_specs
from ..optimizers.files import CheckpointError, load_checkpoint, load_rule, resolve_pretrained
from ..schema import (ConfigError, Field, boolean, check_call, check_choice, check_int, choice, integer, list_of,
                      number)
from ..tasks import TASKS, make_task
from ..tasks.base import Task
from ..tasks.datasets import Dataset
from ..unroll import init_state, unroll
from ..utils import generator
from . import metrics as M
from .peers import parse_peer
from .results import CellResult
from .sealed import read_sealed, write_sealed

TUNING_METHODS = ("grid", "random")
TUNING_OBJECTIVES = ("final_val_loss", "mean_train_loss", "final_train_loss")
# The `tuning:` block of a config (configs/tuning/grid.yaml), as :func:`tune` reads it.
TUNING = {
    "method": Field(choice(*TUNING_METHODS)),
    "budget": Field(integer(1)),
    "seeds": Field(list_of(integer(), nonempty=True, distinct=True), required=True),
    "objective": Field(choice(*TUNING_OBJECTIVES)),
    "val_fraction": Field(number(0, 1, low_open=True, high_open=True)),
    "split_seed": Field(integer(0)),
    "seed": Field(integer(0)),
}
FAMILY_TAGS = {"gd": "sgd-family", "sgd": "sgd-family", "momentum": "sgd-family", "nesterov": "sgd-family",
               "adagrad": "adaptive", "rmsprop": "adaptive", "adam": "adaptive", "adamw": "adaptive",
               "adadelta": "adaptive"}


# --------------------------------------------------------------------------- specs
@dataclass
class OptimizerSpec:
    """One entry of the config's ``optimizers``: a hand-crafted rule or a learned one."""
    label: str
    rule: str | None = None                 # a baselines rule name
    hparams: dict = field(default_factory=dict)
    tune: dict = field(default_factory=dict)  # hyperparameter -> [low, high] (log scale) or a list of values
    checkpoint: str | None = None           # a learned rule
    sha256: str | None = None               # of the learned rule's file, recorded when the config was checked
    controllers: list = field(default_factory=list)   # online controllers on a hand-crafted rule's steps
    torch_optim: str | None = None          # a torch.optim.Optimizer class by import path (evaluation/peers.py)

    @property
    def learned(self) -> bool:
        return self.checkpoint is not None

    @property
    def family(self) -> str:
        if self.torch_optim is not None:
            return "torch.optim"
        return "learned" if self.learned else FAMILY_TAGS.get(self.rule or "", "hand-crafted")

    def build(self, device: torch.device, hparams: dict | None = None) -> UpdateRule:
        if self.learned:
            if self.sha256 is not None and file_sha256(self.checkpoint) != self.sha256:
                raise CheckpointError(f"optimizers.{self.label}.checkpoint: {self.checkpoint} changed since this "
                                      f"evaluation started (SHA-256 {self.sha256[:16]}... recorded, now "
                                      f"{file_sha256(self.checkpoint)[:16]}...); restore it, or evaluate the new "
                                      f"file in a new run directory")
            return load_rule(self.checkpoint, device)
        if self.torch_optim is not None:
            return TorchOptimRule(self.torch_optim, **(self.hparams if hparams is None else hparams))
        rule = make_rule(self.rule, **(self.hparams if hparams is None else hparams))
        return Controlled(rule, self.controllers) if self.controllers else rule


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parse_optimizers(cfg: dict, tuning: dict | None = None) -> list[OptimizerSpec]:
    """Validate every optimizer entry (names, hyperparameters, checkpoints) before any work starts.

    With ``tuning`` (the config's ``tuning:`` block), every candidate the search would try is
    built once, so a tuning range no rule accepts fails here, not after the default cells ran.
    """
    if not cfg:
        raise ValueError("optimizers is empty: name at least one optimizer to evaluate")
    if not isinstance(cfg, dict):
        raise ConfigError(f"optimizers={cfg!r} is not allowed; allowed: a mapping label -> entry")
    specs = []
    for label, entry in cfg.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"optimizers.{label}={entry!r} is not allowed; allowed: a mapping with `rule` "
                              f"(and its hyperparameters, `tune`) or `checkpoint`")
        entry = dict(entry)
        if "checkpoint" in entry:
            extra = sorted(set(entry) - {"checkpoint"})
            if extra:
                raise ConfigError(f"optimizers.{label}.{extra[0]}={entry[extra[0]]!r}: unknown key (nothing reads it); "
                                  f"a learned optimizer entry takes only `checkpoint`")
            if not isinstance(entry["checkpoint"], str):
                raise ConfigError(f"optimizers.{label}.checkpoint={entry['checkpoint']!r} is not allowed; "
                                  f"allowed: a file path")
            path = resolve_pretrained(entry["checkpoint"])  # a file, or a shipped optimizer's short name ("celo")
            if not path.is_file():
                raise FileNotFoundError(f"optimizers.{label}.checkpoint: no such file {path}")
            digest = file_sha256(path)
            load_checkpoint(path)  # corrupt or foreign files fail here, with the reason
            specs.append(OptimizerSpec(label, checkpoint=str(path), sha256=digest))
            continue
        if "torch_optim" in entry:   # a torch.optim class by import path: checked (installed?) before any cell
            specs.append(parse_peer(label, entry, tuning))
            continue
        if "rule" not in entry:
            raise ValueError(f"optimizers.{label} needs either `rule` (one of {', '.join(RULES)}), `checkpoint` "
                             f"or `torch_optim` (a torch.optim.Optimizer class by import path)")
        rule = entry.pop("rule")
        check_choice(f"optimizers.{label}.rule", rule, tuple(RULES))
        controllers = controller_specs(entry.pop("controllers", None), f"optimizers.{label}.controllers")
        if controllers:   # bad names or values fail here, before any cell runs
            check_call(f"optimizers.{label}", "controllers", Controlled, {"core": RULES[rule](),
                                                                         "controllers": controllers})
        tune = entry.pop("tune", None) or {}
        if not isinstance(tune, dict):
            raise ConfigError(f"optimizers.{label}.tune={tune!r} is not allowed; allowed: a mapping "
                              f"hyperparameter -> [low, high] or a list of values")
        tune = dict(tune)
        check_call(f"optimizers.{label}", f"rule {rule!r}", RULES[rule], entry)  # bad hyperparameters raise here
        for name, space in tune.items():
            if name not in RULES[rule].hparam_names:
                raise ValueError(f"optimizers.{label}.tune.{name}: {rule} has no hyperparameter {name!r}; "
                                 f"allowed: {', '.join(RULES[rule].hparam_names)}")
            if not isinstance(space, (list, tuple)) or len(space) < 2:
                raise ValueError(f"optimizers.{label}.tune.{name}={space!r}: give [low, high] or a list of values")
        if tune and tuning is not None:
            for cand in candidates(tune, tuning.get("method", "grid"), int(tuning.get("budget", 8)),
                                   int(tuning.get("seed", 0))):
                try:
                    make_rule(rule, **{**entry, **cand})
                except (ValueError, TypeError) as e:
                    raise ConfigError(f"optimizers.{label}.tune={tune!r}: the search would try {cand}, which {rule} "
                                      f"rejects: {e}. A [low, high] range is searched on a log scale (0 < low, high); "
                                      f"any other list is a list of values to try") from e
        specs.append(OptimizerSpec(label, rule=rule, hparams=entry, tune=tune, controllers=controllers))
    return specs


# Suite entries may carry these evaluation settings beside the task's own arguments.
EVAL_KEYS = ("steps", "target_loss", "requires_files")


def task_kwargs(spec: dict) -> dict:
    """The ``make_task`` arguments of a suite entry (without its evaluation settings)."""
    return {k: v for k, v in spec.items() if k not in EVAL_KEYS}


def build_task(path: str, spec: Any, device: torch.device, classifier: bool = False, **changes: Any) -> Task:
    """The task a config entry at ``path`` names (a mapping: ``name`` and the task's options, ``changes``
    applied on top), built on ``device``; a :class:`ConfigError` naming ``path`` for an unknown name, an
    option the task does not take or a bad value, or (``classifier``) a task that reports no accuracy."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}={spec!r} is not allowed; allowed: a mapping with `name` and the task's options")
    name = check_choice(f"{path}.name", spec.get("name"), tuple(TASKS))
    kwargs = {**{k: v for k, v in spec.items() if k != "name"}, **changes}
    task = check_call(path, f"task {name!r}", TASKS[name], kwargs, inject={"device": device})
    if classifier and not (task.is_classifier and hasattr(task, "logits")):
        raise ConfigError(f"{path}.name={name!r} is not allowed; allowed: a classifier with logits (mlp, logreg, "
                          f"conv)")
    return task


def budget(spec: dict, cfg: dict) -> int:
    """Inner steps for this suite entry: its own ``steps`` or the config's."""
    return int(spec.get("steps", cfg["steps"]))


def parse_suite(cfg: dict, device: torch.device) -> dict[str, dict]:
    """Task label -> suite entry; each task is built once here so bad names fail before any work.

    Entries with ``requires_files: true`` whose data files are absent are left out, with a printed note.
    """
    if not cfg:
        raise ValueError("suite is empty: name at least one task")
    if not isinstance(cfg, dict):
        raise ConfigError(f"suite={cfg!r} is not allowed; allowed: a mapping label -> task entry")
    suite, skipped = {}, []
    for label, spec in cfg.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"suite.{label}={spec!r} is not allowed; allowed: a mapping with `name` and the "
                              f"task's options")
        spec = dict(spec)
        check_choice(f"suite.{label}.name", spec.get("name"), tuple(TASKS))
        if "steps" in spec:
            check_int(f"suite.{label}.steps", spec["steps"], 1)
        boolean(f"suite.{label}.requires_files", spec.get("requires_files", False))
        if "target_loss" in spec:
            number(finite=False)(f"suite.{label}.target_loss", spec["target_loss"])
        kwargs = task_kwargs(spec)
        name = kwargs.pop("name")
        try:
            check_call(f"suite.{label}", f"task {name!r}", TASKS[name], kwargs, inject={"device": device})
        except FileNotFoundError as err:
            if not spec.get("requires_files", False):
                raise
            print(f"note: suite.{label} is skipped: its data files are absent ({str(err).splitlines()[0]}; "
                  f"set the task's root or $LEARNED_OPT_DATA to include it)")
            skipped.append(label)
            continue
        suite[label] = spec
    if not suite:
        raise ValueError(f"suite is empty: every entry ({', '.join(skipped)}) was skipped for absent data files")
    return suite


def validation_task(spec: dict, device: torch.device, fraction: float, seed: int) -> Task:
    """The task with its training split cut into train' and validation (the validation set plays "test").

    Data-free tasks (quadratics, surfaces) have no split: their tuning objective is the training loss.
    """
    spec = task_kwargs(spec)
    task = make_task(**spec, device=device)
    if hasattr(task, "validation_split"):   # a task that cuts its own (nn.Module tasks)
        return task.validation_split(fraction, seed)
    ds: Dataset | None = getattr(task, "dataset", None)
    if ds is None:
        return task
    n = len(ds.y_train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(ds.x_train.device)
    n_val = max(1, int(round(fraction * n)))
    val, train = perm[:n_val], perm[n_val:]
    split = Dataset(f"{ds.name}-val", ds.x_train[train], ds.y_train[train], ds.x_train[val], ds.y_train[val],
                    ds.num_classes, ds.input_shape, ds.mean, ds.std)
    return make_task(**{**spec, "dataset": split}, device=device)


# --------------------------------------------------------------------------- one cell
def run_cell(task: Task, rule: UpdateRule, seed: int, steps: int, device: torch.device,
             eval_every: int = 0, eval_examples: int | None = None) -> CellResult:
    """One (optimizer, task, seed) run: the per-step training loss, periodic test metrics every
    ``eval_every`` steps, and the final train/test metrics."""
    g = generator(seed, device)
    params = task.init_params(g)
    state = init_state(rule, params, steps, task)
    at = getattr(rule, "eval_params", None) or (lambda p: p)   # where a schedule-free peer is evaluated

    def evaluate(step: int, p, loss) -> dict:
        return {"step": step, **{f"test_{k}": v for k, v in task.metrics(at(p), "test", eval_examples).items()}}

    t0 = time.perf_counter()
    res = unroll(task, rule, params, state, steps, g,
                 callback=evaluate if eval_every else None, callback_every=eval_every)
    wall = time.perf_counter() - t0
    cell = CellResult(seed=seed, train_loss=res.losses.detach().cpu().numpy(), diverged=res.diverged,
                      diverged_at=res.diverged_at, seconds=wall, evals=res.records)
    if not res.diverged:
        final = at(res.params)
        cell.final_test = task.metrics(final, "test", eval_examples)
        cell.final_train_loss = task.metrics(final, "train", eval_examples)["loss"]
    return cell


# --------------------------------------------------------------------------- tuning
def candidates(tune: dict, method: str, budget: int, seed: int) -> list[dict]:
    """The hyperparameter settings a search tries: ``budget`` of them (a grid is per-dimension ~budget^(1/d))."""
    if method not in TUNING_METHODS:
        raise ValueError(f"tuning.method={method!r} is not allowed; allowed: {', '.join(TUNING_METHODS)}")
    names = list(tune)
    if method == "grid":
        per = max(2, int(round(budget ** (1 / len(names))))) if names else 1
        axes = []
        for n in names:
            space = tune[n]
            if len(space) == 2 and all(isinstance(v, (int, float)) for v in space) and space[0] > 0 and space[1] > 0:
                axes.append(list(np.geomspace(space[0], space[1], per)))
            else:
                axes.append(list(space))
        grid = [{}]
        for n, axis in zip(names, axes):
            grid = [{**g, n: float(v) if isinstance(v, (np.floating, float)) else v} for g in grid for v in axis]
        return grid
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(budget):
        c = {}
        for n in names:
            space = tune[n]
            if len(space) == 2 and all(isinstance(v, (int, float)) for v in space) and space[0] > 0:
                c[n] = float(np.exp(rng.uniform(np.log(space[0]), np.log(space[1]))))
            else:
                c[n] = space[int(rng.integers(len(space)))]
        out.append(c)
    return out


def tuning_score(cell: CellResult, steps: int, objective: str) -> float:
    if cell.diverged:
        return math.inf
    if objective == "mean_train_loss":
        return M.auc(cell.train_loss, steps)
    if objective == "final_train_loss":
        return cell.final("train_loss", math.inf)
    return cell.final("test_loss", math.inf)  # the validation split plays "test" in the tuning task


def tune(spec: OptimizerSpec, task_spec: dict, cfg: dict, device: torch.device, cache: Path | None = None) -> dict:
    """Search ``spec.tune``; returns ``{"best": hparams, "trials": [...]}`` (cached in ``cache`` if given)."""
    if cache is not None and cache.exists():
        cached = read_sealed(cache)
        if cached is not None:
            return cached
    tcfg = cfg["tuning"]
    objective = tcfg.get("objective", "final_val_loss")
    if objective not in TUNING_OBJECTIVES:
        raise ValueError(f"tuning.objective={objective!r} is not allowed; allowed: {', '.join(TUNING_OBJECTIVES)}")
    task = validation_task(task_spec, device, tcfg.get("val_fraction", 0.2), tcfg.get("split_seed", 0))
    steps = budget(task_spec, cfg)
    trials = []
    for cand in candidates(spec.tune, tcfg.get("method", "grid"), int(tcfg.get("budget", 8)),
                           int(tcfg.get("seed", 0))):
        hp = {**spec.hparams, **cand}
        scores = [tuning_score(run_cell(task, spec.build(device, hp), s, steps, device), steps, objective)
                  for s in tcfg["seeds"]]
        trials.append({"hparams": cand, "score": float(np.mean(scores))})
    finite = [t for t in trials if math.isfinite(t["score"])]
    best = min(finite, key=lambda t: t["score"]) if finite else {"hparams": {}, "score": math.inf}
    out = {"best": {**spec.hparams, **best["hparams"]}, "best_score": best["score"], "objective": objective,
           "trials": trials}
    out = json.loads(json.dumps(out))  # exactly what a resumed run reads back
    if cache is not None:
        write_sealed(out, cache, indent=1)
    return out
