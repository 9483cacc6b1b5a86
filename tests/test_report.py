"""Reports (learned_opt.evaluation.report) and the median history log (RunLogger.log_medians)."""
from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

from learned_opt.evaluation.report import compare, markdown_table, mean_std, paired_difference, smooth
from learned_opt.runlog import RunLogger, read_wandb_run


def test_mean_std_matches_statistics_and_counts_unreached_and_diverged_seeds():
    vals = [0.91, 0.93, 0.95]
    assert mean_std(vals) == f"{statistics.mean(vals):.4g} ± {statistics.stdev(vals):.2g}"
    assert mean_std([0.9, math.inf, math.nan, 0.92]) == \
        f"{statistics.mean([0.9, 0.92]):.4g} ± {statistics.stdev([0.9, 0.92]):.2g} (1/4 not reached; 1/4 diverged)"
    assert mean_std([math.inf, math.inf]) == "2/2 not reached"
    assert mean_std([5.0]) == "5 ± 0"


def test_compare_prefers_fewer_failed_seeds_then_the_mean_and_flags_noise():
    assert compare([1.0, 2.0], [1.0, math.inf], lower_is_better=True) == ("yes", "2/2 vs 1/2 seeds got there")
    assert compare([0.5, math.nan], [0.9, 0.9], lower_is_better=False)[0] == "no"  # a diverged seed loses
    verdict, detail = compare([1.0, 1.2], [1.1, 1.3], lower_is_better=True)
    assert verdict == "yes" and "within seed noise" in detail  # 0.1 apart, std 0.14
    assert compare([1.0, 1.01], [2.0, 2.01], lower_is_better=True) == ("yes", "1.005 vs 2.005")
    assert compare([math.inf], [math.inf], lower_is_better=True) == ("tie", "neither got there")


def test_paired_difference_counts_wins_ties_losses():
    out = paired_difference([0.9, 0.8, 0.7], [0.8, 0.8, 0.9], scale=100, unit=" points")
    d = np.array([10.0, 0.0, -20.0])
    assert out == (f"{d.mean():+.2f} points (better / tied / worse on 1 / 1 / 1 of 3 seeds; "
                   f"std of the difference {d.std(ddof=1):.2f})")


def test_smooth_is_a_trailing_mean_and_keeps_a_diverged_tail():
    row = [4.0, 2.0, 6.0, 8.0, math.nan, math.nan]
    expect = [4.0, 3.0, 4.0, (2 + 6 + 8) / 3, math.nan, math.nan]  # window 3, expanding at the start
    np.testing.assert_allclose(smooth(row, 3), expect, equal_nan=True)
    np.testing.assert_allclose(smooth(row[:4], 1), row[:4])


def test_markdown_table_renders_floats_to_four_digits():
    assert markdown_table(["a", "b"], [["x", 0.123456], ["y", 2]]) == "| a | b |\n|---|---|\n| x | 0.1235 |\n| y | 2 |\n"


def test_log_medians_writes_the_median_over_seeds_at_each_position(tmp_path):
    curves = {"loss": [[3.0, 2.0, 1.0], [5.0, 4.0], [4.0, 3.0, 2.0]],  # one run stopped early
              "acc": [[0.1, 0.5], [0.3, 0.7]]}
    with RunLogger(tmp_path, {"mode": "offline"}) as log:
        log.log_medians(curves, x={"acc": [0, 2]}, offset=10, step_key="position")
        wandb_dir = log.wandb_dir
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 10, "position": 0, "loss": 4.0, "acc": 0.2},
                    {"step": 11, "position": 1, "loss": 3.0},
                    {"step": 12, "position": 2, "loss": statistics.median([1.0, 2.0]), "acc": 0.6}]
    history = [r["history"]["item"] for r in read_wandb_run(wandb_dir) if r["type"] == "history"]
    assert [(r["_step"], r.get("loss"), r.get("acc")) for r in history] == \
        [(10, 4.0, pytest.approx(0.2)), (11, 3.0, None), (12, 1.5, pytest.approx(0.6))]
