"""Cyclical learning rates (Smith 2015) against Adam and a fixed lr: the procedure behind ``experiments/clr.py``.

(a) The LR range test (:func:`~learned_opt.lecture.range_test.range_test`) of ``range_test.rule`` from
one initialisation; its suggested bounds (the upper one times ``clr.max_lr_factor``) become the CLR bounds.
(b) Three variants with the same step budget, ``clr.cycles`` whole cycles of ``2 x step_size`` steps
(``step_size`` = ``clr.epochs_per_half_cycle`` epochs' worth of steps), on every evaluation seed, each
run by :func:`~learned_opt.evaluation.suite.run_cell`:

- ``nesterov_clr``: Nesterov with ``baselines.CyclicLR`` between the bounds as its lr;
- ``adam``: Adam, its lr tuned by a log grid on the tuning seeds (:func:`~learned_opt.evaluation.suite.tune`,
  objective on a validation split of the training split), or ``adam.lr`` when ``adam.tune`` is false;
- ``nesterov_fixed``: Nesterov at the best fixed lr of a log grid (the same tuning protocol).

:func:`check_config` checks a whole config against :data:`SCHEMA` before any work; :func:`run_clr` returns a
:class:`ClrResult`, which answers "does Nesterov + CLR reach a lower loss / higher accuracy faster than
Adam?" from the numbers (:meth:`ClrResult.checks`, each one :func:`~learned_opt.evaluation.report.compare`
over seeds) and renders the report (:meth:`ClrResult.markdown`) and the JSON record
(:meth:`ClrResult.to_json`); :func:`plot_comparison` draws the runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from baselines import RULES, CyclicLR, RangeTestResult, make_rule

from ..schema import (RUN, WANDB, ConfigError, Field, boolean, check, check_call, check_lr_range, choice, delegated,
                      integer, number, optional)
from ..tasks.base import Task
from ..utils import resolve_device
from .epochs import steps_per_epoch
from ..evaluation.metrics import padded, steps_to_accuracy, steps_to_target
from .range_test import range_test
from ..evaluation.report import compare, markdown_table, mean_std, smooth
from ..evaluation.results import CellResult, loss_curves
from ..evaluation.suite import TUNING, OptimizerSpec, build_task, run_cell, tune

__all__ = ["CLR", "ADAM", "FIXED", "VARIANTS", "BANDS", "SCHEMA", "check_config", "cycle_budget", "clr_bounds",
           "clr_schedule", "adam_how", "variant_metrics", "Variant", "ClrResult", "run_clr", "plot_comparison"]

CLR, ADAM, FIXED = "nesterov_clr", "adam", "nesterov_fixed"
VARIANTS = (CLR, ADAM, FIXED)
BANDS = ("iqr", "minmax")
MOMENTUM = number(0, 1, high_open=True)

SCHEMA = {  # the fields of configs/clr.yaml
    **RUN,
    "task": Field(delegated),                 # the task's constructor (a classifier)
    "eval_every": Field(integer(1)),
    "eval_examples": Field(optional(integer(1))),
    "range_test": {
        "seed": Field(integer()),
        "rule": Field(choice(*RULES)),
        "momentum": Field(MOMENTUM),
        "min_lr": Field(number(0, low_open=True)),
        "max_lr": Field(number(0, low_open=True)),   # > min_lr: checked in check_config
        "num_steps": Field(integer(2)),
        "mode": Field(choice("exp", "linear")),
        "smooth": Field(number(0, 1, low_open=True)),
        "diverge_factor": Field(number(1, low_open=True)),
    },
    "clr": {
        "momentum": Field(MOMENTUM),
        "mode": Field(choice(*CyclicLR.MODES)),
        "gamma": Field(number(0, 1, low_open=True)),
        "epochs_per_half_cycle": Field(integer(1)),
        "cycles": Field(integer(1)),
        "max_lr_factor": Field(number(0, low_open=True)),
        "cycle_momentum": Field(boolean),
        "base_momentum": Field(MOMENTUM),
        "max_momentum": Field(MOMENTUM),
    },
    "adam": {"tune": Field(boolean), "lr": Field(number(0)), "grid": Field(check_lr_range)},
    "fixed": {"momentum": Field(MOMENTUM), "grid": Field(check_lr_range)},
    "tuning": {**TUNING, "budget": Field(integer(2))},  # a grid of at least 2 lrs
    "targets": {"test_accuracy": Field(number(0, 1, low_open=True)), "train_loss": Field(number(0, low_open=True)),
                "smooth": Field(integer(1))},
    "figure": {"smooth": Field(integer(1)), "band": Field(choice(*BANDS)), "dpi": Field(integer(1))},
    "wandb": WANDB,
}


def check_config(cfg: dict) -> tuple[torch.device, Task]:
    """Check every field before any work, then the fields against each other and the rules, the schedule
    and the task they build; returns the device and the task (a classifier)."""
    check(cfg, SCHEMA)
    seeds, rt, c = cfg["seeds"], cfg["range_test"], cfg["clr"]
    if set(seeds) & set(cfg["tuning"]["seeds"]) or rt["seed"] in seeds:
        raise ConfigError(f"tuning.seeds={cfg['tuning']['seeds']!r} and range_test.seed={rt['seed']!r} are not "
                          f"allowed; allowed: seeds disjoint from the evaluation seeds {seeds} (tune on other "
                          f"seeds than you report)")
    if not rt["max_lr"] > rt["min_lr"]:
        raise ConfigError(f"range_test.max_lr={rt['max_lr']!r} is not allowed; allowed: a number > "
                          f"range_test.min_lr={rt['min_lr']!r}")
    check_call("range_test", f"rule {rt['rule']!r}", RULES[rt["rule"]], {"momentum": rt["momentum"]},
               inject={"lr": rt["min_lr"]})
    check_call("clr", "CyclicLR", CyclicLR, {k: c[k] for k in ("mode", "gamma", "cycle_momentum", "base_momentum",
                                                               "max_momentum")},
               inject={"base_lr": 1e-3, "max_lr": 1e-2, "step_size_up": 1})
    check_call("clr", "rule 'nesterov'", RULES["nesterov"], {"momentum": c["momentum"]}, inject={"lr": 1e-3})
    check_call("adam", "rule 'adam'", RULES["adam"], {"lr": cfg["adam"]["lr"]})
    check_call("fixed", "rule 'nesterov'", RULES["nesterov"], {"momentum": cfg["fixed"]["momentum"]},
               inject={"lr": 1e-3})
    device = resolve_device(cfg["device"])
    return device, build_task("task", cfg["task"], device, classifier=True)  # it reports test accuracy


def cycle_budget(task: Task, clr_cfg: dict) -> tuple[int, int, int]:
    """``(steps_per_epoch, step_size, steps)``: a half cycle is ``epochs_per_half_cycle`` epochs of minibatches
    (the whole training split when the task has no batch size), and every variant runs ``cycles`` whole cycles."""
    spe = steps_per_epoch(task)
    step_size = clr_cfg["epochs_per_half_cycle"] * spe
    return spe, step_size, clr_cfg["cycles"] * 2 * step_size


def clr_bounds(res: RangeTestResult, cfg: dict) -> tuple[float, float]:
    """The CLR bounds from a range test: its suggested min lr, and its suggested max lr times
    ``clr.max_lr_factor``; a ``RuntimeError`` when they are not ordered (the loss did not fall)."""
    rt, factor = cfg["range_test"], cfg["clr"]["max_lr_factor"]
    base_lr, max_lr = res.suggested_min_lr, res.suggested_max_lr * factor
    if not base_lr < max_lr:
        raise RuntimeError(f"the range test suggests min lr {base_lr:.3g} >= max lr {max_lr:.3g}: the loss did not "
                           f"fall over [{rt['min_lr']}, {rt['max_lr']}]; widen range_test.min_lr/max_lr or add "
                           f"range_test.num_steps (clr.max_lr_factor={factor})")
    return base_lr, max_lr


def clr_schedule(clr_cfg: dict, bounds: tuple[float, float], step_size: int) -> CyclicLR:
    """A fresh ``CyclicLR`` between ``bounds`` with the config's mode and momentum cycling."""
    c = clr_cfg
    return CyclicLR(bounds[0], bounds[1], step_size, mode=c["mode"], gamma=c["gamma"],
                    cycle_momentum=c["cycle_momentum"], base_momentum=c["base_momentum"],
                    max_momentum=c["max_momentum"])


