"""Loss-landscape math (filter normalisation, interpolation, grids, PCA), the procedures around it (config,
training with snapshots, fixed batches, every slice at once) and the entry point end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines import make_rule
from baselines.checks import ConfigError
from learned_opt.lecture import landscape as L
from learned_opt.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]


def toy_params(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"fc.weight": torch.randn(5, 3, generator=g), "fc.bias": torch.randn(5, generator=g),
            "conv.weight": torch.randn(4, 2, 3, 3, generator=g), "conv.bias": torch.randn(4, generator=g),
            "scale": torch.randn((), generator=g)}


def test_filter_normalised_direction_has_the_weight_filter_norms_and_zero_biases():
    g = torch.Generator().manual_seed(0)
    params = toy_params(g)
    d = L.random_direction(params, g)
    assert list(d) == list(params) and all(d[k].shape == params[k].shape for k in params)
    # one filter = a row of the linear weight, an output channel of the conv kernel
    torch.testing.assert_close(d["fc.weight"].norm(dim=1), params["fc.weight"].norm(dim=1))
    torch.testing.assert_close(d["conv.weight"].flatten(1).norm(dim=1), params["conv.weight"].flatten(1).norm(dim=1))
    assert not torch.allclose(d["fc.weight"], params["fc.weight"])  # a random direction, only rescaled
    for name in ("fc.bias", "conv.bias", "scale"):
        assert torch.equal(d[name], torch.zeros_like(params[name])), name
    kept = L.filter_normalize(d, params, ignore_biases=False)
    assert torch.equal(kept["fc.bias"], params["fc.bias"])  # Li et al.'s choice when biases are not ignored
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert all(torch.equal(a, b) for a, b in zip(L.random_direction(params, g1).values(),
                                                 L.random_direction(params, g2).values()))  # seeded


def test_filter_normalize_rescales_each_filter_exactly():
    w = {"w": torch.tensor([[3.0, 4.0], [0.0, 1.0]])}
    d = {"w": torch.tensor([[1.0, 0.0], [0.0, -2.0]])}
    out = L.filter_normalize(d, w)["w"]
    torch.testing.assert_close(out, torch.tensor([[5.0, 0.0], [0.0, -1.0]]))


def mlp_setup():
    task = make_task("mlp", dataset="digits", hidden_sizes=[8], activation="tanh", batch_size=None)
    g = torch.Generator().manual_seed(0)
    start, end = task.init_params(g), task.init_params(g)
    batch = tuple(t[:200] for t in task.sample_batch(g, "train"))
    return task, start, end, (lambda p: task.loss(p, batch))


@pytest.mark.parametrize("vmap", [True, False])
def test_interpolation_endpoints_equal_the_endpoint_losses(vmap):
    task, start, end, loss = mlp_setup()
    values = L.interpolate_1d(loss, start, end, [0.0, 0.5, 1.0], chunk_size=2, vmap=vmap)
    assert values.shape == (3,)
    torch.testing.assert_close(values[0], loss(start).detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(values[2], loss(end).detach(), rtol=1e-6, atol=1e-6)
    mid = {k: 0.5 * start[k] + 0.5 * end[k] for k in start}
    torch.testing.assert_close(values[1], loss(mid).detach(), rtol=1e-5, atol=1e-6)


def test_grid_centre_is_the_centre_loss_and_points_match_an_oracle():
    task, centre, _, loss = mlp_setup()
    g = torch.Generator().manual_seed(1)
    d1, d2 = L.random_direction(centre, g), L.random_direction(centre, g)
    xs, ys = torch.linspace(-1, 1, 5), torch.linspace(-0.5, 0.5, 3)
    z = L.grid_2d(loss, centre, d1, d2, xs, ys, chunk_size=4)
    assert z.shape == (3, 5)
    torch.testing.assert_close(z[1, 2], loss(centre).detach(), rtol=1e-6, atol=1e-6)  # (x, y) = (0, 0)
    point = {k: centre[k] + xs[4] * d1[k] + ys[0] * d2[k] for k in centre}  # row = y index, column = x index
    torch.testing.assert_close(z[0, 4], loss(point).detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z, L.grid_2d(loss, centre, d1, d2, xs, ys, vmap=False), rtol=1e-5, atol=1e-6)


def test_grid_on_a_quadratic_matches_the_closed_form():
    centre = {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor([[0.5]])}
    d1 = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([[0.0]])}
    d2 = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([[2.0]])}
    z = L.grid_2d(lambda p: (p["a"] ** 2).sum() + (p["b"] ** 2).sum(), centre, d1, d2, [-1.0, 0.0, 2.0], [0.0, 1.0])
    expected = torch.tensor([[(1 + x) ** 2 + 4 + (0.5 + 2 * y) ** 2 for x in (-1.0, 0.0, 2.0)] for y in (0.0, 1.0)])
    torch.testing.assert_close(z, expected)


def test_pca_of_a_straight_line_trajectory():
    g = torch.Generator().manual_seed(0)
    theta0 = toy_params(g)
    v = {k: torch.randn(p.shape, generator=g) for k, p in theta0.items()}
    n = 10
    snaps = [{k: theta0[k] + i * v[k] for k in theta0} for i in range(n + 1)]
    pca = L.pca_trajectory(snaps, snaps[-1], n_components=2)
    assert pca.explained_variance_ratio[0] > 1 - 1e-6
    assert pca.coords.shape == (n + 1, 2)
    step = L.flatten(v).norm()
    # theta_i - theta_T = (i - n) v: PC1 coordinates are proportional to the steps still to go
    torch.testing.assert_close(pca.coords[:, 0], (n - torch.arange(n + 1.0)) * step, rtol=1e-4, atol=1e-4)
    assert pca.coords[:, 1].abs().max() < 1e-3
    unit = L.flatten(pca.directions[0])
    torch.testing.assert_close(unit.norm(), torch.tensor(1.0))
    torch.testing.assert_close(unit.abs(), (L.flatten(v) / step).abs(), rtol=1e-4, atol=1e-5)
    uncentred = L.pca_trajectory(snaps, snaps[-1], n_components=1, center=False)
    assert uncentred.explained_variance_ratio[0] > 1 - 1e-6
    with pytest.raises(ValueError, match="at least 3 snapshots"):
        L.pca_trajectory(snaps[:2], snaps[-1], n_components=2)


def test_flatten_roundtrip_and_shape_checks():
    params = toy_params(torch.Generator().manual_seed(3))
    back = L.unflatten(L.flatten(params), params)
    assert all(torch.equal(back[k], params[k]) for k in params)
    with pytest.raises(ValueError, match="shape"):
        L.unflatten(torch.zeros(3), params)
    with pytest.raises(ValueError, match="names/shapes differ"):
        L.filter_normalize({"x": torch.zeros(2)}, params)


def test_grid_around_covers_the_points_and_the_origin_with_the_margin():
    coords = np.array([[1.0, 2.0], [3.0, -1.0], [2.0, 0.5]])
    xs, ys = L.grid_around(coords, 0.25, 7)
    assert len(xs) == len(ys) == 7 and np.all(np.diff(xs) > 0) and np.all(np.diff(ys) > 0)
    # x: the points span [1, 3] and the origin widens it to [0, 3]; y: [-1, 2]; a quarter of each on both sides
    np.testing.assert_allclose([xs[0], xs[-1]], [0 - 0.75, 3 + 0.75])
    np.testing.assert_allclose([ys[0], ys[-1]], [-1 - 0.75, 2 + 0.75])
    same = L.grid_around(np.zeros((3, 2)), 0.5, 3)[0]  # points at the origin only: a tiny window, not nothing
    assert same[0] < 0 < same[-1]


def test_barrier_is_the_largest_rise_above_the_chord_inside_zero_one():
    alphas = np.array([-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5])
    line = 2.0 - alphas  # a straight line from L(0) = 2 to L(1) = 1
    assert L.barrier(alphas, line, 2.0, 1.0) == pytest.approx(0.0)
    bump = line + np.array([9.0, 0.0, 0.1, 0.3, 0.2, 0.0, 9.0])  # outside [0, 1] does not count
    assert L.barrier(alphas, bump, 2.0, 1.0) == pytest.approx(0.3)
    assert L.barrier(alphas, line - 0.5 * alphas * (1 - alphas), 2.0, 1.0) == pytest.approx(0.0)  # convex: 0


def gd_by_hand(task, lr: float, steps: int) -> list[torch.Tensor]:
    p = torch.tensor(task.start, dtype=torch.float64, requires_grad=True)
    out = [p.detach().clone()]
    for _ in range(steps):
        grad, = torch.autograd.grad(task.value(p[0], p[1]), p)
        p = (p - lr * grad).detach().requires_grad_()
        out.append(p.detach().clone())
    return out


def test_train_with_snapshots_keeps_every_kth_point_and_the_last():
    task = make_task("bowl")
    theta0, res, snaps = L.train_with_snapshots(task, make_rule("gd", lr=0.1), 10, 3, torch.Generator())
    assert torch.equal(theta0["xy"], torch.tensor(task.start, dtype=theta0["xy"].dtype))
    assert [s["step"] for s in snaps] == [0, 3, 6, 9, 10] and res.steps_done == 10
    path = gd_by_hand(task, 0.1, 10)
    for s in snaps:
        torch.testing.assert_close(s["params"]["xy"].double(), path[s["step"]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.params["xy"].double(), path[10], rtol=1e-5, atol=1e-6)
    with pytest.warns(RuntimeWarning, match="diverged at step"):
        _, res, snaps = L.train_with_snapshots(task, make_rule("gd", lr=5.0), 20, 5, torch.Generator())
    assert res.diverged and snaps[-1]["step"] == res.steps_done < 20 and snaps[-1]["params"] is res.params


def test_fixed_loss_is_the_loss_on_the_first_examples_every_time():
    task = make_task("mlp", dataset="digits", hidden_sizes=[8], activation="tanh", batch_size=None)
    params = task.init_params(torch.Generator().manual_seed(0))
    loss = L.fixed_loss(task, "test", 50)
    assert float(loss(params)) == pytest.approx(task.metrics(params, "test", max_examples=50)["loss"], rel=1e-5)
    assert torch.equal(loss(params), loss(params))
    whole = L.fixed_loss(task, "train")
    assert float(whole(params)) == pytest.approx(task.metrics(params, "train")["loss"], rel=1e-5)


def quadratic_slices():
    """Slices of 1/2 |w|^2 between two random points, along a bent path of 6 snapshots."""
    g = torch.Generator().manual_seed(0)
    start, end = {"w": torch.randn(3, 4, generator=g)}, {"w": torch.randn(3, 4, generator=g)}
    bend = torch.randn(3, 4, generator=g)
    snaps = [{"w": start["w"] + t * (end["w"] - start["w"]) + t * (1 - t) * bend} for t in np.linspace(0, 1, 6)]
    quad = lambda p: 0.5 * (p["w"] ** 2).sum()  # noqa: E731
    half = lambda p: 0.5 * quad(p)  # noqa: E731  (a different "test" loss)
    alphas, span = np.linspace(-0.5, 1.5, 9), np.linspace(-1, 1, 5)
    s = L.slices(quad, half, start, end, snaps, alphas=alphas, span=span, generator=torch.Generator().manual_seed(3),
                 pca_resolution=4, pca_margin=0.1, chunk_size=3)
    return s, start, end, snaps, alphas, span


def test_slices_of_a_quadratic_match_the_closed_forms():
    s, start, end, snaps, alphas, span = quadratic_slices()

    def q(w):
        return 0.5 * float((w ** 2).sum())
    np.testing.assert_allclose(s.interpolation_train, [q((1 - a) * start["w"] + a * end["w"]) for a in alphas],
                               rtol=1e-5)
    np.testing.assert_allclose(s.interpolation_test, 0.5 * s.interpolation_train, rtol=1e-6)
    assert s.initial_train_loss == pytest.approx(q(start["w"]), rel=1e-6)
    assert s.final_train_loss == pytest.approx(q(end["w"]), rel=1e-6)
    assert s.final_test_loss == pytest.approx(0.5 * q(end["w"]), rel=1e-6)
    assert s.loss_at_half == pytest.approx(q(0.5 * (start["w"] + end["w"])), rel=1e-5)
    assert s.barrier == pytest.approx(0.0, abs=1e-5)  # convex: never above the chord
    assert s.distance == pytest.approx(float((end["w"] - start["w"]).norm()), rel=1e-6)
    d = torch.Generator().manual_seed(3)  # the directions, drawn again in the same order
    d1, d2 = L.random_direction(end, d)["w"], L.random_direction(end, d)["w"]
    assert s.contour.shape == (5, 5) and s.contour[2, 2] == pytest.approx(q(end["w"]), rel=1e-6)
    assert s.contour[0, 4] == pytest.approx(q(end["w"] + span[4] * d1 + span[0] * d2), rel=1e-5)
    # the path lies in a plane: two components explain it, and the coordinates rebuild every snapshot
    assert s.explained_variance.sum() == pytest.approx(1.0, abs=1e-6)
    pca = L.pca_trajectory(snaps, end)
    dirs = [p["w"].double() for p in pca.directions]
    for snap, (a, b) in zip(snaps, s.pca_coords):
        torch.testing.assert_close(end["w"].double() + a * dirs[0] + b * dirs[1], snap["w"].double(), atol=1e-5,
                                   rtol=1e-5)
    xs, ys = s.pca_xs, s.pca_ys
    assert xs[0] < s.pca_coords[:, 0].min() and xs[-1] > s.pca_coords[:, 0].max() and len(ys) == 4
    assert s.pca_grid[3, 1] == pytest.approx(q(end["w"] + xs[1] * pca.directions[0]["w"]
                                               + ys[3] * pca.directions[1]["w"]), rel=1e-5)
    summary = s.summary()
    assert summary["loss_at_alpha_0.5"] == s.loss_at_half and summary["contour"] == s.contour.tolist()
    json.dumps(summary)  # plain numbers and lists only


def test_plot_slices_draws_the_random_plane_and_the_trajectory_in_the_pca_plane(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    s = quadratic_slices()[0]
    kept = []
    monkeypatch.setattr(plt, "close", kept.append)  # keep the figures to look inside
    contour, pca = L.plot_slices(s, np.linspace(-1, 1, 5), tmp_path / "c.png", tmp_path / "p.png", what="quad",
                                 steps=10, record_every=2, num_levels=5,
                                 figure={"width": 4.0, "height": 3.0, "dpi": 40})
    assert contour.stat().st_size > 1000 and pca.stat().st_size > 1000
    lines = {line.get_label(): line for line in kept[1].axes[0].get_lines()}
    traj = lines["trajectory (every 2 steps)"]
    np.testing.assert_allclose(np.c_[traj.get_xdata(), traj.get_ydata()], s.pca_coords)
    assert "PC1 + PC2: 100.0%" in kept[1].axes[0].get_title()


def landscape_config() -> dict:
    from test_experiments import composed_config
    return composed_config("loss_landscape")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(record_every=20, steps=20), "record_every=20 is not allowed with steps=20.*needs at least 3"),
    (lambda c: c["interpolation"].update(alpha_min=0.2), "interpolation.alpha_min=0.2 is not allowed"),
    (lambda c: c["interpolation"].update(alpha_max=0.5), "interpolation.alpha_max=0.5 is not allowed"),
    (lambda c: c["pca"].update(margin=-0.1), "pca.margin=-0.1 is not allowed"),
    (lambda c: c["contour"].update(resolution=2), "contour.resolution=2 is not allowed"),
    (lambda c: c["contour"].update(spam=1), "contour.spam=1: unknown key"),
    (lambda c: c.update(vmap="yes"), "vmap='yes' is not allowed"),
    (lambda c: c.update(eval_examples=0), "eval_examples=0 is not allowed"),
    (lambda c: c["optimizers"]["sgd"].update(rule="sgdd"), "optimizers.sgd.rule='sgdd' is not allowed"),
    (lambda c: c["optimizers"]["sgd"].update(lr=-1.0), r"optimizers.sgd \(rule 'sgd'\)"),
    (lambda c: c["optimizers"]["adam"].pop("rule"), "optimizers.adam=.* is not allowed; allowed: a mapping with"),
    (lambda c: c["task"].update(name="mlpp"), "task.name='mlpp' is not allowed"),
])
def test_landscape_config_is_checked_before_any_work(edit, message):
    cfg = landscape_config()
    L.check_config(cfg)  # the shipped config is fine
    edit(cfg)
    with pytest.raises(ConfigError, match=message):
        L.check_config(cfg)


def test_build_makes_a_whole_split_landscape_task_without_dropout():
    cfg = landscape_config()
    cfg["task"].update(dropout=0.2)
    task, eval_task, rules = L.build(cfg, torch.device("cpu"))
    assert task.batch_size == 128 and task.dropout == 0.2
    assert eval_task.batch_size is None and eval_task.dropout == 0.0
    assert rules == {"sgd": ("sgd", {"lr": 0.1}), "adam": ("adam", {"lr": 0.003})}
    cfg["task"].update(hidden_size=3)
    with pytest.raises(ConfigError, match="task.hidden_size=3: task 'mlp' takes no option"):
        L.build(cfg, torch.device("cpu"))


def run_landscape(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONHASHSEED": "0"}
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "loss_landscape.py"), *overrides],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


def test_loss_landscape_tiny_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_landscape(tmp_path, f"hydra.run.dir={run_dir}", "wandb.mode=offline", "steps=20", "record_every=5",
                         "eval_examples=300", "interpolation.points=5", "contour.resolution=5",
                         "pca.resolution=5", "figure.dpi=60")
    assert proc.returncode == 0, f"loss_landscape.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    for name in ("interpolation.png", "contour_sgd.png", "contour_adam.png", "pca_sgd.png", "pca_adam.png"):
        assert (run_dir / name).stat().st_size > 5_000, name
    lines = [line for line in (run_dir / "table.md").read_text().splitlines() if line.startswith("| ")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    assert [r[0] for r in rows] == ["sgd", "adam"]
    results = json.loads((run_dir / "results.json").read_text())["results"]
    for name, res in results.items():
        assert res["snapshot_steps"] == [0, 5, 10, 15, 20], name
        assert 0 < res["final_train_loss"] < res["initial_train_loss"], name
        assert len(res["interpolation_train"]) == 5 and len(res["contour"]) == 5
        assert 0 < sum(res["explained_variance"]) <= 1 + 1e-6
        # the contour grid's centre is the trained weights: the final training loss
        assert abs(res["contour"][2][2] - res["final_train_loss"]) < 1e-5
        # the interpolation grid -0.5, 0, 0.5, 1, 1.5 hits the endpoints
        assert abs(res["interpolation_train"][1] - res["initial_train_loss"]) < 1e-5
        assert abs(res["interpolation_train"][3] - res["final_train_loss"]) < 1e-5
    assert "| optimizer |" in proc.stdout
    assert list((run_dir / "wandb").glob("offline-run-*"))


def test_loss_landscape_rejects_bad_config_before_work(tmp_path):
    run_dir = tmp_path / "bad"
    proc = run_landscape(tmp_path, f"hydra.run.dir={run_dir}", "wandb.mode=disabled", "steps=20",
                         "record_every=20")
    assert proc.returncode != 0 and "needs at least 3" in proc.stderr
    assert not (run_dir / "table.md").exists()
