"""The shared figures: contours of a 2-D slice with points and trajectories (still and animated), interpolation."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import LogNorm
from PIL import Image

from learned_opt.evaluation import plots


def bowl(n: int = 30):
    xs, ys = np.linspace(-2, 2, n), np.linspace(-1, 3, n + 5)
    X, Y = np.meshgrid(xs, ys)
    return xs, ys, 0.5 * X ** 2 + 2 * (Y - 1) ** 2 + 1e-3


def test_log_levels_span_the_values_geometrically():
    z = np.logspace(-3, 3, 1001)
    levels = plots.log_levels(z, 7)
    assert len(levels) == 7 and levels[-1] == pytest.approx(1e3)
    assert levels[0] == pytest.approx(np.quantile(z, 0.002))  # the 0.2% quantile, not the smallest value
    np.testing.assert_allclose(levels[1:] / levels[:-1], levels[1] / levels[0])  # equal ratios
    tiny = np.concatenate([z, [1e-30, np.nan, np.inf]])  # one tiny value, non-finite ones ignored
    assert plots.log_levels(tiny, 7)[0] >= 1e3 * 1e-9 and np.isfinite(plots.log_levels(tiny, 7)).all()
    flat = plots.log_levels(np.full((4, 4), 2.0), 7)
    assert len(flat) == 2 and flat[0] < 2.0 < flat[1]


def test_contour_plot_draws_the_trajectories_points_and_levels():
    xs, ys, z = bowl()
    a = np.array([[-1.5, 2.5], [-1.0, 2.0], [0.0, 1.0]])
    b = np.array([[1.5, 0.0], [0.5, 0.5]])
    fig, ax = plt.subplots()
    handles = plots.contour_plot(ax, xs, ys, z, num_levels=9, colorbar="loss", styles={"b": "--"},
                                 trajectories={"a": a, "b": b}, title="t", legend={},
                                 markers=[("minimum", 0.0, 1.0, "min"), ("saddle", 1.0, 1.0, "saddle"),
                                          ("saddle", -1.0, 1.0, "saddle"), ("start", -1.5, 2.5, "start")])
    assert list(handles) == ["a", "b"]
    for label, xy in (("a", a), ("b", b)):
        line, head = handles[label]
        np.testing.assert_array_equal(line.get_xdata(), xy[:, 0])
        np.testing.assert_array_equal(line.get_ydata(), xy[:, 1])
        np.testing.assert_array_equal(np.c_[head.get_xdata(), head.get_ydata()], xy[-1:])  # ends in a dot
        assert line.get_label() == label
    assert handles["b"][0].get_linestyle() == "--" and handles["a"][0].get_linestyle() == "-"
    assert handles["a"][0].get_color() != handles["b"][0].get_color()
    stars = [ln for ln in ax.lines if ln.get_marker() == "*"]
    assert len(stars) == 1 and (stars[0].get_xdata()[0], stars[0].get_ydata()[0]) == (0.0, 1.0)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["min", "saddle", "start", "a", "b"]  # listed once
    assert ax.get_xlim() == (-2.0, 2.0) and ax.get_ylim() == (-1.0, 3.0)  # the grid, not the data's reach
    filled = ax.collections[0]
    assert isinstance(filled.norm, LogNorm)
    np.testing.assert_allclose(filled.levels, plots.log_levels(z, 9))
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "loss" and ax.get_title() == "t"
    plt.close(fig)


def test_contour_plot_with_linear_levels_and_no_colorbar():
    xs, ys, z = bowl()
    fig, ax = plt.subplots()
    assert plots.contour_plot(ax, xs, ys, z - 5, num_levels=6, log=False, equal_aspect=True) == {}
    assert ax.collections[0].norm is not None and not isinstance(ax.collections[0].norm, LogNorm)
    assert ax.collections[0].levels[0] <= (z - 5).min() and ax.collections[0].levels[-1] >= (z - 5).max()
    assert len(fig.axes) == 1 and ax.get_aspect() == 1.0 and ax.get_legend() is None
    plt.close(fig)


def test_animate_contour_writes_one_frame_per_chosen_step(tmp_path):
    xs, ys, z = bowl(20)
    long = np.c_[np.linspace(-1.5, 0, 31), np.linspace(2.5, 1, 31)]
    path = plots.animate_contour(xs, ys, z, {"long": long, "short": long[:4]}, tmp_path / "a.gif", frames=5,
                                 fps=10, dpi=40, figsize=(3, 3), num_levels=5, title="anim")
    with Image.open(path) as gif:
        assert gif.n_frames == 5
    path = plots.animate_contour(xs, ys, z, {"tiny": long[:3]}, tmp_path / "b.gif", frames=5, dpi=40,
                                 figsize=(3, 3), num_levels=5)
    with Image.open(path) as gif:
        assert gif.n_frames == 3  # never more frames than points


def test_plot_interpolation_draws_train_and_test_per_label(tmp_path, monkeypatch):
    saved = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: saved.update(fig=fig, path=path) or path)
    alphas = np.linspace(-0.5, 1.5, 5)
    curves = {"sgd": (alphas ** 2 + 1, alphas ** 2 + 2), "adam": (alphas + 3, alphas + 4)}
    plots.plot_interpolation(alphas, curves, tmp_path / "i.png", title="interp")
    ax = saved["fig"].axes[0]
    data = {ln.get_label(): ln for ln in ax.lines if not ln.get_label().startswith("_")}
    assert list(data) == ["sgd: train", "sgd: test", "adam: train", "adam: test"]
    np.testing.assert_array_equal(data["adam: test"].get_ydata(), alphas + 4)
    assert data["sgd: test"].get_linestyle() == "--" and data["sgd: test"].get_color() == data["sgd: train"].get_color()
    assert ax.get_yscale() == "log" and saved["path"] == tmp_path / "i.png"
    plt.close(saved["fig"])
