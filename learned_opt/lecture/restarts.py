"""Fixed lr vs reduce-on-plateau vs SGDR warm restarts with a snapshot ensemble (Huang et al. 2017).

The procedure behind ``experiments/restarts.py``: three variants of SGD-momentum, the same number of
epochs each, several seeds, trained by :func:`~learned_opt.lecture.epochs.train_epochs` on the
training split minus a validation split (the test split is only used for the final scores):

(a) a fixed lr;
(b) ``ReduceOnPlateau`` as the rule's lr, fed the validation loss after every epoch;
(c) SGDR (``CosineWarmRestarts``, ``T_0`` = ``sgdr.cycle_epochs`` epochs) with a ``SnapshotCollector``:
    one snapshot at the end of each cycle.

The snapshot ensemble (:mod:`~learned_opt.lecture.ensembles`) is compared on the test split with each
snapshot, the best single snapshot, (a) and (b). :func:`check_config` checks a whole config against
:data:`SCHEMA` before any work; :func:`run_restarts` returns a :class:`RestartsResult`, which renders the
report (:meth:`RestartsResult.markdown`) and the JSON record (:meth:`RestartsResult.to_json`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from baselines import RULES, CosineWarmRestarts, ReduceOnPlateau, SnapshotCollector, make_rule

from ..schema import RUN, WANDB, ConfigError, Field, check, check_call, choice, delegated, integer, number, optional
from ..tasks.base import Task
from ..utils import resolve_device
from .ensembles import ensemble_probs, ensemble_size, score_snapshots, scores
from .epochs import EpochRun, steps_per_epoch, train_epochs
from ..evaluation.report import markdown_table, mean_std, paired_difference
from ..evaluation.suite import build_task, validation_task

__all__ = ["FIXED", "PLATEAU", "SGDR", "VARIANTS", "LABELS", "RULES_ALLOWED", "BANDS", "SCHEMA", "check_config",
           "ensemble_label", "RestartsResult", "run_restarts"]

FIXED, PLATEAU, SGDR = "fixed", "plateau", "sgdr"
VARIANTS = (FIXED, PLATEAU, SGDR)
LABELS = {FIXED: "(a) fixed lr", PLATEAU: "(b) reduce-on-plateau", SGDR: "(c) SGDR (last iterate)"}
RULES_ALLOWED = ("momentum", "nesterov", "sgd")
BANDS = ("iqr", "minmax")
BY_VALIDATION = "best single snapshot (by validation loss)"
BY_TEST = "best single snapshot (by test accuracy, optimistic)"

SCHEMA = {  # the fields of configs/restarts.yaml
    **RUN,
    "task": Field(delegated),                 # the task's constructor (a classifier with logits)
    "val_fraction": Field(number(0, 1, low_open=True, high_open=True)),
    "split_seed": Field(integer(0)),
    "epochs": Field(integer(1)),
    "rule": Field(choice(*RULES_ALLOWED)),
    "momentum": Field(number(0, 1, high_open=True)),
    "fixed": {"lr": Field(number(0))},
    "plateau": Field(delegated),              # ReduceOnPlateau's constructor
    "sgdr": {"lr": Field(number(0)), "cycle_epochs": Field(integer(1)), "T_mult": Field(integer(1)),
             "eta_min": Field(number(0))},
    "ensemble": {"last": Field(optional(integer(1)))},
    "eval_examples": Field(optional(integer(1))),
    "figure": {"band": Field(choice(*BANDS)), "dpi": Field(integer(1))},
    "wandb": WANDB,
}


def check_config(cfg: dict) -> tuple[torch.device, Task, Task]:
    """Check every field before any work; returns the device, the task and its validation version (whose
    "test" split is the validation split carved out of the training split)."""
    check(cfg, SCHEMA)
    check_call("rule", f"rule {cfg['rule']!r}", RULES[cfg["rule"]],
               {"lr": cfg["fixed"]["lr"], "momentum": cfg["momentum"]})
    if not isinstance(cfg["plateau"], dict):
        raise ConfigError(f"plateau={cfg['plateau']!r} is not allowed; allowed: a mapping of ReduceOnPlateau's "
                          f"options")
    check_call("plateau", "ReduceOnPlateau", ReduceOnPlateau, cfg["plateau"])
    s = cfg["sgdr"]
    if s["eta_min"] > s["lr"]:
        raise ConfigError(f"sgdr.eta_min={s['eta_min']!r} is not allowed; allowed: a number in [0, sgdr.lr="
                          f"{s['lr']!r}]")
    if s["cycle_epochs"] > cfg["epochs"]:
        raise ConfigError(f"sgdr.cycle_epochs={s['cycle_epochs']} is not allowed; allowed: an integer <= "
                          f"epochs={cfg['epochs']} (no cycle would end, so there would be no snapshot)")
    device = resolve_device(cfg["device"])
    task = build_task("task", cfg["task"], device, classifier=True)
    return device, task, validation_task(dict(cfg["task"]), device, cfg["val_fraction"], cfg["split_seed"])


def ensemble_label(size: int, available: int) -> str:
    """The ensemble's row name: the last ``size`` of ``available`` snapshots, mean softmax."""
    return f"snapshot ensemble (last {size} of {available}, mean softmax)"


