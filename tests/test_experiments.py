"""Each experiment entry point, end to end on a tiny config (structure of its outputs checked)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_experiment(script: str, tmp_path: Path, *overrides: str, timeout: int = 300) -> Path:
    run_dir = tmp_path / script.replace(".py", "")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONHASHSEED": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / script), f"hydra.run.dir={run_dir}",
                           *overrides], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return run_dir


def table_rows(md: str) -> list[list[str]]:
    lines = [line for line in md.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_compare_baselines_tiny(tmp_path):
    run_dir = run_experiment("compare_baselines.py", tmp_path, "steps=15", "seeds=2")
    rows = table_rows((run_dir / "table.md").read_text())
    assert [r[0] for r in rows] == ["gd", "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"]
    results = json.loads((run_dir / "results.json").read_text())["results"]
    for name, res in results.items():
        assert len(res["final_train_loss"]) == 2 and all(0 < v < 2.5 for v in res["final_train_loss"]), name
        assert all(0 <= a <= 1 for a in res["test_accuracy"])
    assert (run_dir / "curves.png").stat().st_size > 10_000
    assert list((run_dir / "wandb").glob("offline-run-*"))


def test_compare_baselines_rejects_bad_config_before_work(tmp_path):
    run_dir = tmp_path / "bad"
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "compare_baselines.py"),
                           f"hydra.run.dir={run_dir}", "optimizers.adam.rule=adamax"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown optimizer 'adamax'" in proc.stderr and "allowed" in proc.stderr
    assert not (run_dir / "table.md").exists()