def adam_how(cfg: dict) -> str:
    """How Adam's lr was chosen: ``tuned`` (a grid search) or ``default`` (``adam.lr`` as given)."""
    return "tuned" if cfg["adam"]["tune"] else "default"


def variant_metrics(cells: Sequence[CellResult], targets: dict) -> dict[str, Any]:
    """Per seed: the final train loss (whole training split) and test accuracy (NaN when diverged), the
    steps to ``targets["test_accuracy"]`` (at the periodic evaluations) and to ``targets["train_loss"]``
    (trailing mean of ``targets["smooth"]`` minibatch losses; inf when never); and how many seeds diverged."""
    return {"final_train_loss": [c.final("train_loss") for c in cells],
            "test_accuracy": [c.final("test_accuracy") for c in cells],
            "steps_to_accuracy": [steps_to_accuracy(c.evals, targets["test_accuracy"]) for c in cells],
            "steps_to_loss": [steps_to_target(c.train_loss, targets["train_loss"], smooth=targets["smooth"])
                              for c in cells],
            "diverged": sum(bool(c.diverged) for c in cells)}


@dataclass
class Variant:
    """One variant's runs (a cell per evaluation seed) and their :func:`variant_metrics`."""
    label: str
    cells: list[CellResult]
    metrics: dict[str, Any]


