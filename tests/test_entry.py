"""learned_opt.entry: every entry point sets its CPU threads first, and a run that fails on its input prints one
line (no traceback), exits with status 2 and leaves no run directory behind."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from learned_opt.entry import set_threads
from learned_opt.schema import ConfigError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def run(script: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "experiments" / script), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=180)


def run_dirs(cwd: Path) -> list[Path]:
    """Everything under ``cwd/runs`` (run directories are ``runs/<config>/[<rule>_<family>/]<time>``)."""
    return sorted((cwd / "runs").rglob("*"))


@pytest.mark.parametrize("script, args, message", [
    ("quickstart.py", ["meta_steps=-1"], "meta_steps=-1 is not allowed"),
    ("meta_train.py", ["meta.steps=-1"], "meta.steps=-1 is not allowed"),
    ("evaluate.py", ["tuning.method=bayes"], "tuning.method='bayes' is not allowed; allowed: grid, random"),
    ("evaluate.py", ["+optimizers.mine.checkpoint=no_such_file.pt"], "no_such_file.pt"),
    ("evaluate.py", ["threads=0"], "threads=0 is not allowed"),
])
def test_an_input_error_is_one_line_and_leaves_no_run_directory(tmp_path, script, args, message):
    proc = run(script, tmp_path, *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{script}: error: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert run_dirs(tmp_path) == []


def test_a_directory_that_holds_work_is_kept_when_the_input_is_refused(tmp_path):
    run_dir = tmp_path / "runs" / "evaluate" / "earlier"
    run_dir.mkdir(parents=True)
    (run_dir / "results.csv").write_text("optimizer,task\n")
    proc = run("evaluate.py", tmp_path, f"hydra.run.dir={run_dir}", "resume=true", "steps=0")
    assert proc.returncode == 2 and "steps=0 is not allowed" in proc.stderr and "Traceback" not in proc.stderr
    assert (run_dir / "results.csv").read_text() == "optimizer,task\n"


def test_an_argparse_entry_point_reports_in_the_same_form(tmp_path):
    proc = run("pool.py", tmp_path, str(tmp_path / "out"), f"a={tmp_path / 'missing'}", "--threads", "1")
    assert proc.returncode == 2 and proc.stderr.startswith("pool.py: error: ") and "Traceback" not in proc.stderr
    proc = run("pool.py", tmp_path, str(tmp_path / "out"), f"a={tmp_path / 'missing'}", "--threads", "0")
    assert proc.returncode == 2 and "threads=0 is not allowed" in proc.stderr


def test_threads_are_set_before_the_job_and_taken_out_of_its_config(tmp_path):
    """A Hydra job under ``hydra_entry`` runs with ``threads`` torch threads and never sees the key."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "job.yaml").write_text("threads: 1\nanswer: 42\n")
    (tmp_path / "job.py").write_text(textwrap.dedent("""
        import hydra, torch
        from learned_opt.entry import hydra_entry

        @hydra.main(config_path="conf", config_name="job", version_base="1.3")
        @hydra_entry("job.py")
        def main(cfg):
            print("threads", torch.get_num_threads(), "keys", sorted(cfg))

        main()
    """))
    for threads in (1, 3):
        proc = subprocess.run([sys.executable, "job.py", f"threads={threads}", f"hydra.run.dir={tmp_path / 'r'}"],
                              cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"threads {threads} keys ['answer']" in proc.stdout


def test_set_threads_checks_its_value():
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(None)  # torch's own choice is left alone
        assert torch.get_num_threads() == 1
        for bad in (0, -2, 1.5, "2", True):
            with pytest.raises(ConfigError, match=r"threads=.* is not allowed; allowed: an integer >= 1"):
                set_threads(bad)
    finally:
        torch.set_num_threads(before)
