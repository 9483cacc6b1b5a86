"""Tuned optimizers side by side: training cost vs iterations from a finished evaluation's ``@tuned`` cells.

What the Adam paper's Figs. 1-2 show, for any suite: one panel per task, one line per optimizer at its
tuned lr (median over seeds, a seed band), and per task a table of the tuned lr, the mean training cost
over the run (the area under the curve), the final training cost and the test accuracy, with the
ranking by mean training cost. The evaluation (:func:`learned_opt.evaluation.evaluate.evaluate`) does
the tuning and the runs; :func:`compare_tuned` reads its cells and tuning records back.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..schema import Field, check, choice, integer, number, string
from ..evaluation.metrics import auc
from ..evaluation.plots import plot_curves, save_figure
from ..evaluation.report import markdown_table, mean_std, smooth
from ..evaluation.results import loss_curves, read_cells

BANDS = ("minmax", "iqr")
POSITIVE = number(0, low_open=True)
FIGURE = {"smooth": Field(integer(1)), "band": Field(choice(*BANDS)), "width": Field(POSITIVE),
          "height": Field(POSITIVE), "dpi": Field(integer(1))}


def check_labels(optimizers: dict, labels: Any) -> None:
    """Every optimizer is tuned (a figure of tuned runs) and has a label; no label names an unknown one."""
    check(labels, {label: Field(string, required=True) for label in optimizers}, "labels")
    for label, entry in optimizers.items():
        if not entry.get("tune"):
            raise ValueError(f"optimizers.{label}.tune is empty: every optimizer of the figure is tuned "
                             f"(give e.g. tune: {{lr: [1e-4, 1e-2]}})")


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


def compare_tuned(run_dir: str | Path, cfg: dict, tuning: dict[tuple[str, str], dict],
                  labels: dict[str, str]) -> dict[str, dict]:
    """Per task: each optimizer's tuned lr, per-seed mean and final training cost, test accuracy and
    divergences, the seeds' curves, the ranking by mean training cost and a verdict on Adam's rank.

    ``tuning[(optimizer, task)]`` is the evaluation's tuning record (``{"best": ..., "trials": ...}``).
    """
    steps, seeds = cfg["steps"], list(cfg["seeds"])
    out = {}
    for task in cfg["suite"]:
        per: dict[str, dict] = {}
        for opt in cfg["optimizers"]:
            cells = read_cells(run_dir, f"{opt}@tuned", task, seeds)
            per[opt] = {"lr": tuning[(opt, task)]["best"].get("lr", math.nan),
                        "mean_train_cost": [auc(c.train_loss, steps) for c in cells],
                        "final_train_cost": [c.final("train_loss") for c in cells],
                        "test_accuracy": [c.final("test_accuracy") for c in cells],
                        "diverged": sum(c.diverged for c in cells),
                        "tuning_trials": tuning[(opt, task)]["trials"], "curves": loss_curves(cells, steps)}
        ranked = sorted(per, key=lambda o: (np.nanmean([a if math.isfinite(a) else math.inf
                                                        for a in per[o]["mean_train_cost"]]), o))
        adam_rank = ranked.index("adam") + 1 if "adam" in ranked else None
        verdict = (f"Lowest mean training cost: {labels[ranked[0]]}" +
                   (f"; Adam ranks {adam_rank} of {len(ranked)}" if adam_rank else "") +
                   (" (the paper's claim, Adam converges as fast as or faster than the others, holds here)."
                    if adam_rank == 1 else " (the paper's claim, Adam fastest, does not hold here)."
                    if adam_rank else "."))
        out[task] = {"per_optimizer": per, "ranking_by_mean_train_cost": ranked, "verdict": verdict}
    return out


def tuned_markdown(results: dict[str, dict], suite: dict, labels: dict[str, str]) -> str:
    """One table per task (mean ± std over seeds) and its verdict."""
    md = []
    for task, res in results.items():
        rows = [[labels[o], f"{r['lr']:.3g}", mean_std([a if math.isfinite(a) else math.nan
                                                         for a in r["mean_train_cost"]]),
                 mean_std(r["final_train_cost"]), mean_std(r["test_accuracy"], 3), r["diverged"]]
                for o, r in res["per_optimizer"].items()]
        md += [f"### {describe(suite[task])} (`{task}`: {suite[task]})\n",
               markdown_table(["optimizer", "tuned lr", "mean training cost over the run",
                               "final training cost (full train split)", "test accuracy", "diverged seeds"], rows),
               res["verdict"] + "\n"]
    return "\n".join(md)


def plot_tuned(results: dict[str, dict], suite: dict, labels: dict[str, str], figure: dict, path: str | Path, *,
               xlabel: str, title: str) -> Path:
    """One panel per task: each optimizer's training cost (trailing mean of ``figure.smooth`` minibatch
    losses) vs iterations, log y, median line and a seed band."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(figure["width"], figure["height"]), dpi=figure["dpi"],
                             squeeze=False)
    for ax, (task, res) in zip(axes[0], results.items()):
        curves = {f"{labels[o]} (lr={r['lr']:.2g})": np.stack([smooth(c, figure["smooth"]) for c in r["curves"]])
                  for o, r in res["per_optimizer"].items()}
        plot_curves(curves, None, ax=ax, band=figure["band"], title=describe(suite[task]), xlabel=xlabel,
                    ylabel=f"training cost (cross-entropy, minibatch; trailing mean of {figure['smooth']})",
                    logy=True)
    fig.suptitle(title)
    return save_figure(fig, path)