@dataclass
class ClrResult:
    """What :func:`run_clr` measured: the range test and the CLR ``bounds`` it gave, the tuning records
    (``tuned["fixed"]``, ``tuned["adam"]`` when Adam was tuned), the lrs used and the three variants."""
    config: dict[str, Any]
    task_name: str
    device: str
    steps_per_epoch: int
    step_size: int
    steps: int
    range_test: RangeTestResult
    bounds: tuple[float, float]
    tuned: dict[str, dict]
    adam_lr: float
    fixed_lr: float
    variants: dict[str, Variant]
    seconds: float

    @property
    def adam_how(self) -> str:
        return adam_how(self.config)

    def schedule(self) -> CyclicLR:
        """The CLR variant's schedule."""
        return clr_schedule(self.config["clr"], self.bounds, self.step_size)

    def checks(self) -> dict[str, tuple[str, str]]:
        """CLR against Adam on the four measures: ``(yes/no/tie, detail)`` each."""
        tg, a, b = self.config["targets"], self.variants[CLR].metrics, self.variants[ADAM].metrics
        return {
            "lower final train loss": compare(a["final_train_loss"], b["final_train_loss"], lower_is_better=True),
            "higher test accuracy": compare(a["test_accuracy"], b["test_accuracy"], lower_is_better=False),
            f"fewer steps to {tg['test_accuracy']:g} test accuracy": compare(a["steps_to_accuracy"],
                                                                             b["steps_to_accuracy"], True),
            f"fewer steps to train loss {tg['train_loss']:g}": compare(a["steps_to_loss"], b["steps_to_loss"], True),
        }

    def overall(self) -> str:
        """``yes`` when CLR wins every check, ``no`` when none, else ``partly (k of n)``."""
        checks = self.checks()
        yes = sum(v[0] == "yes" for v in checks.values())
        return "yes" if yes == len(checks) else "no" if yes == 0 else f"partly ({yes} of {len(checks)})"

    def answer(self) -> str:
        return (f"Does Nesterov + CLR reach a lower loss / higher accuracy faster than Adam ({self.adam_how} lr) "
                f"here? **{self.overall()}**: " + "; ".join(f"{k}: {v[0]} ({v[1]})" for k, v in self.checks().items())
                + ".")

    def rows(self) -> list[list[Any]]:
        """``[variant, final train loss, test accuracy, steps to accuracy, steps to loss, diverged seeds]``,
        mean ± std over seeds."""
        rows = []
        for v in self.variants.values():
            m = v.metrics
            rows.append([v.label, mean_std(m["final_train_loss"]), mean_std(m["test_accuracy"], 3),
                         mean_std(m["steps_to_accuracy"], 3), mean_std(m["steps_to_loss"], 3), m["diverged"]])
        return rows

    def markdown(self) -> str:
        """The report: the setup, the answer, the table."""
        cfg, res = self.config, self.range_test
        c, rt, tg, tcfg = cfg["clr"], cfg["range_test"], cfg["targets"], cfg["tuning"]
        adam_source = (f"tuned by a log grid of {tcfg['budget']} over {cfg['adam']['grid']}"
                       if cfg["adam"]["tune"] else "its default")
        header = (f"Smith (2015) in small: `{self.task_name}` ({dict(cfg['task'])}), {self.steps} steps per run for "
                  f"every variant ({c['cycles']} CLR cycles of 2 x {self.step_size} steps; {self.steps_per_epoch} "
                  f"steps per epoch), evaluation seeds {list(cfg['seeds'])}, device {self.device}; total "
                  f"{self.seconds:.0f} s. LR range test ({rt['rule']}, {len(res.lrs)} steps from {rt['min_lr']:g} "
                  f"to {rt['max_lr']:g}): suggested bounds [{res.suggested_min_lr:.3g}, {res.suggested_max_lr:.3g}]; "
                  f"CLR uses [{self.bounds[0]:.3g}, {self.bounds[1]:.3g}]. Adam's lr: {adam_source} = "
                  f"{self.adam_lr:.3g}; Nesterov's fixed lr: best of a log grid of {tcfg['budget']} over "
                  f"{cfg['fixed']['grid']} = {self.fixed_lr:.3g} (tuning on seeds {tcfg['seeds']}, objective "
                  f"`{tcfg['objective']}` on a {tcfg['val_fraction']:.0%} validation split of the training split). "
                  f"Cells: mean ± std over seeds; final train loss on the whole training split; steps to accuracy "
                  f"counted at evaluations every {cfg['eval_every']} steps; steps to loss on the trailing mean of "
                  f"{tg['smooth']} minibatch losses.\n\n{self.answer()}\n\n")
        return header + markdown_table(["variant", "final train loss", "test accuracy",
                                        f"steps to {tg['test_accuracy']:g} test accuracy",
                                        f"steps to train loss {tg['train_loss']:g}", "diverged seeds"], self.rows())

    def median_history(self) -> tuple[dict[str, list], dict[str, list[int]]]:
        """``(curves, x)`` for :meth:`~learned_opt.runlog.RunLogger.log_medians`: each variant's training
        loss per step and test accuracy per evaluation (``{variant}/train_loss_median``,
        ``{variant}/test_accuracy_median``, at the evaluation steps in ``x``) and the CLR lr per step."""
        sched = self.schedule()
        curves: dict[str, list] = {f"{k}/train_loss_median": [c.train_loss for c in v.cells]
                                   for k, v in self.variants.items()}
        curves[f"{CLR}/lr"] = [[sched(s) for s in range(self.steps)]]
        x = {}
        for k, v in self.variants.items():
            series = [c.eval_series("test_accuracy") for c in v.cells]
            curves[f"{k}/test_accuracy_median"] = [vals for _, vals in series]
            x[f"{k}/test_accuracy_median"] = max((steps for steps, _ in series), key=len)
        return curves, x

    def to_json(self) -> dict[str, Any]:
        res = self.range_test
        return {"config": self.config, "seconds": self.seconds, "steps": self.steps, "step_size": self.step_size,
                "steps_per_epoch": self.steps_per_epoch, "answer": self.answer(), "checks": self.checks(),
                "range_test": {"lrs": res.lrs, "losses": res.losses, "smoothed": res.smoothed,
                               "suggested_min_lr": res.suggested_min_lr, "suggested_max_lr": res.suggested_max_lr,
                               "diverged_at": res.diverged_at, "clr_bounds": list(self.bounds)},
                "tuning": self.tuned, "adam_lr": self.adam_lr, "fixed_lr": self.fixed_lr,
                "variants": {k: {"label": v.label, **v.metrics} for k, v in self.variants.items()}}


