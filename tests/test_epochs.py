"""Epoch training with a validation split: a plateau schedule fed the validation loss, snapshots, divergence."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from baselines import SGD, CosineWarmRestarts, ReduceOnPlateau, SnapshotCollector
from learned_opt.lecture.epochs import steps_per_epoch, train_epochs
from learned_opt.unroll import unroll
from learned_opt.utils import generator

CPU = torch.device("cpu")


class ScriptedTask:
    """Training loss ``sum(w)`` (gradient 1 for every coordinate, so plain SGD moves each coordinate by -lr
    per update); the validation losses are read from ``script``, one per ``metrics`` call. With ``nan_at``,
    the loss of that update (0-based, counted over the whole run) is NaN."""

    def __init__(self, script, nan_at=None):
        self.script, self.nan_at, self.calls, self.batches = list(script), nan_at, 0, 0

    def init_params(self, g):
        return {"w": torch.zeros(2, dtype=torch.float64)}

    def sample_batch(self, g, split):
        self.batches += 1
        return self.batches - 1

    def loss(self, params, batch):
        bad = self.nan_at is not None and batch >= self.nan_at
        return params["w"].sum() + (math.nan if bad else 10.0)

    def metrics(self, params, split="test", max_examples=None):
        assert split == "test"
        value = self.script[self.calls]
        self.calls += 1
        return {"loss": value, "accuracy": 1.0 / value}


def torch_plateau_lrs(metrics, **kwargs):
    """The lr after each metric, by torch.optim.lr_scheduler.ReduceLROnPlateau (the oracle)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=kwargs.pop("lr"))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    out = []
    for m in metrics:
        sched.step(m)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_plateau_lowers_the_lr_exactly_after_the_validation_loss_plateaus():
    # after epochs 1..10; with patience 1 the third epoch without improvement reduces: after 4, 8 and 10
    script = [5.0, 4.0, 3.0, 3.0, 3.0, 3.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    hp = {"lr": 1.0, "factor": 0.5, "patience": 1, "threshold": 1e-4, "threshold_mode": "rel", "cooldown": 0,
          "min_lr": 0.0}
    plateau = ReduceOnPlateau(**hp)
    task, spe, epochs = ScriptedTask(script), 3, 10
    run = train_epochs(task, SGD(lr=plateau), epochs, spe, seed=0, device=CPU, plateau=plateau)
    assert run.reductions == [4, 8, 10]
    oracle = torch_plateau_lrs(script[1:], **hp)
    assert run.reductions == [e for e in range(1, epochs + 1) if oracle[e - 1] < ([1.0] + oracle)[e - 1]]
    assert run.lr_epoch == [1.0] + oracle[:-1]  # an epoch trains with the lr set after the previous one
    assert run.lr_epoch == [1.0] * 4 + [0.5] * 4 + [0.25] * 2
    assert plateau.lr == oracle[-1] == 0.125
    # the rule really used those lrs: each update moved every coordinate by -lr
    torch.testing.assert_close(run.params["w"], torch.full((2,), -spe * sum(run.lr_epoch), dtype=torch.float64))
    assert run.val_loss == script and run.val_accuracy == [1.0 / v for v in script]
    assert len(run.train_loss) == epochs * spe and run.diverged_at_epoch is None and not run.diverged


def test_without_plateau_the_lr_is_fixed_and_nothing_is_reduced():
    task = ScriptedTask([5.0, 5.0, 5.0, 5.0])
    run = train_epochs(task, SGD(lr=0.1), 3, 2, seed=0, device=CPU)
    assert run.lr_epoch == [0.1] * 3 and run.reductions == []
    torch.testing.assert_close(run.params["w"], torch.full((2,), -0.6, dtype=torch.float64))


def test_snapshots_are_the_params_after_each_cycle_end_with_global_update_indices():
    spe, epochs = 3, 6
    sched = CosineWarmRestarts(1.0, 2 * spe)  # a cycle every 2 epochs: cycle ends at updates 5, 11, 17
    collector = SnapshotCollector(sched)
    task = ScriptedTask([1.0] * (epochs + 1))
    run = train_epochs(task, SGD(lr=sched), epochs, spe, seed=0, device=CPU, collector=collector)
    assert [s for s, _ in collector.snapshots] == [5, 11, 17]
    for step, snap in collector.snapshots:  # params after update `step`: minus the sum of the lrs so far
        expected = -sum(sched(i) for i in range(step + 1))
        torch.testing.assert_close(snap["w"], torch.full((2,), expected, dtype=torch.float64))
    assert collector.snapshots[-1][1]["w"] is not run.params["w"]  # a copy
    torch.testing.assert_close(collector.snapshots[-1][1]["w"], run.params["w"])
    assert run.lr_epoch == [sched(e * spe) for e in range(epochs)] == [1.0, sched(3)] * 3


def test_a_diverging_epoch_ends_the_run_and_keeps_the_last_good_epoch():
    task = ScriptedTask([1.0] * 5, nan_at=7)  # update 7 is in epoch 3 (updates 6, 7, 8)
    run = train_epochs(task, SGD(lr=0.5), 4, 3, seed=0, device=CPU)
    assert run.diverged and run.diverged_at_epoch == 3
    assert len(run.val_loss) == 3 and len(run.lr_epoch) == 2  # before training, after epochs 1 and 2
    assert len(run.train_loss) == 7  # 6 updates, then the good loss of update 6
    torch.testing.assert_close(run.params["w"], torch.full((2,), -3.0, dtype=torch.float64))
    assert set(run.to_dict()) == {"val_loss", "val_accuracy", "lr_epoch", "reductions", "train_loss",
                                  "diverged_at_epoch"}


def test_epochs_on_a_real_task_follow_one_long_unroll():
    from learned_opt.tasks import make_task
    task = make_task("mlp", dataset="digits", hidden_sizes=[8], activation="relu", batch_size=256)
    spe = steps_per_epoch(task)
    assert spe == math.ceil(len(task.dataset.y_train) / 256)
    run = train_epochs(task, SGD(lr=0.1, momentum=0.9), 2, spe, seed=3, device=CPU, eval_examples=100)
    g = generator(3, CPU)
    rule = SGD(lr=0.1, momentum=0.9)
    params = task.init_params(g)
    ref = unroll(task, rule, params, rule.init(params), 2 * spe, g)
    for k in ref.params:
        torch.testing.assert_close(run.params[k], ref.params[k])
    torch.testing.assert_close(torch.tensor(run.train_loss, dtype=ref.losses.dtype), ref.losses)
    assert run.val_loss[-1] == pytest.approx(task.metrics(ref.params, "test", 100)["loss"])


def test_steps_per_epoch_rounds_up_and_full_batch_is_one():
    def fake(n, batch_size):
        return SimpleNamespace(dataset=SimpleNamespace(y_train=torch.zeros(n)), batch_size=batch_size)
    assert steps_per_epoch(fake(10, 4)) == 3
    assert steps_per_epoch(fake(12, 4)) == 3
    assert steps_per_epoch(fake(10, None)) == 1
