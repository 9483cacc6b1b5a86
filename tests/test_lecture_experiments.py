"""The lecture's experiments (Adam paper figures, CLR, restarts + snapshot ensembles), end to end on tiny configs.

Each script runs in a subprocess with tiny overrides (the structure of its outputs is checked, not the
numbers); the restarts procedure's config checks and verdicts are also checked through its library module
(its epoch training and snapshot ensembles have their own tests: test_epochs.py, test_ensembles.py), as the
CLR procedure is in test_range_test.py and test_cyclical.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONHASHSEED": "0"}


def run_experiment(script: str, tmp_path: Path, *overrides: str, ok: bool = True,
                   timeout: int = 300) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path / script.replace(".py", "")
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / script), f"hydra.run.dir={run_dir}",
                           "threads=1", *overrides], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return run_dir, proc


def tables(md: str) -> list[list[list[str]]]:
    """Every markdown table in ``md`` as its list of body rows."""
    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("|---"):
            body, i = [], i + 1
            while i < len(lines) and lines[i].startswith("|"):
                body.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            out.append(body)
        else:
            i += 1
    return out


def assert_figure(path: Path, min_bytes: int = 20_000) -> None:
    assert path.is_file(), f"missing {path.name}"
    assert path.stat().st_size > min_bytes, f"{path.name} is only {path.stat().st_size} bytes"


def assert_wandb_run(run_dir: Path) -> None:
    assert list((run_dir / "wandb").glob("offline-run-*")), f"no offline W&B run under {run_dir / 'wandb'}"


# --------------------------------------------------------------------------- end to end
def test_adam_paper_tiny(tmp_path):
    run_dir, _ = run_experiment("adam_paper.py", tmp_path, "dataset=digits", "hidden_sizes=[16,16]", "steps=12",
                                "seeds=[100]", "tuning.budget=2", "eval_every=6", "progress=false")
    md = (run_dir / "table.md").read_text()
    per_task = tables(md)
    assert len(per_task) == 2  # logreg and the MLP
    for rows in per_task:
        assert [r[0] for r in rows] == ["AdaGrad", "RMSProp", "SGDNesterov", "AdaDelta", "Adam"]
        assert all(float(r[1]) > 0 for r in rows)  # the tuned lr
    assert md.count("Lowest mean training cost") == 2
    assert_figure(run_dir / "adam_paper.png")
    assert (run_dir / "summary.md").is_file() and (run_dir / "results.csv").is_file()  # the shared evaluation's
    results = json.loads((run_dir / "results.json").read_text())["results"]
    assert set(results["tasks"]) == {"logreg", "mlp"}
    assert_wandb_run(run_dir)


def test_clr_tiny(tmp_path):
    run_dir, proc = run_experiment("clr.py", tmp_path, "task.dataset=digits", "task.hidden_sizes=[16]",
                                   "seeds=[100,101]", "range_test.num_steps=40", "clr.epochs_per_half_cycle=1",
                                   "clr.cycles=1", "tuning.budget=2", "eval_every=4", "targets.test_accuracy=0.5")
    md = (run_dir / "table.md").read_text()
    (rows,) = tables(md)
    assert [r[0].split(" ")[0] for r in rows] == ["Nesterov", "Adam", "Nesterov,"]
    assert "CLR" in rows[0][0] and "fixed" in rows[2][0]
    assert "Does Nesterov + CLR reach a lower loss / higher accuracy faster than Adam" in md
    assert "Does Nesterov + CLR reach" in proc.stdout
    results = json.loads((run_dir / "results.json").read_text())
    rt = results["range_test"]
    assert rt["suggested_min_lr"] < rt["suggested_max_lr"]
    assert rt["clr_bounds"][0] < rt["clr_bounds"][1]
    assert results["steps"] == 2 * results["step_size"] == 2 * results["steps_per_epoch"]  # 1 cycle, 1 epoch up
    for v in results["variants"].values():
        assert len(v["test_accuracy"]) == 2 and all(0 <= a <= 1 for a in v["test_accuracy"])
    assert_figure(run_dir / "range_test.png")
    assert_figure(run_dir / "clr.png")
    assert_wandb_run(run_dir)


def test_restarts_tiny(tmp_path):
    run_dir, _ = run_experiment("restarts.py", tmp_path, "task.dataset=digits", "task.hidden_sizes=[16]",
                                "seeds=[100,101]", "epochs=4", "sgdr.cycle_epochs=2", "plateau.patience=0")
    md = (run_dir / "table.md").read_text()
    test_rows, val_rows = tables(md)
    names = [r[0] for r in test_rows]
    assert names[:3] == ["(a) fixed lr", "(b) reduce-on-plateau", "(c) SGDR (last iterate)"]
    assert sum(n.startswith("snapshot ") and "ensemble" not in n for n in names) == 2  # epochs / cycle_epochs
    assert any(n.startswith("best single snapshot") for n in names)
    assert any(n.startswith("snapshot ensemble (last 2 of 2") for n in names)
    assert [r[0] for r in val_rows] == ["(a) fixed lr", "(b) reduce-on-plateau", "(c) SGDR (last iterate)"]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["snapshots"] == 2
    for r in results["runs"]["plateau"]:
        assert len(r["val_loss"]) == 5  # before training and after each of the 4 epochs
    assert_figure(run_dir / "validation.png")
    assert_figure(run_dir / "test_accuracy.png")
    assert_wandb_run(run_dir)


@pytest.mark.parametrize("script, override, message", [
    ("clr.py", "clr.cycles=0", "clr.cycles=0"),
    ("restarts.py", "sgdr.cycle_epochs=100", "sgdr.cycle_epochs=100 is not allowed"),
])
def test_bad_config_is_rejected_before_any_work(tmp_path, script, override, message):
    run_dir, proc = run_experiment(script, tmp_path, override, ok=False, timeout=120)
    assert proc.returncode != 0 and message in proc.stderr
    assert not (run_dir / "table.md").exists() and not list(run_dir.glob("*.png"))


# --------------------------------------------------------------------------- direct checks
@pytest.mark.parametrize("change, message", [
    ({"epochs": 0}, "epochs=0 is not allowed; allowed: an integer >= 1"),
    ({"epoch": 10}, "epoch=10: unknown key (nothing reads it); did you mean epochs?"),
    ({"val_fraction": 1.0}, "val_fraction=1.0 is not allowed; allowed: a finite number in (0, 1)"),
    ({"rule": "adam"}, "rule='adam' is not allowed; allowed: momentum, nesterov, sgd"),
    ({"seeds": [1, 1]}, "seeds=[1, 1] is not allowed; allowed: distinct values"),
    ({"sgdr": {"lr": 0.1, "cycle_epochs": 10, "T_mult": 1, "eta_min": 0.5}}, "sgdr.eta_min=0.5 is not allowed"),
    ({"plateau": {"lr": 0.1, "patients": 3}}, "plateau.patients=3: ReduceOnPlateau takes no option 'patients'"),
    ({"plateau": {"lr": 0.1, "factor": 2.0}}, "plateau (ReduceOnPlateau): factor=2.0 is not allowed"),
    ({"ensemble": {"last": 0}}, "ensemble.last=0 is not allowed"),
    ({"figure": {"band": "std", "dpi": 110}}, "figure.band='std' is not allowed; allowed: iqr, minmax"),
])
def test_restarts_config_is_checked_before_any_task_is_built(monkeypatch, change, message):
    from test_experiments import composed_config

    from learned_opt.evaluation import suite
    from learned_opt.lecture import restarts
    from learned_opt.schema import ConfigError

    def no_work(*args, **kwargs):
        raise AssertionError("a task was built before the config was checked")
    monkeypatch.setattr(suite, "TASKS", {name: no_work for name in suite.TASKS})  # (build_task's)
    monkeypatch.setattr(restarts, "validation_task", no_work)
    with pytest.raises(ConfigError) as e:
        restarts.check_config({**composed_config("restarts", resolve=True), **change})
    assert message in str(e.value)


def test_restarts_rejects_a_task_without_classes():
    from test_experiments import composed_config

    from learned_opt.lecture.restarts import check_config
    from learned_opt.schema import ConfigError
    with pytest.raises(ConfigError, match="task.name='quadratic' is not allowed; allowed: a classifier"):
        check_config({**composed_config("restarts", resolve=True), "task": {"name": "quadratic", "dim": 3}})


def test_restarts_verdicts_are_points_of_accuracy_with_the_ensemble_as_subject():
    from learned_opt.lecture.restarts import RestartsResult
    score = [{"accuracy": a, "loss": 0.3} for a in (0.94, 0.94)]
    test = {"(a) fixed lr": score, "(b) reduce-on-plateau": [{"accuracy": 0.96, "loss": 0.2}] * 2,
            "best single snapshot (by validation loss)": score,
            "best single snapshot (by test accuracy, optimistic)": score,
            "snapshot ensemble (last 3 of 3, mean softmax)": [{"accuracy": a, "loss": 0.2} for a in (0.95, 0.94)]}
    result = RestartsResult(config={}, task_name="t", train_examples=10, steps_per_epoch=1, runs={},
                            snapshot_steps=[[0, 1, 2]], snapshots=3, ensemble_size=3, test=test, seconds=0.0)
    same = "+0.50 points (ensemble better / tied / worse on 1 / 1 / 0 of 2 seeds; std of the difference 0.71)"
    assert result.verdicts() == [
        f"- ensemble vs best single snapshot (by validation loss): {same}",
        f"- ensemble vs best single snapshot (by test accuracy, optimistic): {same}",
        f"- ensemble vs (a) fixed lr: {same}",
        "- ensemble vs (b) reduce-on-plateau: -1.50 points (ensemble better / tied / worse on 0 / 0 / 2 of 2 seeds; "
        "std of the difference 0.71)"]
    assert list(result.bars()) == ["(a) fixed lr", "(b) reduce-on-plateau",
                                   "best single snapshot (by validation loss)",
                                   "best single snapshot (by test accuracy, optimistic)",
                                   "snapshot ensemble (last 3 of 3, mean softmax)"]
