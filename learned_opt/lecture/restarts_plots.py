"""The figures of the restarts comparison (:mod:`learned_opt.lecture.restarts`).

- :func:`plot_validation`: validation loss vs epochs of the three variants (median and seed band), plateau
  reductions and snapshots marked, the learning rates in a panel below;
- :func:`plot_accuracy_bars`: test accuracy per model, mean ± std over seeds as bars, each seed as a dot.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np

from ..evaluation.metrics import padded
from ..evaluation.plots import plot_curves, save_figure
from .restarts import FIXED, LABELS, PLATEAU, SGDR, RestartsResult, sgdr_schedule

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_validation", "plot_accuracy_bars"]


def plot_validation(result: RestartsResult, path: str | Path, title: str) -> Path:
    """Validation loss (top, log scale) and learning rate (bottom) against epochs."""
    cfg, runs, spe = result.config, result.runs, result.steps_per_epoch
    epochs, snapshot_epochs = cfg["epochs"], result.snapshot_epochs
    fig = plt.figure(figsize=(10, 8), dpi=cfg["figure"]["dpi"])
    gs = fig.add_gridspec(2, 1, height_ratios=[2.6, 1.2])
    ax, ax_lr = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
    curves = {}
    for key in (FIXED, PLATEAU, SGDR):
        curves[LABELS[key].replace(" (last iterate)", "")] = padded([r.val_loss for r in runs[key]], epochs + 1)
    plot_curves(curves, None, ax=ax, x=np.arange(epochs + 1), band=cfg["figure"]["band"], logy=True,
                title="Validation loss (validation split carved out of the training split)",
                xlabel="epoch", ylabel="validation loss (cross-entropy)")
    first = True
    for r in runs[PLATEAU]:
        for e in r.reductions:
            ax.plot([e], [r.val_loss[e]], "v", color="C1", ms=8, mec="k", mew=0.5,
                    label="plateau: lr reduced after this epoch (each seed)" if first else None)
            first = False
    sg = curves[LABELS[SGDR].replace(" (last iterate)", "")]
    with np.errstate(all="ignore"):
        med = np.nanmedian(sg, axis=0)
    idx = [int(round(e)) for e in snapshot_epochs]
    ax.plot(snapshot_epochs, med[idx], "*", color="C2", ms=12, mec="k", mew=0.5, label="SGDR snapshot (cycle end)")
    ax.legend(fontsize=8)

    x_steps = np.arange(epochs * spe) / spe  # epoch position of each update
    ax_lr.plot(x_steps, [cfg["fixed"]["lr"]] * len(x_steps), color="C0", lw=1.5, label=LABELS[FIXED])
    for i, r in enumerate(runs[PLATEAU]):
        lrs = r.lr_epoch
        ax_lr.step(np.arange(len(lrs) + 1), lrs + lrs[-1:], where="post", color="C1", lw=1.2, alpha=0.8,
                   label=f"{LABELS[PLATEAU]} (one line per seed)" if i == 0 else None)
    sgdr = sgdr_schedule(cfg, spe)
    ax_lr.plot(x_steps, [sgdr(s) for s in range(len(x_steps))], color="C2", lw=1.2, label="(c) SGDR")
    ax_lr.set_yscale("log")
    lows = [v for r in runs[PLATEAU] for v in r.lr_epoch] + [cfg["fixed"]["lr"], cfg["sgdr"]["lr"]]
    # SGDR's lr reaches eta_min (maybe 0) at cycle ends: clip there; leave room above for the legend
    ax_lr.set_ylim(min(lows) / 3, max(lows) * 30)
    ax_lr.set_xlim(ax.get_xlim())
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("learning rate (log)")
    ax_lr.set_title("Learning rate")
    ax_lr.grid(True, which="both", alpha=0.3)
    ax_lr.legend(fontsize=8, loc="upper center", ncol=3, framealpha=0.9)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_accuracy_bars(bars: Mapping[str, Sequence[float]], path: str | Path, title: str, dpi: int) -> Path:
    """One bar per model (mean ± std of ``bars[model]``, one value per seed, the mean written above), the
    seeds as dots; coloured by the model's name: (a), (b), ensemble, best single, other snapshots."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    names = list(bars)
    fig, ax = plt.subplots(figsize=(max(7.5, 0.9 * len(names) + 2), 5.5), dpi=dpi)
    colors = ["C0" if n.startswith("(a)") else "C1" if n.startswith("(b)") else "C3" if "ensemble" in n else
              "C4" if "validation" in n else "plum" if "best" in n else "C2" for n in names]
    means = [float(np.nanmean(bars[n])) for n in names]
    stds = [float(np.nanstd(bars[n], ddof=1)) if np.isfinite(bars[n]).sum() > 1 else 0.0 for n in names]
    xs = np.arange(len(names))
    ax.bar(xs, means, yerr=stds, color=colors, alpha=0.85, capsize=3)
    lo = np.nanmin([v for n in names for v in bars[n]])
    hi = np.nanmax([v for n in names for v in bars[n]])
    pad = 0.04 * (hi - lo + 0.01)
    for i, n in enumerate(names):
        vals = np.asarray(bars[n], dtype=float)
        ax.plot(xs[i] + np.linspace(-0.2, 0.2, len(vals)), vals, "k.", ms=4)
        top = np.nanmax([means[i] + stds[i], *vals])
        ax.text(xs[i], top + pad, f"{means[i]:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_ylim(max(0.0, lo - 6 * pad), min(1.0, hi + 8 * pad))
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("model")
    ax.set_ylabel("test accuracy (fraction correct)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(handles=[Patch(color="grey", alpha=0.6, label="bar: mean ± std over seeds (value above)"),
                       Line2D([], [], color="k", marker=".", ls="", label="one seed")], fontsize=8, loc="upper left")
    return save_figure(fig, path)
