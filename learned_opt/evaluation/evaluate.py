"""Run an evaluation config end to end: tune, run every cell, summarise, plot, log.

    summary = evaluate(cfg, run_dir)                 # cfg: the plain dict of configs/evaluate.yaml
    summary = evaluate(cfg, run_dir, resume=True)    # continue an interrupted evaluation

Outputs in ``run_dir``: ``results.csv`` (tidy: one row per optimizer x task x
seed x step), ``summary.md``, ``summary.json``, ``curves_<task>.png``,
``scores.png`` (score normalised by tuned Adam, per task) and ``ranks.png``,
``cells/`` and ``tuning/`` (every finished unit of work, for resuming), and
W&B runs: one per (optimizer, task), grouped by task and tagged by optimizer
family, plus one ``summary`` run with the tables and comparison plots.

Failure and recovery: the whole config is checked before the run directory is touched
(:func:`check_config`); one process at a time holds the run directory
(:class:`~learned_opt.runlock.RunLock`); ``config.json`` records the config and the SHA-256
of every learned optimizer's file, and a resume with another config or a changed file is
refused; a damaged cell or tuning file is named and computed again; ``summary.json`` is written
last, and a resume of a finished evaluation (every cell there, nothing damaged) rewrites nothing.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..runlock import RunLock
from ..runlog import RunLogger, check_wandb_config
from ..schema import (WANDB, ConfigError, Field, boolean, check, delegated, device as device_field, integer, list_of,
                      optional, section)
from ..tasks import make_task
from ..utils import atomic_write_text, resolve_device
from . import metrics as M
from .plots import plot_curves
from .report import markdown_table
from .sealed import read_sealed, write_sealed
from .suite import TUNING, OptimizerSpec, budget, parse_optimizers, parse_suite, run_cell, task_kwargs, tune
from .results import CellResult, loss_curves

REFERENCE = "adam@tuned"  # the normalising reference, learned_optimization style
BASELINE = "adam@default"  # the second reference of the across-tasks table (what a new user runs)
CSV_COLUMNS = ["optimizer", "variant", "task", "seed", "step", "train_loss", "test_loss", "test_accuracy"]


def entries(specs: list[OptimizerSpec]) -> list[tuple[str, OptimizerSpec, str]]:
    """(entry label, spec, variant) for every evaluated column: default and tuned for hand-crafted rules."""
    out = []
    for s in specs:
        if s.learned:
            out.append((s.label, s, "learned"))
        else:
            out.append((f"{s.label}@default", s, "default"))
            if s.tune:
                out.append((f"{s.label}@tuned", s, "tuned"))
    return out


SCHEMA = {
    "device": Field(device_field),
    "steps": Field(integer(1), required=True),
    "seeds": Field(list_of(integer(), distinct=True), required=True),
    "eval_every": Field(integer(0)),                 # 0: only at the end
    "eval_examples": Field(optional(integer(1))),    # null: all
    "progress": Field(boolean),
    "resume": Field(boolean),
    "tuning": TUNING,
    "suite": Field(delegated, required=True),       # parse_suite: each task's own constructor
    "optimizers": Field(delegated, required=True),  # parse_optimizers: each rule's constructor
    "wandb": Field(optional(section(WANDB))),
}


def check_config(cfg: dict, device: torch.device) -> tuple[list[OptimizerSpec], dict[str, dict]]:
    """Every field type- and range-checked, every key read by something, every task and optimizer built
    (tuning candidates included), before any work; returns the optimizer specs and the suite."""
    check(cfg, SCHEMA)
    if not cfg.get("seeds"):
        raise ValueError("seeds is empty: give the evaluation seeds, e.g. [100, 101, 102]")
    if set(cfg["seeds"]) & set(cfg["tuning"]["seeds"]):
        raise ValueError(f"tuning.seeds {cfg['tuning']['seeds']} overlap the evaluation seeds {cfg['seeds']}: "
                         f"tune on other seeds than you report")
    return parse_optimizers(cfg["optimizers"], cfg["tuning"]), parse_suite(cfg["suite"], device)


def evaluate(cfg: dict, run_dir: str | Path, resume: bool = False) -> dict:
    device = resolve_device(cfg.get("device", "cpu"))
    specs, suite = check_config(cfg, device)
    run_dir = Path(run_dir)
    with RunLock(run_dir, "evaluate"):
        return _evaluate(cfg, run_dir, resume, device, specs, suite)


def _evaluate(cfg: dict, run_dir: Path, resume: bool, device: torch.device, specs: list[OptimizerSpec],
              suite: dict[str, dict]) -> dict:
    saved_cfg = run_dir / "config.json"
    files = {s.label: s.sha256 for s in specs if s.learned}
    record = {**_comparable(cfg), **({"checkpoint_sha256": files} if files else {})}
    if saved_cfg.exists():
        if not resume:
            raise FileExistsError(f"{run_dir} already holds an evaluation: pass resume=true to continue it "
                                  f"(nothing was overwritten)")
        _check_same_evaluation(saved_cfg, record)
    (run_dir / "cells").mkdir(parents=True, exist_ok=True)
    (run_dir / "tuning").mkdir(exist_ok=True)
    if not saved_cfg.exists():
        atomic_write_text(json.dumps(record, indent=1), saved_cfg)

    cols = entries(specs)
    seeds = list(cfg["seeds"])
    todo = [(e, s, v, t, seed) for t in suite for (e, s, v) in cols for seed in seeds]
    from tqdm.auto import tqdm
    bar = tqdm(todo, desc="cells (optimizer x task x seed)", disable=not cfg.get("progress", True))
    cells: dict[tuple[str, str], list[CellResult]] = {}
    tuned: dict[tuple[str, str], dict] = {}
    t0 = time.perf_counter()
    computed = False  # whether this call computed anything (else a finished evaluation is left as it is)
    for entry, spec, variant, task_label, seed in bar:
        bar.set_postfix(task=task_label, optimizer=entry)
        path = run_dir / "cells" / f"{entry}__{task_label}__{seed}.json"
        if path.exists():
            record = read_sealed(path, expect={"seed": seed})
            if record is not None:
                try:
                    cell = CellResult.from_json(record)
                    if cell.hparams is None:  # the evaluation always records them
                        raise ValueError("missing: hparams")
                    cells.setdefault((entry, task_label), []).append(cell)
                    continue
                except ValueError as e:
                    import warnings
                    warnings.warn(f"{path} is damaged ({e}); computing it again", RuntimeWarning, stacklevel=2)
        computed = True
        hp = None
        if variant == "tuned":
            key = (spec.label, task_label)
            if key not in tuned:
                tuned[key] = tune(spec, suite[task_label], cfg, device,
                                  cache=run_dir / "tuning" / f"{spec.label}__{task_label}.json")
            hp = tuned[key]["best"]
        task = make_task(**task_kwargs(suite[task_label]), device=device)
        cell = run_cell(task, spec.build(device, hp), seed, budget(suite[task_label], cfg), device,
                        eval_every=cfg.get("eval_every", 0), eval_examples=cfg.get("eval_examples"))
        cell.hparams = hp if hp is not None else (spec.hparams if not spec.learned else {})
        record = json.loads(json.dumps(cell.to_json()))  # exactly what a resumed run reads back
        write_sealed(record, path)
        cells.setdefault((entry, task_label), []).append(CellResult.from_json(record))
    bar.close()
    for spec in specs:  # tuning records of cells that were all resumed
        for task_label in suite:
            p = run_dir / "tuning" / f"{spec.label}__{task_label}.json"
            if (spec.label, task_label) in tuned or not p.exists():
                continue
            rec = read_sealed(p)
            if rec is None:  # damaged: computed again
                p.unlink()
                computed = True
                rec = tune(spec, suite[task_label], cfg, device, cache=p)
            tuned[(spec.label, task_label)] = rec
    done = run_dir / "summary.json"  # written last: its presence means the evaluation finished
    if not computed and done.exists():
        try:
            return json.loads(done.read_text())["summary"]  # finished: nothing is rewritten
        except (ValueError, KeyError, TypeError):
            pass  # damaged: written again below

    summary = summarise(cells, cols, suite, cfg)
    summary["seconds"] = time.perf_counter() - t0
    write_csv(cells, cols, suite, run_dir / "results.csv")
    md = summary_markdown(summary, suite, cols, tuned, cfg)
    atomic_write_text(md, run_dir / "summary.md")
    figures = make_figures(cells, cols, suite, summary, run_dir, cfg)
    log_wandb(cells, cols, suite, summary, md, figures, run_dir, cfg)
    atomic_write_text(json.dumps({"summary": summary, "tuning": {f"{k[0]}/{k[1]}": v for k, v in tuned.items()}},
                                 indent=1), done)
    return summary


def _comparable(cfg: dict) -> dict:
    """The config without the entries that may change between an interrupted run and its resume."""
    return {k: v for k, v in cfg.items() if k not in ("progress", "wandb", "resume", "device")}


def _check_same_evaluation(saved_cfg: Path, record: dict) -> None:
    """Refuse to resume with another config, or with a learned optimizer's file that changed."""
    try:
        saved = json.loads(saved_cfg.read_text())
    except ValueError as e:
        raise ConfigError(f"resume: {saved_cfg} is damaged ({e}); use a new run directory") from e
    files_then, files_now = saved.pop("checkpoint_sha256", None), record.get("checkpoint_sha256", {})
    now = {k: v for k, v in record.items() if k != "checkpoint_sha256"}
    if saved != now:
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ConfigError(f"resume: {saved_cfg} was written by a different configuration (differs in "
                         f"{', '.join(diff)}); use a new run directory")
    for label, digest in (files_then or {}).items():  # older runs recorded no hashes
        if files_now.get(label) != digest:
            raise ConfigError(f"resume: the file of optimizers.{label} changed since this evaluation started "
                             f"(SHA-256 {digest[:16]}... recorded, {str(files_now.get(label))[:16]}... now): "
                             f"its finished cells used the old file. Restore it, or use a new run directory")


