"""Kingma & Ba (2015), Figs. 1-2 in small: training cost vs iterations of five optimizers, each with a tuned lr.

    python experiments/adam_paper.py                                   # mnist5k, configs/adam_paper.yaml
    python experiments/adam_paper.py dataset=mnist root=/work/shared/data steps=3000 device=cuda

The tuning and the runs are the shared evaluation (``learned_opt.evaluation.evaluate``) on a suite of
two tasks (logistic regression; an MLP with two hidden layers of 1000 ReLU units and dropout) and the
paper's optimizers (AdaGrad, RMSProp, SGD-Nesterov, AdaDelta, Adam); each optimizer's lr is picked by a
small log grid on held-out tuning seeds. This script then draws the paper-style figure from the tuned
runs: one panel per task, training cost (minibatch loss, batch 128) vs iterations, log y, one line per
optimizer with a seed band.

Writes to the run directory: ``adam_paper.png`` (the figure), ``table.md`` (per task, one row per
tuned optimizer: tuned lr, mean training cost over the run, final training cost, test accuracy; mean ±
std over seeds), ``results.json``, ``metrics.jsonl``, an offline W&B run (``wandb/``), and everything
the evaluation writes (``summary.md`` with the @default rows too, ``results.csv``, ``curves_*.png``,
``cells/``, ``tuning/``, ``wandb_runs/``).
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

from learned_opt.evaluation import metrics as M
from learned_opt.evaluation.evaluate import check_config as check_evaluation_config
from learned_opt.evaluation.evaluate import evaluate
from learned_opt.evaluation.plots import plot_curves
from learned_opt.evaluation.tables import markdown_table, mean_std
from learned_opt.runlog import RunLogger, check_wandb_config
from learned_opt.utils import atomic_write_text, resolve_device

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PAPER_RULES = ("adagrad", "rmsprop", "nesterov", "adadelta", "adam")
EVALUATION_KEYS = ("device", "steps", "seeds", "eval_every", "eval_examples", "progress", "tuning", "suite",
                   "optimizers", "wandb")
BANDS = ("minmax", "iqr")


def _positive(name: str, value, kind=int):
    if isinstance(value, bool) or not isinstance(value, (kind, int)) or not value > 0:
        raise ValueError(f"{name}={value!r} must be a positive {'integer' if kind is int else 'number'}")
    return value


def check_config(config: dict) -> dict:
    """Validate everything before any work; returns the evaluation's config (a subset of ``config``)."""
    missing = [k for k in (*EVALUATION_KEYS, "labels", "figure", "threads") if k not in config]
    if missing:
        raise ValueError(f"config is missing {missing}")
    rules = {label: o.get("rule") for label, o in config["optimizers"].items()}
    for label in config["optimizers"]:
        if not config["optimizers"][label].get("tune"):
            raise ValueError(f"optimizers.{label}.tune is empty: every optimizer of the figure is tuned "
                             f"(give e.g. tune: {{lr: [1e-4, 1e-2]}})")
        if label not in config["labels"]:
            raise ValueError(f"labels.{label} is missing: give the optimizer's name for the figure")
    unknown = sorted(set(rules.values()) - set(PAPER_RULES))
    if unknown:
        print(f"note: optimizers {unknown} are not in the paper's figures ({', '.join(PAPER_RULES)})")
    if config["threads"] is not None:
        _positive("threads", config["threads"])
    fig = config["figure"]
    _positive("figure.smooth", fig.get("smooth"))
    _positive("figure.dpi", fig.get("dpi"))
    _positive("figure.width", fig.get("width"), float)
    _positive("figure.height", fig.get("height"), float)
    if fig.get("band") not in BANDS:
        raise ValueError(f"figure.band={fig.get('band')!r} is not allowed; allowed: {', '.join(BANDS)}")
    if not isinstance(config.get("resume"), bool):
        raise ValueError(f"resume={config.get('resume')!r} must be true or false")
    check_wandb_config(config["wandb"])
    eval_cfg = {k: config[k] for k in EVALUATION_KEYS}
    # Only tuned entries are drawn, but the evaluation also runs each rule at its default hyperparameters.
    check_evaluation_config(eval_cfg, resolve_device(config["device"]))  # names, hparams, tasks, seeds
    return eval_cfg


