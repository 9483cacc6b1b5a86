"""The typed evaluation cell (learned_opt.evaluation.results) against the run that made it and its file."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import baselines as B
from learned_opt.evaluation.results import CellResult, loss_curves, read_cells
from learned_opt.evaluation.sealed import write_sealed
from learned_opt.evaluation.suite import run_cell
from learned_opt.tasks import make_task
from learned_opt.unroll import unroll
from learned_opt.utils import generator


def test_run_cell_returns_the_unrolls_losses_evals_and_final_metrics():
    task = make_task("mlp", dataset="digits", hidden_sizes=[8], batch_size=32)
    cell = run_cell(task, B.Adam(lr=0.01), seed=3, steps=12, device=torch.device("cpu"), eval_every=5)
    g = generator(3)  # the same run by hand
    params = task.init_params(g)
    res = unroll(task, B.Adam(lr=0.01), params, B.Adam(lr=0.01).init(params), 12, g)
    np.testing.assert_array_equal(cell.train_loss, res.losses.numpy().astype(float))
    assert cell.train_loss.dtype == np.float64 and not cell.diverged and cell.diverged_at is None
    assert [e["step"] for e in cell.evals] == [0, 5, 10, 12]  # before the first update, every 5, after the last
    final = task.metrics(res.params, "test")
    assert cell.final("test_loss") == pytest.approx(final["loss"], abs=0)
    assert cell.final("test_accuracy") == final["accuracy"]
    assert cell.final("train_loss") == pytest.approx(task.metrics(res.params, "train")["loss"], abs=0)
    steps, acc = cell.eval_series("test_accuracy")
    assert steps == [0, 5, 10, 12] and acc.shape == (4,)


def test_a_diverged_cell_has_no_final_metrics_and_pads_with_nan():
    task = make_task("quadratic", dim=4)
    cell = run_cell(task, B.SGD(lr=1e6), seed=0, steps=50, device=torch.device("cpu"))
    assert cell.diverged and len(cell.train_loss) < 50
    assert math.isnan(cell.final("train_loss")) and cell.final("test_loss", math.inf) == math.inf
    curves = loss_curves([cell, run_cell(task, B.SGD(lr=0.01), 0, 50, torch.device("cpu"))], 50)
    assert curves.shape == (2, 50) and np.isnan(curves[0, len(cell.train_loss):]).all()
    assert np.isfinite(curves[1]).all()
    with pytest.raises(ValueError, match="metric='accuracy' is not allowed"):
        cell.final("accuracy")


def test_the_cell_file_round_trips_and_keeps_its_format(tmp_path):
    cell = CellResult(seed=7, train_loss=[1.0, 0.5], diverged=False, seconds=0.25,
                      evals=[{"step": 1, "test_loss": 0.6}], final_train_loss=0.4,
                      final_test={"loss": 0.45, "accuracy": 0.9}, hparams={"lr": 0.1})
    record = cell.to_json()
    assert record == {"seed": 7, "train_loss": [1.0, 0.5], "diverged": False, "diverged_at": None, "seconds": 0.25,
                      "evals": [{"step": 1, "test_loss": 0.6}], "final_test_loss": 0.45, "final_test_accuracy": 0.9,
                      "final_train_loss_full": 0.4, "hparams": {"lr": 0.1}}
    back = CellResult.from_json(json.loads(json.dumps(record)))
    assert back.to_json() == record
    write_sealed(record, tmp_path / "cells" / "adam@tuned__digits__7.json")
    (read,) = read_cells(tmp_path, "adam@tuned", "digits", [7])
    assert read.to_json() == record
    with pytest.raises(FileNotFoundError, match="adam@tuned__digits__8.json: no such cell"):
        read_cells(tmp_path, "adam@tuned", "digits", [8])
    with pytest.raises(ValueError, match="missing: seconds, evals"):
        CellResult.from_json({"seed": 1, "train_loss": [], "diverged": False})
    damaged = tmp_path / "cells" / "adam@tuned__digits__7.json"
    damaged.write_text(damaged.read_text().replace("0.45", "0.46"))
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="is damaged"):
        read_cells(tmp_path, "adam@tuned", "digits", [7])
