"""Trajectories on 2D surfaces: the dynamics the figures claim (through unroll), and the entry point end to end."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from baselines import make_rule
from learned_opt.tasks import make_task
from learned_opt.unroll import unroll
from test_experiments import composed_config

ROOT = Path(__file__).resolve().parents[1]
RULES = ["gd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adadelta"]


def trajectory(task, rule, steps: int, seed: int = 0) -> torch.Tensor:
    """(steps + 1, 2) points: the start and the point after every update, recorded by unroll's callback."""
    g = torch.Generator().manual_seed(seed)
    params = task.init_params(g)
    res = unroll(task, rule, params, rule.init(params), steps, g,
                 callback=lambda step, p, loss: {"xy": p["xy"].detach().clone()}, callback_every=1)
    assert not res.diverged and len(res.records) == steps + 1
    return torch.stack([r["xy"] for r in res.records])


def test_gd_on_convex_bowl_reaches_its_minimum():
    task = make_task("bowl")
    xy = trajectory(task, make_rule("gd", lr=0.05), 400)
    assert math.dist(xy[-1].tolist(), task.minima[0]) < 1e-4
    assert torch.equal(xy[0], torch.tensor(task.start))


def test_gd_on_saddle_ridge_never_leaves_it_but_noisy_momentum_escapes():
    ridge = make_task("saddle", start=(1.0, 0.0))
    xy = trajectory(ridge, make_rule("gd", lr=0.01), 300)
    assert (xy[:, 1] == 0).all()                      # exactly on the ridge, every step
    assert abs(xy[-1, 0].item()) < 1e-2               # and it slides into the saddle point
    still = trajectory(ridge, make_rule("momentum", lr=0.01, momentum=0.9), 150)
    assert (still[:, 1] == 0).all()                   # momentum alone does not help: the y-gradient is 0
    noisy = make_task("saddle", start=(1.0, 0.0), noise=0.1)
    xy = trajectory(noisy, make_rule("momentum", lr=0.01, momentum=0.9), 150, seed=0)
    assert xy[-1, 1].abs().item() > 1.0               # gradient noise + momentum: off the ridge and away


def test_gd_from_the_poor_basin_stops_in_the_poor_minimum():
    task = make_task("two_minima")
    good, poor = task.minima
    assert task.minima_values[1] > task.minima_values[0]  # minima[1] is the poor (shallower) one
    xy = trajectory(task, make_rule("gd", lr=0.3), 300)
    assert math.dist(xy[-1].tolist(), poor) < 1e-3
    assert math.dist(xy[-1].tolist(), good) > 1.0


def load_script():
    spec = importlib.util.spec_from_file_location("trajectories_script", ROOT / "experiments" / "trajectories.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up by name
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


@pytest.mark.parametrize("override, message", [
    ("surfaces.beale.lr.adam", "surfaces.beale.lr must give one learning rate per rule"),
    ("surfaces.saddle_ridge.levels", "levels='cubic' is not allowed"),
    ("claims.0.surface", "is not a configured surface"),
    ("animation.frames", "animation.frames=500 is not allowed"),
    ("rules.gd.rule", "unknown optimizer 'gdd'"),
])
def test_bad_config_is_rejected_before_work(override, message):
    script = load_script()
    cfg = OmegaConf.create(composed_config("trajectories"))
    bad = {"surfaces.saddle_ridge.levels": "cubic", "claims.0.surface": "nowhere", "animation.frames": 500,
           "rules.gd.rule": "gdd"}
    if override == "surfaces.beale.lr.adam":
        del cfg.surfaces.beale.lr["adam"]
    else:
        OmegaConf.update(cfg, override, bad[override])
    with pytest.raises(ValueError, match=message):
        script.build(cfg, torch.device("cpu"))


def test_learned_rule_from_a_checkpoint_joins_every_surface(tmp_path):
    pytest.importorskip("learned_opt.optimizers")
    from learned_opt.meta.checkpoint import save_checkpoint
    from learned_opt.optimizers import make_learned_rule

    path = save_checkpoint(tmp_path / "lstm.pt", make_learned_rule("lstm"), 0, {"note": "untrained"})
    script = load_script()
    cfg = OmegaConf.create(composed_config("trajectories"))
    cfg.learned_checkpoint, cfg.max_steps = str(path), 5
    runs = script.build(cfg, torch.device("cpu"))
    assert all(list(run.rules)[-1] == "learned" and run.rules["learned"][1] is None for run in runs.values())
    traj = script.run_rule(runs["beale"], runs["beale"].rules["learned"][0], 0, torch.device("cpu"))
    assert traj["xy"].shape == (6, 2)


def test_trajectories_tiny_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONHASHSEED": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "trajectories.py"), f"hydra.run.dir={run_dir}",
                           "wandb.mode=offline", "max_steps=8", "grid=40", "num_levels=8", "animation.frames=4",
                           "animation.grid=30", "animation.num_levels=5", "figure.dpi=60"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"trajectories.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    surfaces = ["rosenbrock", "beale", "saddle_ridge", "saddle_off_ridge", "saddle_noisy", "two_minima"]
    for s in surfaces:
        assert (run_dir / f"trajectories_{s}.png").stat().st_size > 5_000, s
        with Image.open(run_dir / f"trajectories_{s}.gif") as gif:
            assert 2 <= gif.n_frames <= 4, s
    lines = [line for line in (run_dir / "table.md").read_text().splitlines() if line.startswith("| ")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    assert sorted((r[0], r[1]) for r in rows) == sorted((s, r) for s in surfaces for r in RULES)
    assert all(r[3] == "8" for r in rows)  # max_steps caps every surface
    ridge = {r[1]: r for r in rows if r[0] == "saddle_ridge"}
    assert all(r[8] == "stuck (max deviation 0)" for r in ridge.values())  # exactly on the ridge: never leaves
    results = json.loads((run_dir / "results.json").read_text())
    assert len(results["trajectories"]["beale"]["adam"]) == 9  # start + 8 updates
    assert "Claims" in proc.stdout and "| surface | rule |" in proc.stdout
    assert list((run_dir / "wandb").glob("offline-run-*"))
