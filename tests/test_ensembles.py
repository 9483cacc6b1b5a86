"""Snapshot ensembles: the mean of softmax outputs, its scores, and the choice of single snapshots."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss

from learned_opt.lecture.ensembles import ensemble_probs, ensemble_size, score_snapshots, scores


class LinearTask:
    """logits = x @ w: enough of a classification task for the ensemble functions."""

    def __init__(self):
        self.calls = 0

    def logits(self, params, x):
        self.calls += 1
        return x @ params["w"]


def test_snapshot_ensemble_is_the_mean_of_softmax_outputs():
    x = torch.tensor([[1.0], [2.0]])
    # snapshot 1: logits (0, ln 3) for x = 1 -> softmax (1/4, 3/4); for x = 2 -> (0, 2 ln 3) -> (1/10, 9/10)
    # snapshot 2: logits (0, 0) -> (1/2, 1/2) for both
    snaps = [{"w": torch.tensor([[0.0, math.log(3.0)]])}, {"w": torch.tensor([[0.0, 0.0]])}]
    probs = ensemble_probs(LinearTask(), snaps, x)
    expected = torch.tensor([[(0.25 + 0.5) / 2, (0.75 + 0.5) / 2], [(0.1 + 0.5) / 2, (0.9 + 0.5) / 2]])
    torch.testing.assert_close(probs, expected)
    # averaging probabilities is not averaging logits: the logit average would give softmax(0, ln 3 / 2)
    s = scores(probs, torch.tensor([1, 0]))
    assert s["accuracy"] == 0.5
    assert s["loss"] == pytest.approx(-(math.log(0.625) + math.log(0.3)) / 2)
    single = ensemble_probs(LinearTask(), snaps[:1], x)
    torch.testing.assert_close(single, torch.softmax(x @ snaps[0]["w"], dim=1))


def test_ensemble_probs_in_chunks_equals_one_pass():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(11, 5, generator=g, dtype=torch.float64)
    snaps = [{"w": torch.randn(5, 4, generator=g, dtype=torch.float64)} for _ in range(3)]
    task = LinearTask()
    probs = ensemble_probs(task, snaps, x, chunk=4)
    assert task.calls == 3 * 3  # 3 snapshots x 3 chunks (4 + 4 + 3 examples)
    expected = sum(torch.softmax(x @ s["w"], dim=1) for s in snaps) / 3
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(probs.sum(1), torch.ones(11, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least one snapshot"):
        ensemble_probs(task, [], x)


def test_scores_match_sklearn_accuracy_and_log_loss():
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(50, 3, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, 3, (50,), generator=g)
    s = scores(probs, y)
    assert s["accuracy"] == pytest.approx(accuracy_score(y.numpy(), probs.argmax(1).numpy()))
    assert s["loss"] == pytest.approx(log_loss(y.numpy(), probs.numpy(), labels=[0, 1, 2]), rel=1e-10)
    # a zero probability for the true class is clamped, not infinite
    assert scores(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))["loss"] == pytest.approx(-math.log(1e-12))


def test_ensemble_size_takes_the_last_m_of_the_available():
    assert ensemble_size(6, None) == 6
    assert ensemble_size(6, 2) == 2
    assert ensemble_size(3, 5) == 3


def test_score_snapshots_picks_by_validation_and_by_test_and_ensembles_the_last_m():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    snaps = [{"w": torch.randn(4, 3, generator=g, dtype=torch.float64)} for _ in range(4)]
    task = LinearTask()
    acc = [float(((x @ s["w"]).argmax(1) == y).double().mean()) for s in snaps]
    nll = [float(torch.nn.functional.cross_entropy(x @ s["w"], y)) for s in snaps]
    res = score_snapshots(task, snaps, x, y, validation_losses=[0.5, 0.2, 0.3, 0.9], last=2)
    np.testing.assert_allclose([sc["accuracy"] for sc in res.singles], acc)
    np.testing.assert_allclose([sc["loss"] for sc in res.singles], nll, rtol=1e-10)
    assert res.by_validation == 1 and res.best_by_validation == res.singles[1]
    assert res.by_test == int(np.argmax(acc)) and res.best_by_test["accuracy"] == max(acc)
    assert res.size == 2
    last_two = sum(torch.softmax(x @ s["w"], dim=1) for s in snaps[2:]) / 2
    assert res.ensemble["accuracy"] == pytest.approx(float((last_two.argmax(1) == y).double().mean()))
    assert res.ensemble["loss"] == pytest.approx(float(-last_two[torch.arange(40), y].log().mean()), rel=1e-10)
    assert score_snapshots(task, snaps, x, y, [1.0] * 4).size == 4  # last=None: all of them
    with pytest.raises(ValueError, match="3 validation losses for 4 snapshots"):
        score_snapshots(task, snaps, x, y, [1.0] * 3)
