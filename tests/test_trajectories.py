"""Trajectories on 2D surfaces: the dynamics the figures claim (through unroll), the library that runs and
judges them (config, runs, outcomes, claims), and the entry point end to end."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from baselines import make_rule
from baselines.checks import ConfigError
from learned_opt.lecture import trajectories as T
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


def config() -> dict:
    return composed_config("trajectories")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["surfaces"]["beale"]["lr"].pop("adam"), "surfaces.beale.lr=.* is not allowed; allowed: one learning"),
    (lambda c: c["surfaces"]["saddle_ridge"].update(levels="cubic"), "surfaces.saddle_ridge.levels='cubic' is not"),
    (lambda c: c["surfaces"]["beale"].update(stepz=3), "surfaces.beale.stepz=3: unknown key"),
    (lambda c: c["claims"][0].update(surface="nowhere"), r"claims\[0\].surface='nowhere' is not allowed"),
    (lambda c: c["claims"][0].update(rule="lstm"), r"claims\[0\].rule='lstm' is not allowed"),
    (lambda c: c["claims"].append({"surface": "beale", "rule": "gd", "expect": "stuck"}),
     r"claims\[12\].expect='stuck' is not allowed"),
    (lambda c: c["animation"].update(frames=500), "animation.frames=500 is not allowed"),
    (lambda c: c["rules"]["gd"].update(rule="gdd"), "rules.gd.rule='gdd' is not allowed"),
    (lambda c: c["rules"]["gd"].update(lr=0.1), "rules.gd.lr=0.1 is not allowed here"),
    (lambda c: c["surfaces"]["beale"]["lr"].update(adam=-1.0), "surfaces.beale.lr.adam=-1.0 is not allowed"),
    (lambda c: c["surfaces"]["beale"].update(hparams={"sgdd": {}}), "surfaces.beale.hparams=.* is not allowed"),
    (lambda c: c.update(reach_tol=0), "reach_tol=0 is not allowed"),
    (lambda c: c.update(learned_checkpoint="no/such.pt"), "learned_checkpoint='no/such.pt' is not allowed"),
])
def test_bad_config_is_rejected_by_check_config(edit, message):
    cfg = config()
    T.check_config(cfg)  # the shipped config is fine
    edit(cfg)
    with pytest.raises(ConfigError, match=message):
        T.check_config(cfg)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["surfaces"]["saddle_ridge"].update(levels="log"), "levels='log' is not allowed; allowed: linear"),
    (lambda c: c["surfaces"]["beale"].update(escape_threshold=1.0), "beale.escape_threshold=1.0 is not allowed"),
    (lambda c: c["surfaces"]["beale"]["task"].update(name="mlp"), "surfaces.beale.task.name='mlp' is not allowed"),
    (lambda c: c["surfaces"]["beale"]["task"].update(noise=-1), r"surfaces.beale.task \(surface 'beale'\)"),
    (lambda c: c["surfaces"]["two_minima"]["hparams"]["momentum"].update(momentum=2.0),
     r"surfaces.two_minima.hparams.momentum \(rule 'momentum'\)"),
    (lambda c: c["rules"]["adam"].update(betaz=1), "rules.adam.betaz=1: rule 'adam' takes no option 'betaz'"),
    (lambda c: c["claims"].append({"surface": "saddle_ridge", "rule": "gd", "expect": "good"}),
     r"claims\[12\].expect='good' is not allowed"),
])
def test_bad_config_is_rejected_when_the_runs_are_built(edit, message):
    cfg = config()
    edit(cfg)
    with pytest.raises(ConfigError, match=message):
        T.build_runs(cfg, torch.device("cpu"))


def test_build_runs_applies_max_steps_overrides_and_per_surface_lr():
    cfg = config()
    cfg["max_steps"] = 200
    runs = T.build_runs(cfg, torch.device("cpu"))
    assert list(runs) == list(cfg["surfaces"])
    assert runs["rosenbrock"].steps == 200 and runs["saddle_ridge"].steps == 150  # min(steps, max_steps)
    assert runs["rosenbrock"].levels == "log" and runs["saddle_ridge"].escape_threshold == 1.0
    rule, lr = runs["two_minima"].rules["momentum"]
    assert lr == 0.1 and float(rule.lr) == 0.1 and float(rule.momentum) == 0.95  # surface override
    assert float(runs["beale"].rules["momentum"][0].momentum) == 0.9              # the shared value
    assert list(runs["beale"].rules) == RULES


def test_learned_rule_from_a_checkpoint_joins_every_surface(tmp_path):
    pytest.importorskip("learned_opt.optimizers")
    from learned_opt.meta.checkpoint import save_checkpoint
    from learned_opt.optimizers import make_learned_rule

    path = save_checkpoint(tmp_path / "lstm.pt", make_learned_rule("lstm"), 0, {"note": "untrained"})
    cfg = config()
    cfg["learned_checkpoint"], cfg["max_steps"] = str(path), 5
    runs = T.build_runs(cfg, torch.device("cpu"))
    assert all(list(run.rules)[-1] == "learned" and run.rules["learned"][1] is None for run in runs.values())
    traj = T.run_rule(runs["beale"], runs["beale"].rules["learned"][0], 0, torch.device("cpu"))
    assert traj["xy"].shape == (6, 2)
    cfg["learned_label"] = "gd"
    with pytest.raises(ConfigError, match="learned_label='gd' is not allowed"):
        T.check_config(cfg)


def test_run_rule_records_the_start_and_every_gd_step():
    task = make_task("rosenbrock")
    run = T.SurfaceRun("r", task, 25, "log", None, {})
    traj = T.run_rule(run, make_rule("gd", lr=1e-3), 0, torch.device("cpu"))
    p = torch.tensor(task.start, dtype=torch.float64, requires_grad=True)  # gradient descent by hand
    expected = [p.detach().clone()]
    for _ in range(25):
        grad, = torch.autograd.grad(task.value(p[0], p[1]), p)
        p = (p - 1e-3 * grad).detach().requires_grad_()
        expected.append(p.detach().clone())
    np.testing.assert_allclose(traj["xy"], torch.stack(expected).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(traj["f"], [(1 - x) ** 2 + 100 * (y - x * x) ** 2 for x, y in traj["xy"]], rtol=1e-9)
    assert traj["diverged_at"] is None


def hand_made(task, points) -> dict:
    xy = np.array(points, dtype=np.float64)
    return {"xy": xy, "f": task.value(torch.from_numpy(xy[:, 0]), torch.from_numpy(xy[:, 1])).numpy()}


def test_outcome_says_which_minimum_was_reached():
    task = make_task("two_minima")
    good, poor = task.minima
    run = T.SurfaceRun("two", task, 3, "linear", None, {})
    near_good = hand_made(task, [task.start, (0.0, 0.0), (good[0] + 0.03, good[1] + 0.04)])
    out = T.outcome(run, near_good, reach_tol=0.06)
    assert out["reached"] == "good" and out["dist_min"] == pytest.approx(0.05)
    assert out["final_xy"] == [good[0] + 0.03, good[1] + 0.04]
    assert out["final_loss"] == pytest.approx(float(task.value(torch.tensor(good[0] + 0.03),
                                                               torch.tensor(good[1] + 0.04))))
    assert out["escaped"] is None and out["max_dev"] is None
    assert T.outcome(run, near_good, reach_tol=0.04)["reached"] == "none"  # 0.05 away: not within 0.04
    assert T.outcome(run, hand_made(task, [task.start, poor]), reach_tol=0.01)["reached"] == "poor"
    saddle = T.SurfaceRun("s", make_task("saddle"), 3, "linear", None, {})
    assert T.outcome(saddle, hand_made(saddle.task, [(1.0, 0.0), (0.5, 0.0)]), 0.05)["reached"] == "-"


def test_outcome_says_when_the_saddle_was_escaped():
    task = make_task("saddle", start=(1.0, 0.0))
    run = T.SurfaceRun("s", task, 4, "linear", 1.0, {})
    escaped = T.outcome(run, hand_made(task, [(1, 0), (0.5, 0.5), (0.3, -1.5), (0.1, 0.2)]), 0.05)
    assert (escaped["escaped"], escaped["escape_step"], escaped["max_dev"]) == (True, 2, 1.5)
    stuck = T.outcome(run, hand_made(task, [(1, 0), (0.5, 0.5), (0.3, -1.0)]), 0.05)  # 1.0 is not above 1.0
    assert (stuck["escaped"], stuck["escape_step"], stuck["max_dev"]) == (False, None, 1.0)


def test_table_rows_and_claims_from_hand_made_results():
    base = {"final_xy": [1.0, 2.0], "final_loss": 0.5, "dist_min": None, "reached": "-", "escape_step": None,
            "max_dev": None, "lr": 0.01, "steps": 10, "diverged_at": None}
    results = {"ridge": {"gd": {**base, "escaped": False, "max_dev": 0.0},
                         "adam": {**base, "escaped": True, "escape_step": 7, "diverged_at": 9}},
               "bowl": {"gd": {**base, "escaped": None, "reached": "good", "dist_min": 0.001234, "lr": None}}}
    rows = T.table_rows(results)
    assert [r[:2] for r in rows] == [["ridge", "gd"], ["ridge", "adam"], ["bowl", "gd"]]
    assert all(len(r) == len(T.COLUMNS) for r in rows)
    assert rows[0][8:] == ["stuck (max deviation 0)", "ok"]
    assert rows[1][8:] == ["escaped at step 7", "diverged at step 9"]
    assert rows[2][2] == "-" and rows[2][4] == "(1, 2)" and rows[2][6] == "0.00123" and rows[2][7:9] == ["good", "-"]
    claims = [{"surface": "ridge", "rule": "gd", "expect": "stuck"}, {"surface": "ridge", "rule": "adam",
                                                                     "expect": "stuck"},
              {"surface": "bowl", "rule": "gd", "expect": "poor"}]
    assert T.check_claims(claims, results) == [
        "- [holds] ridge / gd: expected stuck, got stuck",
        "- [FAILS] ridge / adam: expected stuck, got escaped",
        "- [FAILS] bowl / gd: expected poor, got good"]
    assert T.check_claims(None, results) == []


def test_surface_contour_gives_the_surface_values_and_its_points():
    task = make_task("two_minima")
    view = T.surface_contour(T.SurfaceRun("two", task, 1, "linear", None, {}), 12)
    (x0, x1), (y0, y1) = task.bounds
    assert view["xs"][0] == x0 and view["xs"][-1] == x1 and view["ys"][0] == y0 and len(view["ys"]) == 12
    i, j = 5, 7
    assert view["z"][i, j] == pytest.approx(float(task.value(torch.tensor(view["xs"][j], dtype=torch.float64),
                                                             torch.tensor(view["ys"][i], dtype=torch.float64))))
    kinds = [m[0] for m in view["markers"]]
    assert kinds == ["minimum", "local minimum", "saddle", "start"] and not view["log"]
    assert view["markers"][-1][1:] == (-2.0, 1.5, "start (-2, 1.5)")
    rosen = make_task("rosenbrock")
    log_view = T.surface_contour(T.SurfaceRun("r", rosen, 1, "log", None, {}), 9)
    assert log_view["log"] and log_view["z"].min() >= 0  # f - f_min: positive, for log levels
    assert "log-spaced" in log_view["colorbar"]


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