def describe(spec: dict) -> str:
    """Panel title of a suite task, e.g. ``MLP 2x1000 ReLU, dropout 0.5``."""
    if spec["name"] == "logreg":
        return "Logistic regression"
    if spec["name"] == "mlp":
        sizes = spec.get("hidden_sizes", [20])
        width = f"{len(sizes)}x{sizes[0]}" if len(set(sizes)) == 1 else "-".join(map(str, sizes))
        drop = f", dropout {spec['dropout']:g}" if spec.get("dropout") else ", no dropout"
        act = {"relu": "ReLU"}.get(spec.get("activation", "sigmoid"), spec.get("activation", "sigmoid"))
        return f"MLP {width} {act}{drop}"
    return spec["name"]


def smooth(row: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` steps (an expanding mean for the first ones); NaN tails stay NaN."""
    row = np.asarray(row, dtype=float)
    out = np.full_like(row, np.nan)
    n = int(np.isfinite(row).cumprod().sum())  # length of the finite prefix (a diverged run stops early)
    if n == 0:
        return out
    c = np.cumsum(row[:n])
    idx = np.arange(n)
    lo = np.maximum(idx - window, -1)
    out[:n] = (c - np.where(lo >= 0, c[np.maximum(lo, 0)], 0.0)) / (idx - lo)
    return out


def load_cells(run_dir: Path, entry: str, task: str, seeds: list[int]) -> list[dict]:
    return [json.loads((run_dir / "cells" / f"{entry}__{task}__{seed}.json").read_text()) for seed in seeds]


@hydra.main(config_path="../configs", config_name="adam_paper", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    eval_cfg = check_config(config)
    if config["threads"] is not None:
        torch.set_num_threads(config["threads"])
    started = time.perf_counter()
    evaluate(eval_cfg, run_dir, resume=config["resume"])  # tunes, runs every (optimizer, task, seed) cell
    seconds = time.perf_counter() - started

    steps, seeds, labels, fig_cfg = config["steps"], list(config["seeds"]), config["labels"], config["figure"]
    tuning = {(o, t): json.loads((run_dir / "tuning" / f"{o}__{t}.json").read_text())
              for o in config["optimizers"] for t in config["suite"]}
    tasks = list(config["suite"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(fig_cfg["width"], fig_cfg["height"]), dpi=fig_cfg["dpi"],
                             squeeze=False)
    md = [f"Kingma & Ba (2015) Figs. 1-2 in small: dataset `{config['dataset']}`, batch {config['batch_size']}, "
          f"{steps} iterations, evaluation seeds {seeds}. Each optimizer's lr was tuned by a log grid of "
          f"{config['tuning']['budget']} values on tuning seeds {config['tuning']['seeds']} (objective "
          f"`{config['tuning']['objective']}`, on the training split minus a {config['tuning']['val_fraction']:.0%} "
          f"validation share). Cells: mean ± std over seeds. Mean training cost = mean minibatch loss over "
          f"all {steps} iterations (the area under the figure's curve); final training cost = loss on the whole "
          f"training split after the last iteration. Wall time of this invocation (tuning + runs): {seconds:.0f} s.\n"]
    results: dict = {"seconds": seconds, "tasks": {}}
    logger = RunLogger(run_dir, config["wandb"], name="adam_paper", group="adam_paper", job_type="adam_paper",
                       tags=list(config["optimizers"]), config=config)
    medians: dict[str, np.ndarray] = {}
    for ax, task in zip(axes[0], tasks):
        curves, rows, per_task = {}, [], {}
        for opt in config["optimizers"]:
            cells = load_cells(run_dir, f"{opt}@tuned", task, seeds)
            raw = M.padded([c["train_loss"] for c in cells], steps)
            lr = tuning[(opt, task)]["best"].get("lr", math.nan)
            curves[f"{labels[opt]} (lr={lr:.2g})"] = np.stack([smooth(r, fig_cfg["smooth"]) for r in raw])
            with np.errstate(all="ignore"):
                medians[f"{task}/{opt}"] = np.nanmedian(raw, axis=0)
            auc = [M.auc(c["train_loss"], steps) for c in cells]
            final = [c.get("final_train_loss_full", math.nan) for c in cells]
            acc = [c.get("final_test_accuracy", math.nan) for c in cells]
            diverged = sum(bool(c["diverged"]) for c in cells)
            per_task[opt] = {"lr": lr, "mean_train_cost": auc, "final_train_cost": final, "test_accuracy": acc,
                             "diverged": diverged, "tuning_trials": tuning[(opt, task)]["trials"]}
            rows.append([labels[opt], f"{lr:.3g}", mean_std([a if math.isfinite(a) else math.nan for a in auc]),
                         mean_std(final), mean_std(acc, 3), diverged])
        plot_curves(curves, None, ax=ax, band=fig_cfg["band"],
                    title=f"{describe(config['suite'][task])}", xlabel="iterations (updates, batch "
                    f"{config['batch_size']})", ylabel=f"training cost (cross-entropy, minibatch; "
                    f"trailing mean of {fig_cfg['smooth']})", logy=True)
        ranked = sorted(per_task, key=lambda o: (np.nanmean([a if math.isfinite(a) else math.inf
                                                             for a in per_task[o]["mean_train_cost"]]), o))
        adam_rank = ranked.index("adam") + 1 if "adam" in ranked else None
        verdict = (f"Lowest mean training cost: {labels[ranked[0]]}" +
                   (f"; Adam ranks {adam_rank} of {len(ranked)}" if adam_rank else "") +
                   (" (the paper's claim, Adam converges as fast as or faster than the others, holds here)."
                    if adam_rank == 1 else " (the paper's claim, Adam fastest, does not hold here)."
                    if adam_rank else "."))
        md += [f"### {describe(config['suite'][task])} (`{task}`: {config['suite'][task]})\n",
               markdown_table(["optimizer", "tuned lr", "mean training cost over the run",
                               "final training cost (full train split)", "test accuracy", "diverged seeds"], rows),
               verdict + "\n"]
        results["tasks"][task] = {"per_optimizer": per_task, "ranking_by_mean_train_cost": ranked,
                                  "verdict": verdict}
    band = "min-max over" if fig_cfg["band"] == "minmax" else "median and IQR over"
    fig.suptitle(f"Training cost vs iterations on {config['dataset']} (tuned lr; median line, band = {band} "
                 f"{len(seeds)} seeds)")
    fig.tight_layout()
    fig.savefig(run_dir / "adam_paper.png")
    plt.close(fig)

    table = "\n".join(md)
    atomic_write_text(table, run_dir / "table.md")
    atomic_write_text(json.dumps({"config": config, "results": results}, indent=1, default=str),
                      run_dir / "results.json")
    for step in range(steps):  # one history row per step (W&B needs increasing steps)
        logger.log({f"{k}/train_loss_median": float(v[step]) for k, v in medians.items()}, step=step)
    logger.table("summary", ["task", "optimizer", "tuned_lr", "mean_train_cost", "final_train_cost",
                             "test_accuracy", "diverged"],
                 [[t, o, r["lr"], float(np.nanmean(r["mean_train_cost"])), float(np.nanmean(r["final_train_cost"])),
                   float(np.nanmean(r["test_accuracy"])), r["diverged"]]
                  for t, res in results["tasks"].items() for o, r in res["per_optimizer"].items()])
    logger.image("adam_paper", run_dir / "adam_paper.png")
    logger.summary({f"{t}/{o}/mean_train_cost": float(np.nanmean(r["mean_train_cost"]))
                    for t, res in results["tasks"].items() for o, r in res["per_optimizer"].items()})
    logger.finish()
    print(table)
    print(f"wrote {run_dir}/adam_paper.png, table.md, results.json, summary.md ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