# --------------------------------------------------------------------------- summary
def summarise(cells: dict, cols: list, suite: dict, cfg: dict) -> dict:
    out: dict[str, Any] = {"tasks": {}}
    for task in suite:
        steps = budget(suite[task], cfg)
        ref_cells = sorted(cells.get((REFERENCE, task), []), key=lambda c: c.seed)
        ref_auc = M.median_iqr([M.auc(c.train_loss, steps) for c in ref_cells])[0] if ref_cells else math.nan
        ref_final = [c.final("train_loss", math.inf) for c in ref_cells]
        target = (suite[task].get("target_loss") if "target_loss" in suite[task]
                  else (M.median_iqr(ref_final)[0] if ref_cells else math.nan))
        rows = {}
        for entry, _, variant in cols:
            cs = sorted(cells.get((entry, task), []), key=lambda c: c.seed)
            if not cs:
                continue
            per = {
                "final_train_loss": [c.final("train_loss", math.inf) for c in cs],
                "final_test_loss": [c.final("test_loss", math.inf) for c in cs],
                "test_accuracy": [c.final("test_accuracy", math.nan) for c in cs],
                "auc": [M.auc(c.train_loss, steps) for c in cs],
                "steps_to_target": [M.steps_to_target(c.train_loss, target, smooth=10)
                                    if math.isfinite(target) else math.nan for c in cs],
                "seconds": [c.seconds for c in cs],
            }
            per["score_vs_adam"] = [M.normalized_score(a, ref_auc) for a in per["auc"]]
            stats = {k: dict(zip(("median", "q25", "q75"), M.median_iqr(v))) for k, v in per.items()}
            wtl = (M.wins_losses(per["final_train_loss"], ref_final) if ref_cells and entry != REFERENCE
                   else None)
            rows[entry] = {"variant": variant, "seeds": [c.seed for c in cs], "per_seed": per,
                           "stats": stats, "wins_ties_losses_vs_adam": wtl,
                           "diverged": sum(c.diverged for c in cs), "hparams": cs[0].hparams or {}}
        ranking = sorted(rows, key=lambda e: (rows[e]["stats"]["auc"]["median"], e))
        out["tasks"][task] = {"target_loss": target, "reference_auc": ref_auc, "rows": rows, "ranking": ranking}
    medians, diverged = M.task_medians(out["tasks"])
    out["across_tasks"] = M.across_tasks(medians, diverged, REFERENCE, BASELINE)
    return out


