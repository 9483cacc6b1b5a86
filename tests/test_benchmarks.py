"""Smoke runs of the benchmarks: each runs with --quick, prints a markdown table and writes table.md."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ["bench_meta_step", "bench_vs_higher", "bench_population", "bench_flops", "bench_memory", "bench_estimators",
              "bench_celo_step", "bench_fused_pes"]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_quick_run_prints_a_table(name, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "benchmarks" / f"{name}.py"), "--quick",
                          "--threads", "1", "--device", "cpu", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "|---" in out.stdout and "Machine:" in out.stdout
    table = (tmp_path / "table.md").read_text()
    assert table.count("\n|") >= 3