def run_clr(cfg: dict, tuning_dir: str | Path | None = None, progress: bool = True) -> ClrResult:
    """Check ``cfg`` (see :data:`SCHEMA`), run the range test, tune the fixed lr and Adam's lr (tuning records cached in ``tuning_dir`` when given)
    and run the three variants on every evaluation seed."""
    from tqdm.auto import tqdm
    device, task = check_config(cfg)
    started = time.perf_counter()
    seeds, c = list(cfg["seeds"]), cfg["clr"]
    steps_per_epoch, step_size, steps = cycle_budget(task, c)

    rt = cfg["range_test"]
    res = range_test(task, rt["rule"], {"momentum": rt["momentum"]}, rt["seed"], device, progress=progress,
                     min_lr=rt["min_lr"], max_lr=rt["max_lr"], num_steps=rt["num_steps"], mode=rt["mode"],
                     smooth=rt["smooth"], diverge_factor=rt["diverge_factor"])
    bounds = clr_bounds(res, cfg)

    jobs = {"fixed": OptimizerSpec(FIXED, rule="nesterov", hparams={"momentum": cfg["fixed"]["momentum"]},
                                   tune={"lr": cfg["fixed"]["grid"]})}
    if cfg["adam"]["tune"]:
        jobs["adam"] = OptimizerSpec(ADAM, rule="adam", hparams={}, tune={"lr": cfg["adam"]["grid"]})
    if tuning_dir is not None:
        Path(tuning_dir).mkdir(parents=True, exist_ok=True)
    tuned = {key: tune(spec, dict(cfg["task"]), {"steps": steps, "tuning": cfg["tuning"]}, device,
                       cache=None if tuning_dir is None else Path(tuning_dir) / f"{spec.label}.json")
             for key, spec in tqdm(jobs.items(), desc="tuning lrs (grid x tuning seeds)", disable=not progress)}
    adam_lr = tuned["adam"]["best"]["lr"] if cfg["adam"]["tune"] else cfg["adam"]["lr"]
    fixed_lr = tuned["fixed"]["best"]["lr"]

    def clr_rule():
        sched = clr_schedule(c, bounds, step_size)
        return make_rule("nesterov", lr=sched, momentum=sched.momentum if c["cycle_momentum"] else c["momentum"])

    how = adam_how(cfg)
    builds: dict[str, tuple[str, Callable]] = {
        CLR: (f"Nesterov + {c['mode']} CLR [{bounds[0]:.2g}, {bounds[1]:.2g}]", clr_rule),
        ADAM: (f"Adam ({how} lr={adam_lr:.2g})", lambda: make_rule("adam", lr=adam_lr)),
        FIXED: (f"Nesterov, best fixed lr={fixed_lr:.2g}",
                lambda: make_rule("nesterov", lr=fixed_lr, momentum=cfg["fixed"]["momentum"])),
    }
    variants = {}
    bar = tqdm(total=len(builds) * len(seeds), desc="variants x seeds", disable=not progress)
    for key, (label, build) in builds.items():
        cells = []
        for seed in seeds:
            cells.append(run_cell(task, build(), seed, steps, device, eval_every=cfg["eval_every"],
                                  eval_examples=cfg["eval_examples"]))
            bar.update()
            bar.set_postfix(variant=key, acc=f"{cells[-1].final('test_accuracy'):.3f}")
        variants[key] = Variant(label, cells, variant_metrics(cells, cfg["targets"]))
    bar.close()
    return ClrResult(config=cfg, task_name=task.name, device=str(device), steps_per_epoch=steps_per_epoch,
                     step_size=step_size, steps=steps, range_test=res, bounds=bounds, tuned=tuned, adam_lr=adam_lr,
                     fixed_lr=fixed_lr, variants=variants, seconds=time.perf_counter() - started)