def summary_markdown(summary: dict, suite: dict, cols: list, tuned: dict, cfg: dict) -> str:
    t = cfg["tuning"]
    lines = [f"Budget: {cfg['steps']} steps unless a task says otherwise; evaluation seeds {cfg['seeds']}; tuning: {t.get('method', 'grid')} "
             f"search, {t.get('budget', 8)} trials on seeds {t['seeds']}, objective {t.get('objective', 'final_val_loss')}"
             f" (validation split = {t.get('val_fraction', 0.2):.0%} of the training split). Each cell: median "
             f"[25th, 75th percentile] over seeds. score = mean training loss over the run / that of tuned Adam "
             f"(< 1 is better). W/T/L: seeds where the final training loss beats / ties / loses to tuned Adam.\n"]
    for task, res in summary["tasks"].items():
        lines.append(f"### {task}\n\n`{suite[task]}`, {budget(suite[task], cfg)} steps; target loss for "
                     f"steps-to-target: {res['target_loss']:.4g}\n")
        rows = []
        for entry in res["ranking"]:
            r = res["rows"][entry]
            p = r["per_seed"]
            wtl = r["wins_ties_losses_vs_adam"]
            rows.append([entry, M.fmt_median_iqr(p["final_train_loss"]), M.fmt_median_iqr(p["final_test_loss"]),
                         M.fmt_median_iqr(p["test_accuracy"], 3), M.fmt_median_iqr(p["auc"]),
                         M.fmt_median_iqr(p["steps_to_target"], 3, "not reached"), M.fmt_median_iqr(p["score_vs_adam"], 3),
                         "/".join(map(str, wtl)) if wtl else "-", r["diverged"], _fmt_hp(r["hparams"])])
        lines.append(markdown_table(["optimizer", "final train loss", "test loss", "test accuracy",
                                     "mean train loss (AUC)", "steps to target", "score vs tuned Adam",
                                     "W/T/L vs Adam", "diverged", "hyperparameters"], rows))
    if summary.get("across_tasks"):
        lines.append(f"### Across tasks\n\nscore = median mean training loss / that of {REFERENCE} on each task; "
                     f"geometric mean over the {len(summary['tasks'])} tasks, the worst task, and the geometric "
                     f"mean against {BASELINE} (< 1 is better); diverged = runs (task x seed) that diverged.\n")
        acr = summary["across_tasks"]
        order = sorted(acr, key=lambda e: (acr[e]["geomean_vs_reference"], e))
        lines.append(markdown_table(
            ["optimizer", f"geo. mean score vs {REFERENCE}", "worst task", f"geo. mean vs {BASELINE}", "diverged"],
            [[e, *M.across_cells(acr[e]), acr[e]["diverged"]] for e in order]))
    lines.append("### Ranking by mean training loss (1 = best)\n")
    names = [e for e, _, _ in cols]
    rank_rows = []
    for e in names:
        ranks = [summary["tasks"][t]["ranking"].index(e) + 1 if e in summary["tasks"][t]["ranking"] else "-"
                 for t in summary["tasks"]]
        rank_rows.append([e, *ranks])
    lines.append(markdown_table(["optimizer", *summary["tasks"].keys()], rank_rows))
    return "\n".join(lines)


