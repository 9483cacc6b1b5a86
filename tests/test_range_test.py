"""The LR range test over ``unroll`` (learned_opt.lecture.range_test): each step is one training step
at its lr, checked by hand on a quadratic and against torch.optim with the lr changed between steps."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from baselines import RangeTestResult
from learned_opt.lecture import range_test as rt_module
from learned_opt.lecture.range_test import plot_range_test, range_test
from learned_opt.tasks import QuadraticTask, make_task
from learned_opt.utils import generator

CPU = torch.device("cpu")


def test_each_loss_is_the_quadratic_before_a_hand_computed_sgd_step_at_that_lr():
    task = QuadraticTask(dim=6, seed=3)
    res = range_test(task, "sgd", {}, seed=7, device=CPU, progress=False, min_lr=1e-4, max_lr=2e-2, num_steps=25,
                     smooth=1.0, diverge_factor=1e6)
    np.testing.assert_allclose(res.lrs, np.geomspace(1e-4, 2e-2, 25), rtol=1e-12)
    W, y = task.W.double().numpy(), task.y.double().numpy()
    theta = task.init_params(generator(7))["theta"].double().numpy()  # the same seed gives the same init
    expected = []
    for lr in res.lrs:
        r = W @ theta - y
        expected.append(float(r @ r))                 # the loss before the step ...
        theta = theta - lr * 2.0 * W.T @ r            # ... then gradient descent at that lr
    assert len(res.losses) == 25 and res.diverged_at is None
    np.testing.assert_allclose(res.losses, expected, rtol=2e-4)
    assert res.smoothed == res.losses                 # smooth=1: no smoothing


def test_the_momentum_buffer_carries_over_while_the_lr_changes_like_torch_optim():
    task = QuadraticTask(dim=6, seed=1)
    res = range_test(task, "nesterov", {"momentum": 0.9}, seed=0, device=CPU, progress=False, min_lr=1e-4,
                     max_lr=1e-2, num_steps=30, mode="linear", smooth=1.0, diverge_factor=1e6)
    np.testing.assert_allclose(res.lrs, np.linspace(1e-4, 1e-2, 30), rtol=1e-12)
    theta = task.init_params(generator(0))["theta"].clone().requires_grad_()
    opt = torch.optim.SGD([theta], lr=1.0, momentum=0.9, nesterov=True)
    expected = []
    for lr in res.lrs:
        opt.param_groups[0]["lr"] = lr                # one optimizer: its momentum buffer persists
        opt.zero_grad()
        loss = task.loss({"theta": theta})
        expected.append(loss.item())
        loss.backward()
        opt.step()
    np.testing.assert_allclose(res.losses, expected, rtol=1e-4)
    # a test that started the momentum afresh at every lr would be plain gradient descent: far off by the end
    assert res.losses[-1] < 0.5 * range_test(task, "sgd", {}, seed=0, device=CPU, progress=False, min_lr=1e-4,
                                             max_lr=1e-2, num_steps=30, mode="linear", smooth=1.0,
                                             diverge_factor=1e6).losses[-1]


def test_a_loss_that_overflows_ends_the_test_as_divergence():
    task = QuadraticTask(dim=6, seed=3)
    res = range_test(task, "sgd", {}, seed=0, device=CPU, progress=False, min_lr=1e-3, max_lr=1e6, num_steps=200,
                     smooth=1.0, diverge_factor=1e300)  # never by the factor: only a non-finite loss stops it
    assert len(res.lrs) < 200 and res.diverged_at == res.lrs[-1]
    assert math.isnan(res.losses[-1]) and all(math.isfinite(v) for v in res.losses[:-1])
    assert 0 < res.suggested_min_lr <= res.suggested_max_lr < res.diverged_at


def test_range_test_bounds_are_ordered_and_the_steps_go_through_unroll(monkeypatch):
    task = make_task("mlp", dataset="digits", hidden_sizes=[16], activation="relu", batch_size=64)
    calls = []
    real = rt_module.unroll

    def counting_unroll(*args, **kwargs):
        calls.append(args[4])  # steps
        return real(*args, **kwargs)

    monkeypatch.setattr(rt_module, "unroll", counting_unroll)
    res = range_test(task, "nesterov", {"momentum": 0.9}, seed=0, device=CPU, progress=False, min_lr=1e-4,
                     max_lr=10.0, num_steps=60, smooth=0.1)
    assert 0 < res.suggested_min_lr < res.suggested_max_lr
    assert all(a < b for a, b in zip(res.lrs, res.lrs[1:]))
    assert calls and set(calls) == {1} and len(calls) == len(res.lrs)  # one unroll step per lr
    assert res.smoothed[0] > min(res.smoothed)  # the loss fell somewhere in the range


@pytest.mark.parametrize("diverged_at", [None, 1.0])
def test_plot_range_test_writes_a_figure(tmp_path, diverged_at):
    lrs = list(np.geomspace(1e-3, 1.0, 20))
    losses = [2.0 - 1.5 * i / 19 for i in range(20)]
    res = RangeTestResult(lrs=lrs, losses=losses, smoothed=losses, suggested_min_lr=lrs[2],
                          suggested_max_lr=lrs[-2], diverged_at=diverged_at)
    path = plot_range_test(res, tmp_path / "rt.png", title="range test", max_lr=lrs[-3], dpi=60)
    assert path == tmp_path / "rt.png" and path.stat().st_size > 5_000
