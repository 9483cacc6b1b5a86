"""Each experiment entry point, end to end on a tiny config (structure of its outputs checked)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_experiment(script: str, tmp_path: Path, *overrides: str, timeout: int = 300,
                   config_name: str | None = None) -> Path:
    run_dir = tmp_path / script.replace(".py", "")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONHASHSEED": "0"}
    name = ["--config-name", config_name] if config_name else []
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / script), *name, f"hydra.run.dir={run_dir}",
                           *overrides], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return run_dir


def composed_config(name: str, resolve: bool = False) -> dict:
    """``configs/<name>.yaml`` as its entry point sees it (its `defaults:` applied, and `threads` taken out by
    ``learned_opt.entry.hydra_entry``, which sets it before the entry point runs)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        config = OmegaConf.to_container(compose(config_name=name), resolve=resolve)
    config.pop("threads", None)
    return config


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
    assert proc.returncode != 0 and "rule='adamax' is not allowed" in proc.stderr and "allowed" in proc.stderr
    assert not (run_dir / "table.md").exists()


def test_meta_train_script_tiny_and_resume_alias(tmp_path):
    run_dir = run_experiment("meta_train.py", tmp_path, "family=quadratic", "meta.steps=3", "meta.horizon=10",
                             "meta.truncation=5", "meta.tasks_per_step=1", "validation.every=3", "validation.tasks=1",
                             "validation.steps=10", "checkpoint_every=2")
    assert (run_dir / "checkpoint.pt").exists() and (run_dir / "meta_loss.png").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["meta_steps"] == 3 and summary["skipped_steps"] == 0
    # --resume RUN_DIR replays the run's own overrides; a longer budget continues the same run
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "meta_train.py"), "--resume", str(run_dir),
                           "meta.steps=5"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    # a rejected override is reported in one line and not recorded; a finished run is left as it is
    recorded = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "meta.steps=5" in recorded
    files = {p: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    for extra, code in ((["meta.lr=0.01"], 2), ([], 0)):
        proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "meta_train.py"), "--resume", str(run_dir),
                               *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == code, proc.stderr[-3000:]
        assert (run_dir / ".hydra" / "overrides.yaml").read_text() == recorded
        assert {p: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == files
        if code:
            assert "meta.lr: checkpoint 0.003 vs now 0.01" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(proc.stdout[proc.stdout.index("{"):])["meta_steps"] == 5


def test_meta_train_script_stops_on_sigterm_with_a_checkpoint_and_a_clear_message(tmp_path):
    import signal
    import time
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "meta_train.py"), f"hydra.run.dir={run_dir}",
                             "family=quadratic", "optimizer=learned_adam", "meta.steps=100000", "meta.horizon=10",
                             "meta.truncation=5", "meta.tasks_per_step=1", "validation.every=0",
                             "checkpoint_every=0", "wandb.mode=disabled", "progress=false"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not ((run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().count("\n") >= 3):
        assert proc.poll() is None and time.time() - t0 < 240, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # what a cluster sends on preemption
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    from learned_opt.meta.checkpoint import load_checkpoint
    step = load_checkpoint(run_dir / "checkpoint.pt")["meta_step"]
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert step == last >= 3
    assert f"SIGTERM received: meta-training stopped after meta-step {step}" in err
    assert f"--resume {run_dir}" in err and "Traceback" not in err
    assert not (run_dir / ".lock").exists()


def test_quickstart_tiny(tmp_path):
    run_dir = run_experiment("quickstart.py", tmp_path, "meta_steps=2", "eval_steps=8",
                             'meta_train_overrides=["validation.every=0","meta.tasks_per_step=1"]',
                             'evaluate_overrides=["seeds=[100,101]","tuning.budget=2","tuning.seeds=[0]",'
                             '"~suite.digits_mlp_relu","~suite.digits_mlp_2layer"]')
    md = (run_dir / "evaluate" / "summary.md").read_text()
    names = [r[0] for r in table_rows(md.split("### digits_mlp_sigmoid")[1].split("###")[0])]
    assert {"mlp_lopt", "celo_radial", "adam@tuned", "sgd@default"} <= set(names)
    assert (run_dir / "meta_train" / "checkpoint.pt").exists()
    assert (run_dir / "evaluate" / "scores.png").exists()
    assert list((run_dir / "evaluate" / "wandb_runs" / "wandb").glob("offline-run-*"))


def ranking(md: str) -> dict[str, list[int]]:
    section = md.split("### Ranking by mean training loss")[1].split("###")[0]
    return {r[0]: [int(x) for x in r[1:]] for r in table_rows(section)}


def test_no_single_best_config_tiny(tmp_path):
    run_dir = run_experiment("evaluate.py", tmp_path, *("steps=10", "seeds=[100]",
                             "tuning.budget=2", "tuning.seeds=[0]", "eval_every=0", "~suite.mnist5k_conv",
                             "~suite.mnist1d_mlp", "~suite.digits_mlp"), config_name="no_single_best")
    ranks = ranking((run_dir / "summary.md").read_text())
    rules = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "adadelta"]
    assert sorted(ranks) == sorted(f"{r}@{v}" for r in rules for v in ("default", "tuned"))
    for column in zip(*ranks.values()):  # each task ranks all 16 entries (ties share a rank)
        assert len(column) == 16 and min(column) == 1 and max(column) <= 16
    assert (run_dir / "ranks.png").stat().st_size > 10_000


