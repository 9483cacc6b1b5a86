"""Loss-landscape math (filter normalisation, interpolation, grids, PCA) and the entry point end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learned_opt.evaluation import landscape as L
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
