"""Figures shared by the experiments and the evaluation: loss curves with seed bands, bar charts,
contours of a 2-D slice with trajectories on them (still or animated), loss along an interpolation."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import LogFormatterSciNotation, LogLocator  # noqa: E402


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


# --------------------------------------------------------------------------- contours of a 2-D slice

# Point kinds :func:`contour_plot` draws on top of the contours.
MARKERS = {
    "minimum": {"marker": "*", "ms": 17, "mfc": "gold", "mec": "black"},
    "local minimum": {"marker": "*", "ms": 17, "mfc": "silver", "mec": "black"},
    "saddle": {"marker": "X", "ms": 11, "mfc": "red", "mec": "black"},
    "start": {"marker": "o", "ms": 9, "mfc": "white", "mec": "black", "mew": 2},
}


def log_levels(z: np.ndarray, n: int) -> np.ndarray:
    """``n`` log-spaced contour levels for the positive values of ``z``: from its 0.2% quantile (at least
    ``max * 1e-9`` and ``1e-12``, so a few tiny values do not swallow the colour range) to its maximum;
    two levels around a flat ``z``. Non-finite values are ignored."""
    finite = np.asarray(z, dtype=float)[np.isfinite(z)]
    hi = float(finite.max())
    lo = max(float(np.quantile(finite, 0.002)), hi * 1e-9, 1e-12)
    if hi <= lo * 1.0001:
        return np.array([lo * 0.99, max(hi, lo) * 1.01])
    return np.logspace(np.log10(lo), np.log10(hi), n)


def contour_plot(ax: plt.Axes, xs: Sequence[float], ys: Sequence[float], z: np.ndarray, *, num_levels: int = 30,
                 log: bool = True, colorbar: str | None = None, markers: Sequence[tuple[str, float, float, str]] = (),
                 trajectories: Mapping[str, np.ndarray] | None = None, styles: Mapping[str, str] | None = None,
                 equal_aspect: bool = False, title: str = "", xlabel: str = "x", ylabel: str = "y",
                 legend: Mapping | None = None) -> dict[str, tuple[Line2D, Line2D]]:
    """Filled contours of ``z[i, j]`` at ``(xs[j], ys[i])`` on ``ax``, with points and trajectories on top.

    ``log``: log-spaced levels (:func:`log_levels`; for positive ``z``, lower values take the lowest
    colour), else ``num_levels`` linear ones. ``colorbar``: its label (None: no colour bar).
    ``markers``: ``(kind, x, y, label)`` with ``kind`` a key of :data:`MARKERS`; a label repeated is
    listed once in the legend. ``trajectories``: label -> ``(T, 2)`` points, each drawn as a line in its
    own colour (``styles[label]``: a matplotlib format string, default ``"-"``) ending in a dot.
    The axes span the grid; ``legend`` holds ``ax.legend``'s arguments (None: no legend).
    Returns label -> (line, end dot) per trajectory, the handles an animation moves.
    """
    xs, ys, z = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), np.asarray(z, dtype=float)
    if log:
        levels = log_levels(z, num_levels)
        norm, z, extend = LogNorm(vmin=levels[0], vmax=levels[-1]), np.maximum(z, 0.5 * levels[0]), "min"
    else:
        levels, norm, extend = num_levels, None, "neither"
    filled = ax.contourf(xs, ys, z, levels=levels, norm=norm, cmap="viridis", alpha=0.6, extend=extend)
    ax.contour(xs, ys, z, levels=filled.levels, norm=norm, colors="black", linewidths=0.4, alpha=0.3)
    if colorbar is not None:
        cb = ax.figure.colorbar(filled, ax=ax, shrink=0.9, pad=0.02)
        cb.set_label(colorbar)
        if log:
            cb.ax.yaxis.set_major_locator(LogLocator())
            cb.ax.yaxis.set_major_formatter(LogFormatterSciNotation())
    listed = set()
    for kind, x, y, label in markers:
        ax.plot(x, y, ls="none", zorder=6, label="_nolegend_" if label in listed else label, **MARKERS[kind])
        listed.add(label)
    handles = {}
    colors = plt.get_cmap("tab10").colors
    for k, (label, xy) in enumerate((trajectories or {}).items()):
        xy = np.asarray(xy, dtype=float)
        line, = ax.plot(xy[:, 0], xy[:, 1], (styles or {}).get(label, "-"), color=colors[k % 10], lw=1.6, ms=2.5,
                        alpha=0.9, label=label, zorder=4)
        head, = ax.plot(xy[-1:, 0], xy[-1:, 1], "o", color=colors[k % 10], ms=5, mec="black", mew=0.5, zorder=5)
        handles[label] = (line, head)
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(ys[0], ys[-1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if equal_aspect:
        ax.set_aspect("equal", adjustable="box")
    if title:
        ax.set_title(title, fontsize=10)
    if legend is not None:
        ax.legend(**legend)
    return handles


def animate_contour(xs: Sequence[float], ys: Sequence[float], z: np.ndarray, trajectories: Mapping[str, np.ndarray],
                    path: str | Path, *, frames: int, fps: float = 12, dpi: float = 70,
                    figsize: tuple[float, float] = (7, 7), title: str = "", **contour: object) -> Path:
    """A GIF of :func:`contour_plot` (``contour`` holds its other arguments) with the trajectories drawn
    step by step: ``frames`` evenly spaced steps of the longest one, shorter ones stopping at their end."""
    from matplotlib.animation import PillowWriter

    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    handles = contour_plot(ax, xs, ys, z, trajectories=trajectories, title=title, **contour)
    fig.tight_layout()
    longest = max(len(xy) for xy in trajectories.values())
    steps = np.unique(np.linspace(0, longest - 1, min(frames, longest)).round().astype(int))
    writer = PillowWriter(fps=fps)
    with writer.saving(fig, str(path), dpi=dpi):  # one full draw per frame, no FuncAnimation redraws
        for step in steps:
            for label, xy in trajectories.items():
                xy, upto = np.asarray(xy, dtype=float), min(int(step), len(xy) - 1)
                line, head = handles[label]
                line.set_data(xy[:upto + 1, 0], xy[:upto + 1, 1])
                head.set_data(xy[upto:upto + 1, 0], xy[upto:upto + 1, 1])
            ax.set_title(f"{title} (step {step}/{longest - 1})", fontsize=10)
            writer.grab_frame()
    plt.close(fig)
    return Path(path)


def plot_interpolation(alphas: Sequence[float], curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                       path: str | Path, *, title: str, ylabel: str = "loss", logy: bool = True,
                       figsize: tuple[float, float] = (7, 5), dpi: float = 110) -> Path:
    """Loss along ``(1 - alpha) theta_0 + alpha theta_T``: per label a (train, test) pair of curves, train
    solid and test dashed in one colour, with the endpoints alpha = 0 and 1 marked."""
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    colors = plt.get_cmap("tab10").colors
    for k, (label, (train, test)) in enumerate(curves.items()):
        ax.plot(alphas, train, "-", color=colors[k % 10], lw=1.8, label=f"{label}: train")
        ax.plot(alphas, test, "--", color=colors[k % 10], lw=1.5, label=f"{label}: test")
    for a, name in ((0, r"$\theta_0$"), (1, r"$\theta_T$")):
        ax.axvline(a, color="grey", ls=":", lw=1)
        ax.text(a, 1.01, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=9)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(r"$\alpha$  (weights $(1-\alpha)\,\theta_0 + \alpha\,\theta_T$)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10, pad=16)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return save_figure(fig, path)