def test_learning_to_learn_config_tiny(tmp_path):
    """The learning-to-learn comparison runs from the committed pretrained optimizers (tiny budget)."""
    for name in ("lstm", "mlp", "learned_adam", "mlp_invariant", "lstm_paper"):
        assert (ROOT / "learned_opt" / "pretrained" / f"{name}_l2l_mnist.pt").exists(), name
    run_dir = run_experiment("evaluate.py", tmp_path, *("steps=5",
                             "seeds=[100]", "tuning.budget=2", "tuning.seeds=[0]", "eval_every=0",
                             "~suite.steps_200", "~suite.units_40", "~suite.two_layers", "~suite.relu",
                             *(f"optimizers.{k}.checkpoint={ROOT}/learned_opt/pretrained/{v}_l2l_mnist.pt"
                               for k, v in (("lstm", "lstm"), ("mlp_lopt", "mlp"), ("learned_adam", "learned_adam"),
                                            ("mlp_lopt_invariant", "mlp_invariant"), ("lstm_paper", "lstm_paper")))),
                             config_name="learning_to_learn")
    ranks = ranking((run_dir / "summary.md").read_text())
    assert {"lstm", "lstm_paper", "mlp_lopt", "mlp_lopt_invariant", "learned_adam", "adam@tuned", "nesterov@tuned"} <= set(ranks)


def test_hydra_multirun_sweep_runs_every_grid_point(tmp_path):
    """A sweep is Hydra's multirun: one run directory per grid point, each a complete meta-training run."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "meta_train.py"), "-m", "family=quadratic",
                           "optimizer=learned_adam,mlp", "seed=0,1", "meta.steps=2", "meta.horizon=10",
                           "meta.truncation=5", "meta.tasks_per_step=1", "validation.every=0", "progress=false",
                           "wandb.mode=disabled", f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert len(runs) == 4
    seen = set()
    for run in runs:
        cfg = json.loads(load_config_of(run))
        seen.add((cfg["optimizer"]["name"], cfg["seed"]))
        assert json.loads((run / "summary.json").read_text())["meta_steps"] == 2
    assert seen == {(o, s) for o in ("learned_adam", "mlp") for s in (0, 1)}


def load_config_of(run: Path) -> str:
    import torch
    return torch.load(run / "checkpoint.pt", weights_only=True)["config"]


def test_validate_scores_agree_with_the_meta_trainers_validation(tmp_path):
    """validate.py on the meta-trainer's own validation seeds reproduces its validation loss (computed
    in-process by learned_opt.meta.trainer.validation_loss), for a shipped optimizer found by short name."""
    import torch

    import learned_opt
    from learned_opt.meta.trainer import validation_loss
    from learned_opt.tasks import make_family
    run_dir = run_experiment("validate.py", tmp_path, "family=digits_mlp", "tasks=2", "steps=15",
                             "first_seed=10000000", "metric=mean_loss", "checkpoints=[mlp_l2l_mnist]")
    scores = json.loads((run_dir / "results.json").read_text())["scores"]["mlp_l2l_mnist"]
    import yaml
    family_cfg = yaml.safe_load((ROOT / "configs" / "family" / "digits_mlp.yaml").read_text())
    family = make_family(family_cfg.pop("name"), **family_cfg)
    expected = validation_loss(learned_opt.load("mlp_l2l_mnist"), family,
                               {"validation": {"tasks": 2, "steps": 15, "metric": "mean_loss"}, "meta": {"horizon": 15}},
                               torch.device("cpu"))
    assert len(scores) == 2 and sum(scores) / 2 == pytest.approx(expected, rel=1e-6)
    assert "| mlp_l2l_mnist |" in (run_dir / "table.md").read_text()


def test_quickstart_checks_both_stages_before_meta_training(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    run_dir = tmp_path / "quickstart"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "quickstart.py"), f"hydra.run.dir={run_dir}",
                           'evaluate_overrides=["tuning.method=bayes"]'], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "tuning.method='bayes' is not allowed; allowed: grid, random" in proc.stderr
    assert "Traceback" not in proc.stderr and "[1/2]" not in proc.stdout
    assert not (run_dir / "meta_train").exists()  # nothing was meta-trained
