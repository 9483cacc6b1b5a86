"""Smith (2015), cyclical learning rates, in small: the LR range test, then Nesterov + triangular CLR vs Adam.

    python experiments/clr.py                                    # MLP on mnist5k, configs/clr.yaml
    python experiments/clr.py task.dataset=digits clr.cycles=4
    python experiments/clr.py task.name=conv '~task.hidden_sizes' '~task.activation' '+task.channels=[16,32]'

(a) The LR range test (``baselines.lr_range_test``): from one initialisation, one training step per lr
while the lr grows geometrically; each step is ``unroll(..., steps=1)`` with a rule at that lr,
params and state carried from call to call. Its suggested bounds become the CLR bounds.
(b) Three variants with the same step budget (``clr.cycles`` whole cycles), several seeds:
Nesterov + triangular CLR (``step_size`` = ``clr.epochs_per_half_cycle`` epochs' worth of steps),
Adam (lr tuned by a small log grid on tuning seeds, or its default 1e-3: ``adam.tune``), and
Nesterov at the best fixed lr of a log grid (same tuning protocol). Every run goes through
``unroll`` (``learned_opt.evaluation.suite.run_cell``).

Writes to the run directory: ``range_test.png`` (loss vs lr, log x, raw and smoothed, suggested
bounds marked), ``clr.png`` (training loss and test accuracy vs steps with seed bands; the lr
schedules in a small panel), ``table.md`` (final train loss, test accuracy, steps to reach the
target accuracy and loss; mean ± std over seeds; and the answer to "does Nesterov + CLR reach a lower
loss / higher accuracy faster than Adam here?", computed from the numbers), ``results.json``,
``tuning/``, ``metrics.jsonl`` and an offline W&B run.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import hydra
import matplotlib
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from baselines import RULES, CyclicLR, RangeTestResult, lr_range_test, make_rule
from learned_opt.evaluation import metrics as M
from learned_opt.evaluation.plots import plot_curves, save_figure
from learned_opt.evaluation.suite import TUNING_METHODS, TUNING_OBJECTIVES, OptimizerSpec, run_cell, tune
from learned_opt.evaluation.tables import markdown_table
from learned_opt.runlog import RunLogger, check_wandb_config
from learned_opt.tasks import make_task
from learned_opt.tasks.base import Task
from learned_opt.unroll import unroll
from learned_opt.utils import atomic_write_text, check_int, check_run_config, generator

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CLR, ADAM, FIXED = "nesterov_clr", "adam", "nesterov_fixed"
BANDS = ("iqr", "minmax")


# --------------------------------------------------------------------------- config
def _num(name: str, value, low: float = 0.0, high: float = math.inf, high_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
        value > low and (value < high if high_open else value <= high)
    if not ok:
        raise ValueError(f"{name}={value!r} must be a number in ({low}, {high}{')' if high_open else ']'}")
    return float(value)


def _lr_range(name: str, value) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not 0 < value[0] < value[1]:
        raise ValueError(f"{name}={value!r} must be [low, high] with 0 < low < high (a log grid between them)")
    return [float(v) for v in value]


def check_config(cfg: dict) -> tuple[torch.device, Task]:
    """Validate every field before any work; returns the device and the built task."""
    device = check_run_config(cfg)
    seeds = cfg["seeds"]
    tcfg = cfg["tuning"]
    if set(seeds) & set(tcfg["seeds"]) or cfg["range_test"]["seed"] in seeds:
        raise ValueError(f"tuning.seeds {tcfg['seeds']} and range_test.seed {cfg['range_test']['seed']} must not "
                         f"overlap the evaluation seeds {seeds}: tune on other seeds than you report")
    if tcfg["method"] not in TUNING_METHODS:
        raise ValueError(f"tuning.method={tcfg['method']!r} is not allowed; allowed: {', '.join(TUNING_METHODS)}")
    if tcfg["objective"] not in TUNING_OBJECTIVES:
        raise ValueError(f"tuning.objective={tcfg['objective']!r} is not allowed; "
                         f"allowed: {', '.join(TUNING_OBJECTIVES)}")
    check_int("tuning.budget", tcfg["budget"], 2)
    _num("tuning.val_fraction", tcfg["val_fraction"], 0.0, 1.0, high_open=True)
    if not tcfg["seeds"]:
        raise ValueError("tuning.seeds is empty: give at least one tuning seed")
    check_int("eval_every", cfg["eval_every"])
    if cfg["eval_examples"] is not None:
        check_int("eval_examples", cfg["eval_examples"])
    rt = cfg["range_test"]
    if rt["rule"] not in RULES:
        raise ValueError(f"range_test.rule: unknown optimizer {rt['rule']!r}; allowed: {', '.join(RULES)}")
    _num("range_test.min_lr", rt["min_lr"])
    if not rt["max_lr"] > rt["min_lr"]:
        raise ValueError(f"range_test.max_lr={rt['max_lr']!r} must exceed range_test.min_lr={rt['min_lr']!r}")
    check_int("range_test.num_steps", rt["num_steps"], 2)
    if rt["mode"] not in ("exp", "linear"):
        raise ValueError(f"range_test.mode={rt['mode']!r} is not allowed; allowed: exp, linear")
    _num("range_test.smooth", rt["smooth"], 0.0, 1.0)
    _num("range_test.diverge_factor", rt["diverge_factor"], 1.0)
    make_rule(rt["rule"], lr=rt["min_lr"], momentum=rt["momentum"])
    c = cfg["clr"]
    check_int("clr.epochs_per_half_cycle", c["epochs_per_half_cycle"])
    check_int("clr.cycles", c["cycles"])
    _num("clr.max_lr_factor", c["max_lr_factor"])
    CyclicLR(1e-3, 1e-2, 1, mode=c["mode"], gamma=c["gamma"], cycle_momentum=c["cycle_momentum"],
             base_momentum=c["base_momentum"], max_momentum=c["max_momentum"])  # raises on bad values
    make_rule("nesterov", lr=1e-3, momentum=c["momentum"])
    if not isinstance(cfg["adam"]["tune"], bool):
        raise ValueError(f"adam.tune={cfg['adam']['tune']!r} must be true or false")
    make_rule("adam", lr=cfg["adam"]["lr"])
    _lr_range("adam.grid", cfg["adam"]["grid"])
    _lr_range("fixed.grid", cfg["fixed"]["grid"])
    make_rule("nesterov", lr=1e-3, momentum=cfg["fixed"]["momentum"])
    _num("targets.test_accuracy", cfg["targets"]["test_accuracy"], 0.0, 1.0)
    _num("targets.train_loss", cfg["targets"]["train_loss"])
    check_int("targets.smooth", cfg["targets"]["smooth"])
    check_int("figure.smooth", cfg["figure"]["smooth"])
    check_int("figure.dpi", cfg["figure"]["dpi"])
    if cfg["figure"]["band"] not in BANDS:
        raise ValueError(f"figure.band={cfg['figure']['band']!r} is not allowed; allowed: {', '.join(BANDS)}")
    check_wandb_config(cfg["wandb"])
    task = make_task(**cfg["task"], device=device)
    if not task.is_classifier:
        raise ValueError(f"task.name={cfg['task']['name']!r} must be a classifier (mlp, logreg, conv): "
                         f"the comparison reports test accuracy")
    return device, task


# --------------------------------------------------------------------------- (a) range test
def range_test(task: Task, rule: str, hparams: dict, seed: int, device: torch.device, progress: bool = True,
               **test_kwargs) -> RangeTestResult:
    """Smith's LR range test on ``task``: each ``train_step(lr)`` is one ``unroll`` step at that lr.

    Params and the rule's state (e.g. the momentum buffer) carry over from one call to the next, so
    the test is one training run whose lr grows. A non-finite loss ends it (reported as divergence).
    """
    g = generator(seed, device)
    carry = {"params": task.init_params(g), "state": None}
    bar = tqdm(total=test_kwargs.get("num_steps", 100), desc="LR range test", disable=not progress, leave=False)

    def train_step(lr: float) -> float:
        r = make_rule(rule, lr=lr, **hparams)
        if carry["state"] is None:
            carry["state"] = r.init(carry["params"])
        res = unroll(task, r, carry["params"], carry["state"], 1, g)
        bar.update()
        if res.diverged:
            return math.nan
        carry["params"], carry["state"] = res.params, res.state
        return float(res.losses[0])

    try:
        return lr_range_test(train_step, **test_kwargs)
    finally:
        bar.close()


# --------------------------------------------------------------------------- metrics
def steps_to_accuracy(evals: list[dict], target: float) -> float:
    """Updates done at the first evaluation whose test accuracy reaches ``target``; inf if none."""
    hits = [e["step"] for e in evals if e.get("test_accuracy", -1.0) >= target]
    return float(hits[0]) if hits else math.inf


def fmt(values: list[float], digits: int = 4) -> str:
    """``mean ± std`` of the finite values, saying how many seeds did not get there (inf) or diverged (NaN)."""
    arr = np.asarray(values, dtype=float)
    ok = arr[np.isfinite(arr)]
    notes = []
    if np.isinf(arr).sum():
        notes.append(f"{int(np.isinf(arr).sum())}/{arr.size} not reached")
    if np.isnan(arr).sum():
        notes.append(f"{int(np.isnan(arr).sum())}/{arr.size} diverged")
    if ok.size == 0:
        return "; ".join(notes) or "-"
    s = f"{ok.mean():.{digits}g} ± {ok.std(ddof=1) if ok.size > 1 else 0.0:.2g}"
    return f"{s} ({'; '.join(notes)})" if notes else s


def compare(a: list[float], b: list[float], lower_is_better: bool) -> tuple[str, str]:
    """(``yes``/``no``/``tie``, detail) for "is a better than b", with unreached/diverged seeds as worst."""
    def key(vals):
        arr = np.asarray(vals, dtype=float)
        arr = np.where(np.isnan(arr), np.inf if lower_is_better else -np.inf, arr)
        bad = int((~np.isfinite(arr)).sum())
        fin = arr[np.isfinite(arr)]
        return bad, (float(fin.mean()) if fin.size else math.nan), (float(fin.std(ddof=1)) if fin.size > 1 else 0.0)
    (bad_a, ma, sa), (bad_b, mb, sb) = key(a), key(b)
    if bad_a != bad_b:  # fewer seeds that failed wins
        detail = f"{len(a) - bad_a}/{len(a)} vs {len(b) - bad_b}/{len(b)} seeds got there"
        return ("yes" if bad_a < bad_b else "no"), detail
    if math.isnan(ma) or math.isnan(mb):
        return "tie", "neither got there"
    if ma == mb:
        return "tie", f"{ma:.4g} vs {mb:.4g}"
    better = (ma < mb) if lower_is_better else (ma > mb)
    noise = " (within seed noise: difference < 1 pooled std)" if abs(ma - mb) < math.sqrt((sa ** 2 + sb ** 2) / 2) \
        else ""
    return ("yes" if better else "no"), f"{ma:.4g} vs {mb:.4g}{noise}"


def smooth(row: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` steps (expanding at the start); a NaN tail stays NaN."""
    row = np.asarray(row, dtype=float)
    out = np.full_like(row, np.nan)
    n = int(np.isfinite(row).cumprod().sum())
    if n:
        c = np.concatenate([[0.0], np.cumsum(row[:n])])
        idx = np.arange(1, n + 1)
        lo = np.maximum(idx - window, 0)
        out[:n] = (c[idx] - c[lo]) / (idx - lo)
    return out