def _fmt_hp(hp: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in hp.items()) or "-"


def write_csv(cells: dict, cols: list, suite: dict, path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for task in suite:
        for entry, _, variant in cols:
            for c in sorted(cells.get((entry, task), []), key=lambda c: c.seed):
                evals = {e["step"]: e for e in c.evals}
                for i, loss in enumerate(c.train_loss):
                    e = evals.get(i, {})
                    w.writerow([entry, variant, task, c.seed, i + 1, repr(float(loss)),
                                repr(e["test_loss"]) if "test_loss" in e else "",
                                repr(e["test_accuracy"]) if "test_accuracy" in e else ""])
    atomic_write_text(buf.getvalue(), path)


# --------------------------------------------------------------------------- figures and W&B
def make_figures(cells: dict, cols: list, suite: dict, summary: dict, run_dir: Path, cfg: dict) -> list[Path]:
    import matplotlib.pyplot as plt
    import matplotlib.ticker as mticker
    figs = []
    for task in suite:
        steps = budget(suite[task], cfg)
        curves = {}
        for entry, _, _ in cols:
            cs = cells.get((entry, task), [])
            if cs:
                curves[entry] = loss_curves(cs, steps)
        figs.append(plot_curves(curves, run_dir / f"curves_{task}.png",
                                title=f"{task}: training loss (median, IQR band over {len(cfg['seeds'])} seeds)",
                                xlabel="step (updates)", ylabel="training loss (minibatch)"))
    tasks = list(summary["tasks"])
    names = [e for e, _, _ in cols]
    # one panel per task, optimizers on the y axis: readable however many entries there are
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 0.9 + nrows * (0.6 + 0.26 * len(names))),
                             dpi=110, squeeze=False, sharey=True)
    y = np.arange(len(names))
    for k, t in enumerate(tasks):
        ax = axes[k // ncols][k % ncols]
        span = [1.0]
        for j, e in enumerate(names):
            s = summary["tasks"][t]["rows"].get(e, {}).get("stats", {}).get("score_vs_adam")
            if not s or not math.isfinite(s["median"]):
                continue
            lo = s["median"] - s["q25"] if math.isfinite(s["q25"]) else 0
            hi = s["q75"] - s["median"] if math.isfinite(s["q75"]) else 0
            span += [v for v in (s["median"] - lo, s["median"] + hi) if v > 0]
            color = "C2" if s["median"] < 1 else "C3" if s["median"] > 1 else "k"
            ax.errorbar(s["median"], j, xerr=[[lo], [hi]], fmt="o", color=color, ms=4, capsize=2)
        ax.axvline(1.0, color="k", lw=1, ls="--")
        if max(span) / min(span) > 8:  # a log axis only where the scores span about a decade or more
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(mticker.NullFormatter())
            ax.xaxis.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.set_title(t, fontsize=10)
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=8)
        if k == 0:
            ax.invert_yaxis()  # shared by every panel: first entry on top
        ax.grid(True, axis="x", which="both", alpha=0.3)
        if k // ncols == nrows - 1:
            ax.set_xlabel("mean training loss / tuned Adam's")
    for k in range(len(tasks), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    fig.suptitle("Score normalised by tuned Adam per task (dashed: tuned Adam = 1; < 1 is better, green; "
                 "median and IQR over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(run_dir / "scores.png")
    plt.close(fig)
    figs.append(run_dir / "scores.png")

    ranks = np.array([[summary["tasks"][t]["ranking"].index(e) + 1 if e in summary["tasks"][t]["ranking"] else np.nan
                       for t in tasks] for e in names], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(tasks), 0.8 + 0.35 * len(names)), dpi=110)
    im = ax.imshow(ranks, cmap="viridis_r", aspect="auto")
    for i in range(len(names)):
        for j in range(len(tasks)):
            if np.isfinite(ranks[i, j]):
                dark = ranks[i, j] > np.nanmax(ranks) / 2  # viridis_r: high ranks are dark
                ax.text(j, i, int(ranks[i, j]), ha="center", va="center", color="w" if dark else "k", fontsize=8)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=15)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("task")
    ax.set_title("Rank by mean training loss (1 = best)")
    fig.colorbar(im, ax=ax, label="rank")
    fig.tight_layout()
    fig.savefig(run_dir / "ranks.png")
    plt.close(fig)
    figs.append(run_dir / "ranks.png")
    return figs


