"""Figures shared by the experiments and the evaluation: loss curves with seed bands, bar charts."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Lay out ``fig``, save it to ``path`` and close it; returns the path."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curves(curves: Mapping[str, np.ndarray], path: str | Path, *, title: str, xlabel: str = "step",
                ylabel: str = "training loss", logy: bool = True, x: Sequence[float] | None = None,
                band: str = "iqr", ax: plt.Axes | None = None) -> Path | None:
    """One line per label: the median over seeds (rows) with a band over seeds (columns are steps).

    ``band`` is ``"iqr"`` (25th-75th percentile) or ``"minmax"``. NaNs (a diverged seed's missing
    steps) are ignored per step. When ``ax`` is given, draws there and does not save.
    """
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    palette = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")  # a distinct colour per curve
    for i, (label, values) in enumerate(curves.items()):
        values = np.atleast_2d(np.asarray(values, dtype=float))
        xs = np.arange(1, values.shape[1] + 1) if x is None else np.asarray(x)
        with warnings.catch_warnings():  # all-NaN steps (every seed diverged) stay NaN, silently
            warnings.simplefilter("ignore", RuntimeWarning)
            mid = np.nanmedian(values, axis=0)
            lo, hi = ((np.nanpercentile(values, 25, axis=0), np.nanpercentile(values, 75, axis=0))
                      if band == "iqr" else (np.nanmin(values, axis=0), np.nanmax(values, axis=0)))
        n = values.shape[0]
        line, = ax.plot(xs, mid, label=f"{label} (n={n})" if n > 1 else label, lw=1.6, color=palette(i % palette.N),
                        ls="--" if str(label).endswith("@default") else "-")
        if n > 1:
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(curves) > 5 else 1)
    if own:
        return save_figure(fig, path)
    return None


def plot_meta_loss(run_dir: str | Path) -> Path | None:
    """``meta_loss.png`` from a meta-training run's ``metrics.jsonl``: meta-loss per meta-step and,
    where recorded, the validation loss on held-out tasks."""
    from ..runlog import read_jsonl
    run_dir = Path(run_dir)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in rows if isinstance(r.get("meta_loss"), (int, float))]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.plot([r["step"] for r in train], [r["meta_loss"] for r in train], lw=1, alpha=0.6,
            label="meta-loss of the meta-batch (training tasks; the saw-tooth is the\n"
                  "truncation's place in the horizon: early truncations have higher loss)")
    if len(train) >= 10:
        k = max(5, len(train) // 20)
        smooth = np.convolve([r["meta_loss"] for r in train], np.ones(k) / k, mode="valid")
        ax.plot([r["step"] for r in train][k - 1:], smooth, lw=2, label=f"running mean over {k} meta-steps")
    ax.set_xlabel("meta-step")
    ax.set_ylabel("meta-loss (as configured)")
    val = [r for r in rows if isinstance(r.get("val_loss"), (int, float))]
    if val:
        try:
            metric = (json.loads((run_dir / "config.json").read_text()).get("validation") or {}).get("metric")
        except (OSError, ValueError, AttributeError):
            metric = None
        what = ("mean log(loss / first loss)" if metric == "log_ratio" else "mean training loss")
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", color="C3",
                 label=f"held-out tasks: {what} over a horizon")
        ax2.set_ylabel(f"held-out {what}", color="C3")
    handles = [h for a in fig.axes for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper center", bbox_to_anchor=(0.5, -0.14),
              fontsize=8, ncol=1, frameon=False)
    ax.set_title(f"Meta-training ({run_dir.name})")
    ax.grid(True, alpha=0.3)
    return save_figure(fig, run_dir / "meta_loss.png")


def plot_meta_learned_lr(histories: Mapping[str, tuple[Sequence[int], Sequence[float]]],
                         grid_lrs: Sequence[float], grid_losses: np.ndarray, path: str | Path, *,
                         exact: tuple[Sequence[float], Sequence[float]] | None = None, title: str = "") -> Path:
    """Left: the meta-learned lr per meta-step for each estimator, with the grid optimum drawn.
    Right: the full-horizon objective over the lr grid (median and IQR over seeds; the exact
    expectation where known), with each estimator's final lr marked."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), dpi=110)
    grid_lrs = np.asarray(grid_lrs, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mid = np.nanmedian(grid_losses, axis=1)
        lo, hi = np.nanpercentile(grid_losses, 25, axis=1), np.nanpercentile(grid_losses, 75, axis=1)
    best = float(grid_lrs[np.nanargmin(mid)])
    for i, (name, (steps, lrs)) in enumerate(histories.items()):
        left.plot(steps, lrs, color=f"C{i}", lw=1.6, label=name)
        final = float(np.exp(np.mean(np.log(lrs[-max(1, len(lrs) // 10):]))))  # geometric mean, last 10%
        right.axvline(final, color=f"C{i}", ls=":", lw=1.5, label=f"{name}: final lr {final:.3g}")
    left.axhline(best, color="k", ls="--", lw=1.2, label=f"grid optimum (measured) {best:.3g}")
    if exact is not None:
        ex_lrs, ex_losses = np.asarray(exact[0]), np.asarray(exact[1])
        ex_best = float(ex_lrs[np.argmin(ex_losses)])
        left.axhline(ex_best, color="0.5", ls="-.", lw=1.2, label=f"optimum (exact expectation) {ex_best:.3g}")
        right.plot(ex_lrs, ex_losses, color="0.4", lw=1.2, label="exact expectation")
    right.plot(grid_lrs, mid, "o-", color="k", ms=3, lw=1, label="measured (median, IQR over seeds)")
    right.fill_between(grid_lrs, lo, hi, color="k", alpha=0.15, lw=0)
    left.set(xlabel="meta-step", ylabel="learning rate", yscale="log", title="meta-learned lr")
    right.set(xlabel="learning rate", ylabel="mean training loss over the full horizon", xscale="log",
              yscale="log", title="full-horizon objective over the lr grid")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