def sgdr_schedule(cfg: dict, steps_per_epoch: int) -> CosineWarmRestarts:
    """Variant (c)'s schedule, its cycle ``sgdr.cycle_epochs`` epochs long."""
    s = cfg["sgdr"]
    return CosineWarmRestarts(s["lr"], s["cycle_epochs"] * steps_per_epoch, T_mult=s["T_mult"], eta_min=s["eta_min"])


@dataclass
class RestartsResult:
    """What :func:`run_restarts` measured. ``test[model]`` holds one ``{"accuracy", "loss"}`` per seed (models:
    the three variants, each snapshot, the best single snapshot two ways, the ensemble); ``snapshot_steps[i]``
    are the update indices of seed ``i``'s snapshots, of which the first ``snapshots`` (the fewest any seed
    has) are scored."""
    config: dict[str, Any]
    task_name: str
    train_examples: int
    steps_per_epoch: int
    runs: dict[str, list[EpochRun]]
    snapshot_steps: list[list[int]]
    snapshots: int
    ensemble_size: int
    test: dict[str, list[dict[str, float]]]
    seconds: float

    @property
    def ensemble_key(self) -> str:
        return ensemble_label(self.ensemble_size, self.snapshots)

    @property
    def accuracy(self) -> dict[str, list[float]]:
        """Test accuracy per model, one per seed."""
        return {k: [sc["accuracy"] for sc in v] for k, v in self.test.items()}

    @property
    def snapshot_epochs(self) -> list[float]:
        """The epoch at which each scored snapshot of the first seed was taken."""
        return [(st + 1) / self.steps_per_epoch for st in self.snapshot_steps[0][:self.snapshots]]

    def test_rows(self) -> list[list[str]]:
        """``[model, test accuracy, test loss]`` rows, mean ± std over seeds."""
        acc = self.accuracy
        return [[name, mean_std(acc[name], 4), mean_std([sc["loss"] for sc in scs], 4)]
                for name, scs in self.test.items()]

    def verdicts(self) -> list[str]:
        """The ensemble against the best single snapshot (both picks), (a) and (b), in points of accuracy."""
        acc = self.accuracy
        if self.ensemble_key not in acc:
            return []
        return [f"- ensemble vs {other}: "
                f"{paired_difference(acc[self.ensemble_key], acc[other], 100, ' points', subject='ensemble')}"
                for other in (BY_VALIDATION, BY_TEST, LABELS[FIXED], LABELS[PLATEAU])]

    def bars(self) -> dict[str, list[float]]:
        """Test accuracy per seed of (a), (b), each snapshot, the best single ones and the ensemble."""
        acc, ens = self.accuracy, self.ensemble_key
        names = [LABELS[FIXED], LABELS[PLATEAU]] + [k for k in acc if k.startswith("snapshot ") and k != ens] + \
            [k for k in acc if k.startswith("best single snapshot")] + [ens]
        return {n: acc[n] for n in names if n in acc}

    def markdown(self) -> str:
        """The report: the setup, the test table with the verdicts, the validation table."""
        cfg, s, runs = self.config, self.config["sgdr"], self.runs
        reductions = [len(r.reductions) for r in runs[PLATEAU]]
        best_val = {k: [float(np.nanmin(r.val_loss)) for r in runs[k]] for k in runs}
        final_val = {k: [r.val_loss[-1] if not r.diverged else math.nan for r in runs[k]] for k in runs}
        val_rows = [[LABELS[k], mean_std(final_val[k]), mean_std(best_val[k]),
                     mean_std(reductions) if k == PLATEAU else "-"] for k in runs]
        header = (f"Task `{self.task_name}` ({cfg['task']}), training split {self.train_examples} examples after "
                  f"carving out a {cfg['val_fraction']:.0%} validation split; {cfg['epochs']} epochs of "
                  f"{self.steps_per_epoch} steps for every variant; {cfg['rule']} (momentum {cfg['momentum']}); "
                  f"(a) lr {cfg['fixed']['lr']}, (b) ReduceOnPlateau {cfg['plateau']}, (c) SGDR lr {s['lr']} -> "
                  f"{s['eta_min']}, T_0 {s['cycle_epochs']} epochs, T_mult {s['T_mult']}: {self.snapshots} "
                  f"snapshots. Seeds {list(cfg['seeds'])}; mean ± std over seeds; total {self.seconds:.0f} s.\n\n"
                  "Test split:\n\n")
        table = markdown_table(["model", "test accuracy", "test loss (NLL)"], self.test_rows())
        return (header + table + "\n" + "\n".join(self.verdicts()) + "\n\nValidation loss:\n\n" +
                markdown_table(["variant", "final validation loss", "best validation loss", "lr reductions"],
                               val_rows))

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "seconds": self.seconds, "steps_per_epoch": self.steps_per_epoch,
                "snapshots": self.snapshots, "ensemble_size": self.ensemble_size, "test": self.test,
                "verdicts": self.verdicts(),
                "runs": {k: [r.to_dict() for r in v] for k, v in self.runs.items()}}