def log_wandb(cells: dict, cols: list, suite: dict, summary: dict, md: str, figures: list[Path], run_dir: Path,
              cfg: dict) -> None:
    wcfg = check_wandb_config(cfg.get("wandb"))
    if wcfg["mode"] == "disabled":
        return
    for task in suite:
        steps = budget(suite[task], cfg)
        for entry, spec, variant in cols:
            cs = cells.get((entry, task))
            if not cs:
                continue
            row = summary["tasks"][task]["rows"][entry]
            arr = loss_curves(cs, steps)
            with RunLogger(run_dir / "wandb_runs", wcfg, name=f"{entry}/{task}", group=task,
                           tags=[spec.family, variant, entry.split("@")[0]], job_type="evaluate",
                           config={"optimizer": entry, "variant": variant, "task": task, "task_spec": suite[task],
                                   "hparams": row["hparams"], "seeds": row["seeds"], "steps": steps},
                           jsonl=f"{entry}__{task}.jsonl") as log:
                evals = {}
                for c in cs:
                    for e in c.evals:
                        evals.setdefault(e["step"], []).append(e)
                for s in range(steps):
                    col = arr[:, s]
                    if not np.isfinite(col).any():
                        break
                    point = {"train_loss": float(np.nanmedian(col)), "train_loss_q25": float(np.nanpercentile(col, 25)),
                             "train_loss_q75": float(np.nanpercentile(col, 75))}
                    for k in ("test_loss", "test_accuracy"):
                        vals = [e[k] for e in evals.get(s, []) if k in e]
                        if vals:
                            point[k] = float(np.median(vals))
                    log.log(point, step=s)
                log.summary({f"{k}_median": v["median"] for k, v in row["stats"].items()}
                            | {"diverged": row["diverged"]})
    with RunLogger(run_dir / "wandb_runs", wcfg, name="summary", group="summary", tags=["summary"],
                   job_type="evaluate-summary", config=cfg, jsonl="summary.jsonl") as log:
        import wandb
        table_rows = [[task, entry, r["variant"], *(r["stats"][k]["median"] for k in
                       ("final_train_loss", "final_test_loss", "test_accuracy", "auc", "steps_to_target",
                        "score_vs_adam")), r["diverged"]]
                      for task, res in summary["tasks"].items() for entry, r in res["rows"].items()]
        log.table("summary_table", ["task", "optimizer", "variant", "final_train_loss", "final_test_loss",
                                    "test_accuracy", "auc", "steps_to_target", "score_vs_adam", "diverged"],
                  table_rows)
        if log.wandb_run is not None:
            for task in suite:
                steps = budget(suite[task], cfg)
                names = [e for e, _, _ in cols if (e, task) in cells]
                ys = [np.nanmedian(loss_curves(cells[(e, task)], steps), axis=0).tolist()
                      for e in names]
                log.wandb_run.log({f"compare/{task}": wandb.plot.line_series(
                    xs=list(range(1, steps + 1)), ys=ys, keys=names, title=f"{task}: median training loss",
                    xname="step")})
        for f in figures:
            log.image(f"figures/{f.stem}", f)