def plot_comparison(result: ClrResult, path: str | Path, title: str) -> Path:
    """Training loss (trailing mean of ``figure.smooth``) and test accuracy against steps, median and a
    ``figure.band`` band over seeds, the target accuracy dotted; the lr schedules in a panel below with the
    CLR bounds; the CLR cycle ends dotted in every panel. Saved to ``path``."""
    import matplotlib.pyplot as plt

    from ..evaluation.plots import plot_curves, save_figure
    fcfg, steps, variants = result.config["figure"], result.steps, result.variants
    fig = plt.figure(figsize=(13, 7.8), dpi=fcfg["dpi"])
    gs = fig.add_gridspec(2, 2, height_ratios=[3, 1.25])
    ax_loss, ax_acc, ax_lr = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, :])
    w, band = fcfg["smooth"], fcfg["band"]
    losses = {v.label: np.stack([smooth(row, w) for row in loss_curves(v.cells, steps)]) for v in variants.values()}
    plot_curves(losses, None, ax=ax_loss, band=band, logy=True, title="Training loss",
                xlabel="step (updates)", ylabel=f"training loss (cross-entropy, minibatch; trailing mean of {w})")
    eval_steps = next(iter(variants.values())).cells[0].eval_series("test_accuracy")[0]
    accs = {v.label: padded([c.eval_series("test_accuracy")[1] for c in v.cells], len(eval_steps))
            for v in variants.values()}
    plot_curves(accs, None, ax=ax_acc, x=eval_steps, band=band, logy=False, title="Test accuracy",
                xlabel="step (updates)", ylabel="test accuracy (fraction correct)")
    target = result.config["targets"]["test_accuracy"]
    ax_acc.axhline(target, color="k", lw=0.8, ls=":", label=f"target {target:g}")
    with np.errstate(all="ignore"):
        late = [np.nanmedian(a[:, len(eval_steps) // 4:]) for a in accs.values() if np.isfinite(a).any()]
    if late:
        ax_acc.set_ylim(max(0.0, min(min(late), target) - 0.05), 1.0)
    ax_acc.legend(fontsize=8)
    sched = result.schedule()
    schedules = {variants[CLR].label: [sched(s) for s in range(steps)], variants[ADAM].label: [result.adam_lr] * steps,
                 variants[FIXED].label: [result.fixed_lr] * steps}
    xs = np.arange(steps)
    for i, (label, lrs) in enumerate(schedules.items()):
        ax_lr.plot(xs + 1, lrs, color=f"C{i}", lw=1.4, label=label)
    ax_lr.axhline(result.bounds[0], color="grey", lw=0.8, ls="--")
    ax_lr.axhline(result.bounds[1], color="grey", lw=0.8, ls="--", label="CLR bounds (range test)")
    ax_lr.set_yscale("log")
    ax_lr.set_xlabel("step (updates)")
    ax_lr.set_ylabel("learning rate (log)")
    ax_lr.set_title("Learning-rate schedules (Adam's is its base lr; its per-coordinate step differs)")
    ax_lr.grid(True, which="both", alpha=0.3)
    ax_lr.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    for ax in (ax_loss, ax_acc, ax_lr):
        for e in sched.cycle_ends(steps):
            ax.axvline(e + 1, color="C0", lw=0.6, ls=":", alpha=0.6)
    fig.suptitle(title)
    return save_figure(fig, path)