def run_restarts(cfg: dict, progress: bool = True) -> RestartsResult:
    """Check ``cfg`` (see :data:`SCHEMA`), train the three variants on every seed and score them, the snapshots and the ensemble on the test split."""
    from tqdm.auto import tqdm
    device, task, val_task = check_config(cfg)
    started = time.perf_counter()
    seeds, epochs, eval_examples = list(cfg["seeds"]), cfg["epochs"], cfg["eval_examples"]
    spe = steps_per_epoch(val_task)
    hp = {"momentum": cfg["momentum"]}
    x_test = task.dataset.x_test.to(device, task.dtype)
    y_test = task.dataset.y_test.to(device)

    runs: dict[str, list[EpochRun]] = {FIXED: [], PLATEAU: [], SGDR: []}
    snapshots = []
    bar = tqdm(total=3 * len(seeds), desc="variants x seeds", disable=not progress)
    for seed in seeds:
        runs[FIXED].append(train_epochs(val_task, make_rule(cfg["rule"], lr=cfg["fixed"]["lr"], **hp), epochs, spe,
                                        seed, device, eval_examples=eval_examples))
        bar.update()
        plateau = ReduceOnPlateau(**cfg["plateau"])
        runs[PLATEAU].append(train_epochs(val_task, make_rule(cfg["rule"], lr=plateau, **hp), epochs, spe, seed,
                                          device, plateau=plateau, eval_examples=eval_examples))
        bar.update()
        sched = sgdr_schedule(cfg, spe)
        collector = SnapshotCollector(sched)
        runs[SGDR].append(train_epochs(val_task, make_rule(cfg["rule"], lr=sched, **hp), epochs, spe, seed, device,
                                       collector=collector, eval_examples=eval_examples))
        snapshots.append(collector.snapshots)
        bar.update()
        bar.set_postfix(seed=seed, snapshots=len(collector.snapshots))
    bar.close()

    # test scores: (a), (b), SGDR's last iterate, every snapshot, the best single, the ensemble
    test: dict[str, list[dict[str, float]]] = {}
    n_snap = min(len(sn) for sn in snapshots)
    m = ensemble_size(n_snap, cfg["ensemble"]["last"])
    for i in range(len(seeds)):
        for key in VARIANTS:
            r = runs[key][i]
            sc = scores(ensemble_probs(task, [r.params], x_test), y_test) if not r.diverged \
                else {"accuracy": math.nan, "loss": math.nan}
            test.setdefault(LABELS[key], []).append(sc)
        snaps = [p for _, p in snapshots[i][:n_snap]]
        if not snaps:
            continue
        val_losses = [val_task.metrics(p, "test", eval_examples)["loss"] for p in snaps]
        res = score_snapshots(task, snaps, x_test, y_test, val_losses, last=m)
        for j, sc in enumerate(res.singles):
            test.setdefault(f"snapshot {j + 1} (epoch {(snapshots[i][j][0] + 1) / spe:g})", []).append(sc)
        test.setdefault(BY_VALIDATION, []).append(res.best_by_validation)
        test.setdefault(BY_TEST, []).append(res.best_by_test)
        test.setdefault(ensemble_label(m, n_snap), []).append(res.ensemble)
    return RestartsResult(config=cfg, task_name=task.name, train_examples=len(val_task.dataset.y_train),
                          steps_per_epoch=spe, runs=runs, snapshot_steps=[[st for st, _ in sn] for sn in snapshots],
                          snapshots=n_snap, ensemble_size=m, test=test, seconds=time.perf_counter() - started)