# --------------------------------------------------------------------------- figures
def plot_range_test(res: RangeTestResult, base_lr: float, max_lr: float, path: Path, title: str, dpi: int) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=dpi)
    ax.plot(res.lrs, res.losses, lw=0.8, alpha=0.45, color="C0", label="training loss (minibatch)")
    ax.plot(res.lrs, res.smoothed, lw=2, color="C0", label="smoothed (bias-corrected EMA)")
    ax.axvspan(res.suggested_min_lr, res.suggested_max_lr, color="C2", alpha=0.08)
    ax.axvline(res.suggested_min_lr, color="C2", ls="--", label=f"suggested min lr = {res.suggested_min_lr:.3g}")
    ax.axvline(res.suggested_max_lr, color="C3", ls="--", label=f"suggested max lr = {res.suggested_max_lr:.3g}")
    if max_lr != res.suggested_max_lr:
        ax.axvline(max_lr, color="C3", ls=":", label=f"CLR max lr used = {max_lr:.3g}")
    if res.diverged_at is not None:
        ax.plot([res.lrs[-1]], [res.smoothed[-1]], "kx", ms=9,
                label=f"stopped (diverging) at lr = {res.diverged_at:.3g}")
    ax.set_xscale("log")
    finite = [v for v in res.losses if math.isfinite(v)]
    top = min(max(finite), 2.0 * max(res.smoothed[0], min(res.smoothed)))
    ax.set_ylim(0.0, top * 1.05)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return save_figure(fig, path)


