"""Evaluation metrics on synthetic curves with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from learned_opt.evaluation import metrics as M


def test_auc_is_mean_loss_and_diverged_is_inf():
    assert M.auc([4.0, 2.0, 1.0, 1.0]) == 2.0
    assert M.auc(np.linspace(1, 0, 101)) == pytest.approx(0.5)
    assert M.auc([1.0, 0.5], budget=3) == math.inf          # stopped early (diverged)
    assert M.auc([1.0, float("nan"), 0.5]) == math.inf


def test_steps_to_target():
    curve = [1.0, 0.8, 0.6, 0.4, 0.2]
    assert M.steps_to_target(curve, 0.6) == 3.0
    assert M.steps_to_target(curve, 0.05) == math.inf
    # smoothing: a single noisy dip does not count when averaged over 2 steps
    assert M.steps_to_target([1.0, 0.1, 1.0, 0.3, 0.3], 0.35, smooth=2) == 5.0
    assert M.steps_to_target([1.0, 0.1, 1.0, 0.3, 0.3], 0.35) == 2.0


def test_normalized_score_and_final():
    assert M.normalized_score(0.5, 2.0) == 0.25
    assert M.normalized_score(math.inf, 2.0) == math.inf
    assert math.isnan(M.normalized_score(1.0, 0.0))
    assert M.final([3.0, 2.0, 1.0], 3) == 1.0 and M.final([3.0, 2.0, 1.0], 3, last=2) == 1.5
    assert M.final([3.0, 2.0], 3) == math.inf


def test_median_iqr_matches_numpy_and_handles_divergence():
    rng = np.random.default_rng(0)
    v = rng.normal(size=11)
    m, q1, q3 = M.median_iqr(v)
    assert (m, q1, q3) == pytest.approx(tuple(np.percentile(v, [50, 25, 75])))
    assert M.median_iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == (3.0, 2.0, 4.0)
    # two of five seeds diverged: the median is still finite, the upper quartile is not
    assert M.median_iqr([1.0, 2.0, 3.0, math.inf, math.inf]) == (3.0, 2.0, math.inf)
    assert M.median_iqr([1.0, math.inf, math.inf]) == (math.inf, math.inf, math.inf)
    assert M.median_iqr([1.0, 3.0, math.inf, math.inf])[0] == math.inf
    assert all(math.isnan(x) for x in M.median_iqr([]))


def test_wins_losses_paired_by_seed():
    assert M.wins_losses([1, 2, 3, 4], [2, 2, 1, 5]) == (2, 1, 1)
    assert M.fmt_median_iqr([1.0, math.inf, math.inf]) == "diverged"


def test_across_tasks_against_a_hand_computation():
    auc = {"a": {"adam@tuned": 2.0, "adam@default": 4.0, "x": 1.0, "y": 3.0},
           "b": {"adam@tuned": 1.0, "adam@default": 1.0, "x": 1.5, "y": math.inf},
           "c": {"adam@tuned": 0.5, "adam@default": 2.0, "x": 0.25}}          # y missing: left out
    div = {"a": {"x": 0}, "b": {"x": 0, "y": 5}, "c": {"x": 1}}
    out = M.across_tasks(auc, div, "adam@tuned", "adam@default")
    assert set(out) == {"adam@tuned", "adam@default", "x"}
    x = out["x"]
    assert x["geomean_vs_reference"] == pytest.approx((0.5 * 1.5 * 0.5) ** (1 / 3))
    assert x["worst_task"] == "b" and x["worst_vs_reference"] == pytest.approx(1.5)
    assert x["geomean_vs_baseline"] == pytest.approx((0.25 * 1.5 * 0.125) ** (1 / 3))
    assert x["diverged"] == 1 and x["tasks"] == 3
    assert out["adam@tuned"]["geomean_vs_reference"] == pytest.approx(1.0)
    auc["c"]["y"] = 0.5
    assert math.isinf(M.across_tasks(auc, div, "adam@tuned")["y"]["geomean_vs_reference"])  # a diverged task
    assert M.across_tasks(auc, div, "adam@tuned")["y"]["worst_task"] == "b"
    assert math.isnan(M.geometric_mean([1.0, -1.0])) and math.isnan(M.geometric_mean([]))


def test_padded_fills_nan_after_each_curve_and_cuts_long_ones():
    out = M.padded([[1.0, 2.0, 3.0], [4.0], [5.0, 6.0, 7.0, 8.0]], 3)
    np.testing.assert_array_equal(out[0], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(out[1], [4.0, np.nan, np.nan])
    np.testing.assert_array_equal(out[2], [5.0, 6.0, 7.0])
    assert M.padded([], 4).shape == (0, 4)
