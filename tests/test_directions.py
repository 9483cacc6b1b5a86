"""learned_opt.lecture.directions (experiments/radial_diagnostic.py): Adam measured against itself, and the
growth of every tensor by celo_backoff that the shipped rule's radial controller takes back."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import baselines as B
import learned_opt
from learned_opt.lecture.directions import direction_stats
from learned_opt.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]


def regression():
    return make_task("regression", dataset="mnist1d", hidden_sizes=[48], activation="tanh", outputs=4, batch_size=32)


def test_adam_steps_along_its_own_direction():
    stats, _ = direction_stats(B.Adam(lr=1e-3), regression(), 30, seed=1)
    for k, s in stats.items():
        assert s["cos_step_adam"] == pytest.approx(1.0, abs=1e-5), k
        assert s["cos_step_w"] == pytest.approx(s["cos_adam_w"], abs=1e-5), k


def test_celo_backoff_grows_the_first_layer_and_the_radial_controller_takes_it_back():
    task = regression()
    backoff, backoff_loss = direction_stats(learned_opt.load("celo_backoff"), task, 150, seed=950)
    radial, radial_loss = direction_stats(learned_opt.load("celo"), task, 150, seed=950)
    w = "layers.0.weight"
    assert backoff[w]["cos_step_w"] > 0.15 > abs(backoff[w]["cos_adam_w"])
    assert radial[w]["cos_step_w"] < 0.5 * backoff[w]["cos_step_w"]
    assert radial_loss < backoff_loss
    with pytest.raises(ValueError, match="steps"):
        direction_stats(B.Adam(lr=1e-3), task, 0, seed=1)


def test_the_script_prints_a_table_and_rejects_a_bad_task():
    ok = subprocess.run([sys.executable, str(ROOT / "experiments" / "radial_diagnostic.py"), "--rule", "adam",
                         "--steps", "5"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "| layers.0.weight | +1.000 |" in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, str(ROOT / "experiments" / "radial_diagnostic.py"), "--task",
                          '{"name": "nope"}'], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error" in bad.stderr