def plot_comparison(runs: dict, steps: int, schedules: dict, cycle_ends: list[int], bounds: tuple[float, float],
                    cfg: dict, path: Path, title: str) -> Path:
    fig = plt.figure(figsize=(13, 7.8), dpi=cfg["figure"]["dpi"])
    gs = fig.add_gridspec(2, 2, height_ratios=[3, 1.25])
    ax_loss, ax_acc, ax_lr = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, :])
    w, band = cfg["figure"]["smooth"], cfg["figure"]["band"]
    losses = {r["label"]: np.stack([smooth(c["train_loss"] + [np.nan] * (steps - len(c["train_loss"])), w)
                                    for c in r["cells"]]) for r in runs.values()}
    plot_curves(losses, None, ax=ax_loss, band=band, logy=True, title="Training loss",
                xlabel="step (updates)", ylabel=f"training loss (cross-entropy, minibatch; trailing mean of {w})")
    eval_steps = [e["step"] for e in next(iter(runs.values()))["cells"][0]["evals"]]
    accs = {}
    for r in runs.values():
        accs[r["label"]] = M.padded([[e["test_accuracy"] for e in c["evals"]] for c in r["cells"]], len(eval_steps))
    plot_curves(accs, None, ax=ax_acc, x=eval_steps, band=band, logy=False, title="Test accuracy",
                xlabel="step (updates)", ylabel="test accuracy (fraction correct)")
    target = cfg["targets"]["test_accuracy"]
    ax_acc.axhline(target, color="k", lw=0.8, ls=":", label=f"target {target:g}")
    with np.errstate(all="ignore"):
        late = [np.nanmedian(a[:, len(eval_steps) // 4:]) for a in accs.values() if np.isfinite(a).any()]
    if late:
        ax_acc.set_ylim(max(0.0, min(min(late), target) - 0.05), 1.0)
    ax_acc.legend(fontsize=8)
    xs = np.arange(steps)
    for i, (label, lrs) in enumerate(schedules.items()):
        ax_lr.plot(xs + 1, lrs, color=f"C{i}", lw=1.4, label=label)
    ax_lr.axhline(bounds[0], color="grey", lw=0.8, ls="--")
    ax_lr.axhline(bounds[1], color="grey", lw=0.8, ls="--", label="CLR bounds (range test)")
    ax_lr.set_yscale("log")
    ax_lr.set_xlabel("step (updates)")
    ax_lr.set_ylabel("learning rate (log)")
    ax_lr.set_title("Learning-rate schedules (Adam's is its base lr; its per-coordinate step differs)")
    ax_lr.grid(True, which="both", alpha=0.3)
    ax_lr.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    for ax in (ax_loss, ax_acc, ax_lr):
        for e in cycle_ends:
            ax.axvline(e + 1, color="C0", lw=0.6, ls=":", alpha=0.6)
    fig.suptitle(title)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- main
@hydra.main(config_path="../configs", config_name="clr", version_base="1.3")
def main(hcfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    cfg = OmegaConf.to_container(hcfg, resolve=True)
    device, task = check_config(cfg)
    if cfg["threads"] is not None:
        torch.set_num_threads(cfg["threads"])
    started = time.perf_counter()
    seeds = list(cfg["seeds"])
    task_spec = dict(cfg["task"])
    batch = task.batch_size or len(task.dataset.y_train)
    steps_per_epoch = math.ceil(len(task.dataset.y_train) / batch)
    c = cfg["clr"]
    step_size = c["epochs_per_half_cycle"] * steps_per_epoch
    steps = c["cycles"] * 2 * step_size
    logger = RunLogger(run_dir, cfg["wandb"], name=f"clr-{task.name}", group="clr", job_type="clr",
                       tags=[CLR, ADAM, FIXED], config=cfg)

    # (a) the LR range test
    rt = cfg["range_test"]
    res = range_test(task, rt["rule"], {"momentum": rt["momentum"]}, rt["seed"], device, min_lr=rt["min_lr"],
                     max_lr=rt["max_lr"], num_steps=rt["num_steps"], mode=rt["mode"], smooth=rt["smooth"],
                     diverge_factor=rt["diverge_factor"])
    base_lr, max_lr = res.suggested_min_lr, res.suggested_max_lr * c["max_lr_factor"]
    if not base_lr < max_lr:
        raise RuntimeError(f"the range test suggests min lr {base_lr:.3g} >= max lr {max_lr:.3g}: the loss did not "
                           f"fall over [{rt['min_lr']}, {rt['max_lr']}]; widen range_test.min_lr/max_lr or add "
                           f"range_test.num_steps (clr.max_lr_factor={c['max_lr_factor']})")
    plot_range_test(res, base_lr, max_lr, run_dir / "range_test.png", dpi=cfg["figure"]["dpi"],
                    title=f"LR range test: {rt['rule']} (momentum {rt['momentum']}) on {task.name}, "
                          f"{len(res.lrs)} steps")

    # (b) tune Adam's lr and the fixed lr on tuning seeds (validation split), then run every variant
    tune_cfg = {"steps": steps, "tuning": cfg["tuning"]}
    (run_dir / "tuning").mkdir(exist_ok=True)
    tuned = {}
    jobs = [("fixed", OptimizerSpec("nesterov_fixed", rule="nesterov", hparams={"momentum": cfg["fixed"]["momentum"]},
                                    tune={"lr": cfg["fixed"]["grid"]}))]
    if cfg["adam"]["tune"]:
        jobs.append(("adam", OptimizerSpec("adam", rule="adam", hparams={}, tune={"lr": cfg["adam"]["grid"]})))
    for key, spec in tqdm(jobs, desc="tuning lrs (grid x tuning seeds)"):
        tuned[key] = tune(spec, task_spec, tune_cfg, device, cache=run_dir / "tuning" / f"{spec.label}.json")
    adam_lr = tuned["adam"]["best"]["lr"] if cfg["adam"]["tune"] else cfg["adam"]["lr"]
    fixed_lr = tuned["fixed"]["best"]["lr"]

    def clr_schedule() -> CyclicLR:
        return CyclicLR(base_lr, max_lr, step_size, mode=c["mode"], gamma=c["gamma"],
                        cycle_momentum=c["cycle_momentum"], base_momentum=c["base_momentum"],
                        max_momentum=c["max_momentum"])

    def clr_rule():
        sched = clr_schedule()
        return make_rule("nesterov", lr=sched, momentum=sched.momentum if c["cycle_momentum"] else c["momentum"])

    adam_how = "tuned" if cfg["adam"]["tune"] else "default"
    variants = {
        CLR: (f"Nesterov + {c['mode']} CLR [{base_lr:.2g}, {max_lr:.2g}]", clr_rule),
        ADAM: (f"Adam ({adam_how} lr={adam_lr:.2g})", lambda: make_rule("adam", lr=adam_lr)),
        FIXED: (f"Nesterov, best fixed lr={fixed_lr:.2g}",
                lambda: make_rule("nesterov", lr=fixed_lr, momentum=cfg["fixed"]["momentum"])),
    }
    runs = {}
    bar = tqdm(total=len(variants) * len(seeds), desc="variants x seeds")
    for key, (label, build) in variants.items():
        cells = []
        for seed in seeds:
            cells.append(run_cell(task, build(), seed, steps, device, eval_every=cfg["eval_every"],
                                  eval_examples=cfg["eval_examples"]))
            bar.update()
            bar.set_postfix(variant=key, acc=f"{cells[-1].get('final_test_accuracy', math.nan):.3f}")
        tg = cfg["targets"]
        runs[key] = {"label": label, "cells": cells, "metrics": {
            "final_train_loss": [cl.get("final_train_loss_full", math.nan) for cl in cells],
            "test_accuracy": [cl.get("final_test_accuracy", math.nan) for cl in cells],
            "steps_to_accuracy": [steps_to_accuracy(cl["evals"], tg["test_accuracy"]) for cl in cells],
            "steps_to_loss": [M.steps_to_target(cl["train_loss"], tg["train_loss"], smooth=tg["smooth"])
                              for cl in cells],
            "diverged": sum(bool(cl["diverged"]) for cl in cells)}}
    bar.close()
    seconds = time.perf_counter() - started

    # the answer, from the numbers
    tg = cfg["targets"]
    a, b = runs[CLR]["metrics"], runs[ADAM]["metrics"]
    checks = {
        "lower final train loss": compare(a["final_train_loss"], b["final_train_loss"], lower_is_better=True),
        "higher test accuracy": compare(a["test_accuracy"], b["test_accuracy"], lower_is_better=False),
        f"fewer steps to {tg['test_accuracy']:g} test accuracy": compare(a["steps_to_accuracy"],
                                                                         b["steps_to_accuracy"], True),
        f"fewer steps to train loss {tg['train_loss']:g}": compare(a["steps_to_loss"], b["steps_to_loss"], True),
    }
    yes = sum(v[0] == "yes" for v in checks.values())
    overall = "yes" if yes == len(checks) else "no" if yes == 0 else f"partly ({yes} of {len(checks)})"
    answer = (f"Does Nesterov + CLR reach a lower loss / higher accuracy faster than Adam ({adam_how} lr) here? "
              f"**{overall}**: " + "; ".join(f"{k}: {v[0]} ({v[1]})" for k, v in checks.items()) + ".")

    adam_source = (f"tuned by a log grid of {cfg['tuning']['budget']} over {cfg['adam']['grid']}"
                   if cfg["adam"]["tune"] else "its default")
    rows = []
    for key, r in runs.items():
        m = r["metrics"]
        rows.append([r["label"], fmt(m["final_train_loss"]), fmt(m["test_accuracy"], 3),
                     fmt(m["steps_to_accuracy"], 3), fmt(m["steps_to_loss"], 3), m["diverged"]])
    header = (f"Smith (2015) in small: `{task.name}` ({task_spec}), {steps} steps per run for every variant "
              f"({c['cycles']} CLR cycles of 2 x {step_size} steps; {steps_per_epoch} steps per epoch), evaluation "
              f"seeds {seeds}, device {device}; total {seconds:.0f} s. LR range test ({rt['rule']}, "
              f"{len(res.lrs)} steps from {rt['min_lr']:g} to {rt['max_lr']:g}): suggested bounds "
              f"[{res.suggested_min_lr:.3g}, {res.suggested_max_lr:.3g}]; CLR uses [{base_lr:.3g}, {max_lr:.3g}]. "
              f"Adam's lr: {adam_source}"
              f" = {adam_lr:.3g}; Nesterov's fixed lr: best of a log grid of {cfg['tuning']['budget']} over "
              f"{cfg['fixed']['grid']} = {fixed_lr:.3g} (tuning on seeds {cfg['tuning']['seeds']}, objective "
              f"`{cfg['tuning']['objective']}` on a {cfg['tuning']['val_fraction']:.0%} validation split of the "
              f"training split). Cells: mean ± std over seeds; final train loss on the whole training split; "
              f"steps to accuracy counted at evaluations every {cfg['eval_every']} steps; steps to loss on the "
              f"trailing mean of {tg['smooth']} minibatch losses.\n\n{answer}\n\n")
    table = markdown_table(["variant", "final train loss", "test accuracy",
                            f"steps to {tg['test_accuracy']:g} test accuracy",
                            f"steps to train loss {tg['train_loss']:g}", "diverged seeds"], rows)
    atomic_write_text(header + table, run_dir / "table.md")

    sched = clr_schedule()
    schedules = {runs[CLR]["label"]: [sched(s) for s in range(steps)], runs[ADAM]["label"]: [adam_lr] * steps,
                 runs[FIXED]["label"]: [fixed_lr] * steps}
    plot_comparison(runs, steps, schedules, sched.cycle_ends(steps), (base_lr, max_lr), cfg, run_dir / "clr.png",
                    title=f"Nesterov + CLR vs Adam vs Nesterov (fixed lr) on {task.name}: median and "
                          f"{'IQR' if cfg['figure']['band'] == 'iqr' else 'min-max'} band over {len(seeds)} seeds "
                          f"(dotted: CLR cycle ends)")
    results = {"config": cfg, "seconds": seconds, "steps": steps, "step_size": step_size,
               "steps_per_epoch": steps_per_epoch, "answer": answer, "checks": checks,
               "range_test": {"lrs": res.lrs, "losses": res.losses, "smoothed": res.smoothed,
                              "suggested_min_lr": res.suggested_min_lr, "suggested_max_lr": res.suggested_max_lr,
                              "diverged_at": res.diverged_at, "clr_bounds": [base_lr, max_lr]},
               "tuning": tuned, "adam_lr": adam_lr, "fixed_lr": fixed_lr,
               "variants": {k: {"label": r["label"], **r["metrics"]} for k, r in runs.items()}}
    atomic_write_text(json.dumps(results, indent=1), run_dir / "results.json")

    for i, (lr, loss, sm) in enumerate(zip(res.lrs, res.losses, res.smoothed)):
        logger.log({"range_test/lr": lr, "range_test/loss": loss, "range_test/smoothed": sm}, step=i)
    offset = len(res.lrs)  # W&B steps must increase: the comparison follows the range test
    evals = {e["step"]: e["step"] for e in runs[CLR]["cells"][0]["evals"]}
    for s in range(steps + 1):
        row = {}
        if s < steps:
            for key, r in runs.items():
                vals = [cl["train_loss"][s] for cl in r["cells"] if s < len(cl["train_loss"])]
                if vals:
                    row[f"{key}/train_loss_median"] = float(np.median(vals))
            row[f"{CLR}/lr"] = sched(s)
        if s in evals:
            for key, r in runs.items():
                vals = [e["test_accuracy"] for cl in r["cells"] for e in cl["evals"] if e["step"] == s]
                if vals:
                    row[f"{key}/test_accuracy_median"] = float(np.median(vals))
        logger.log({"comparison_step": s, **row}, step=offset + s)
    logger.table("summary", ["variant", "final_train_loss", "test_accuracy", "steps_to_accuracy", "steps_to_loss",
                             "diverged"], rows)
    logger.image("range_test", run_dir / "range_test.png")
    logger.image("clr", run_dir / "clr.png")
    logger.summary({"answer": overall, "clr_base_lr": base_lr, "clr_max_lr": max_lr, "adam_lr": adam_lr,
                    "fixed_lr": fixed_lr})
    logger.finish()
    print(header + table)
    print(f"wrote {run_dir}/table.md, range_test.png, clr.png, results.json ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
