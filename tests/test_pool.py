"""experiments/pool.py: across-tasks scores pooled over several evaluations, checked against numbers
computed here from the runs' own medians."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from learned_opt.evaluation.pool import pool, pooled_markdown

ROOT = Path(__file__).resolve().parents[1]


def fake_run(path: Path, medians: dict[str, dict[str, float]], diverged: dict[str, dict[str, int]] | None = None) -> Path:
    """A run dir whose summary.json holds the given per-task median AUCs (the only fields pool reads)."""
    tasks = {t: {"rows": {e: {"stats": {"auc": {"median": v}}, "diverged": (diverged or {}).get(t, {}).get(e, 0)}
                          for e, v in row.items()}} for t, row in medians.items()}
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"summary": {"tasks": tasks}}))
    return path


def test_pooled_scores_match_a_direct_computation(tmp_path):
    a = fake_run(tmp_path / "a", {"t1": {"adam@tuned": 1.0, "adam@default": 2.0, "x": 0.5, "only_a": 1.0},
                                  "t2": {"adam@tuned": 0.2, "adam@default": 0.3, "x": 0.3, "only_a": 1.0}},
                 diverged={"t2": {"x": 2}})
    b = fake_run(tmp_path / "b", {"u1": {"adam@tuned": 4.0, "adam@default": 4.0, "x": 4.4}})
    out = pool([("A", a), ("B", b)])
    x = out["across_tasks"]["x"]
    ratios = [0.5 / 1.0, 0.3 / 0.2, 4.4 / 4.0]
    assert x["geomean_vs_reference"] == pytest.approx(math.exp(sum(map(math.log, ratios)) / 3))
    assert x["geomean_vs_baseline"] == pytest.approx((0.5 / 2.0 * 0.3 / 0.3 * 4.4 / 4.0) ** (1 / 3))
    assert x["worst_task"] == "A/t2" and x["worst_vs_reference"] == pytest.approx(1.5)
    assert (x["wins"], x["above_threshold"], x["diverged"], x["tasks"]) == (1, 1, 2, 3)
    assert "only_a" not in out["across_tasks"]            # not in every run
    assert out["tasks"] == ["A/t1", "A/t2", "B/u1"]
    md = pooled_markdown(out)
    assert f"| x | {math.exp(sum(map(math.log, ratios)) / 3):.3g} | A/t2 (1.5) |" in md and "| 1 of 3 | 1 | 2 |" in md


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="summary.json"):
        pool([("a", tmp_path / "missing")])
    a = fake_run(tmp_path / "a", {"t": {"adam@tuned": 1.0, "x": 1.0}})
    with pytest.raises(ValueError, match="distinct"):
        pool([("a", a), ("a", a)])
    b = fake_run(tmp_path / "b", {"t": {"x": 1.0}})
    with pytest.raises(ValueError, match="adam@tuned"):
        pool([("a", a), ("b", b)])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="not an evaluation summary"):
        pool([("bad", tmp_path / "bad")])


def test_cli_writes_the_table_and_fails_cleanly(tmp_path):
    a = fake_run(tmp_path / "runs" / "set1" / "main", {"t": {"adam@tuned": 1.0, "adam@default": 2.0, "x": 0.8}})
    out = tmp_path / "pooled"
    ok = subprocess.run([sys.executable, str(ROOT / "experiments" / "pool.py"), str(out), str(a)],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "set1/t (0.8)" in (out / "summary.md").read_text()
    assert json.loads((out / "summary.json").read_text())["across_tasks"]["x"]["wins"] == 1
    bad = subprocess.run([sys.executable, str(ROOT / "experiments" / "pool.py"), str(out), str(tmp_path / "nope")],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "summary.json not found" in bad.stderr and "Traceback" not in bad.stderr
