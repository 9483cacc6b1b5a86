"""Full-size checks (``pytest -m slow``): the committed pretrained optimizers, and full MNIST when present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import baselines as B
import learned_opt
from learned_opt.tasks import make_task
from learned_opt.unroll import init_state, unroll
from learned_opt.utils import generator

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LEARNED_OPT_DATA", "/work/shared/data"))
L2L = {"name": "mlp", "dataset": "mnist5k", "hidden_sizes": [20], "activation": "sigmoid", "batch_size": 128}


def mean_loss(task_cfg: dict, rule, seeds, steps: int = 100) -> float:
    cfg = dict(task_cfg)
    task = make_task(cfg.pop("name"), **cfg)
    out = []
    for seed in seeds:
        g = generator(seed)
        params = task.init_params(g)
        with torch.no_grad():
            res = unroll(task, rule, params, init_state(rule, params, steps), steps, g)
        assert not res.diverged
        out.append(float(res.losses.mean()))
    return sum(out) / len(out)


def test_pretrained_mlp_optimizer_beats_adam_at_every_grid_lr_on_the_l2l_task():
    """Adam gets its best lr chosen on the very seeds it is scored on (optimistic for Adam)."""
    seeds = range(100, 105)
    learned = mean_loss(L2L, learned_opt.load(ROOT / "learned_opt" / "pretrained" / "mlp_l2l_mnist.pt"), seeds)
    adam = min(mean_loss(L2L, B.Adam(lr=lr), seeds) for lr in (0.003, 0.01, 0.03, 0.1))
    assert learned < adam, (learned, adam)


@pytest.mark.parametrize("name", ["mlp", "lstm"])
def test_pretrained_learned_optimizer_beats_nesterov_at_every_grid_lr_on_the_l2l_task(name):
    """Nesterov (momentum 0.9) gets its best lr chosen on the very seeds it is scored on."""
    seeds = range(100, 105)
    learned = mean_loss(L2L, learned_opt.load(ROOT / "learned_opt" / "pretrained" / f"{name}_l2l_mnist.pt"), seeds)
    nesterov = min(mean_loss(L2L, B.Nesterov(lr=lr, momentum=0.9), seeds) for lr in (0.1, 0.3, 1.0, 3.0))
    assert learned < nesterov, (learned, nesterov)


def test_pretrained_learned_adam_beats_default_adam_on_the_l2l_task():
    seeds = range(100, 105)
    learned = mean_loss(L2L, learned_opt.load(ROOT / "learned_opt" / "pretrained" / "learned_adam_l2l_mnist.pt"), seeds)
    assert learned < 0.8 * mean_loss(L2L, B.Adam(lr=1e-3), seeds)


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"full MNIST idx files not in {DATA / 'mnist'}")
def test_full_mnist_logistic_regression_with_adam_reaches_90_percent():
    task = make_task("logreg", dataset="mnist", root=DATA, batch_size=128)
    assert task.dataset.num_features == 784
    g = generator(0)
    params = task.init_params(g)
    rule = B.Adam(lr=1e-3)
    with torch.no_grad():
        res = unroll(task, rule, params, rule.init(params), 1000, g)
    metrics = task.metrics(res.params, "test")
    assert metrics["accuracy"] > 0.90, metrics


@pytest.mark.skipif(not (DATA / "fashion-mnist").is_dir(), reason=f"Fashion-MNIST idx files not in {DATA}")
def test_shipped_celo_beats_default_adam_on_unseen_fashion_mnist_conv_nets():
    """The generalization suite's fashion_conv task (28x28 images, unseen by the meta-training family): the
    shipped general-purpose optimizer, told the step budget, has a lower mean loss than Adam at lr 1e-3."""
    task_cfg = {"name": "conv", "dataset": "fashion_mnist", "root": DATA, "channels": [8, 16], "batch_size": 32}
    seeds = (100, 101, 102)
    assert mean_loss(task_cfg, learned_opt.load("celo"), seeds, 200) < mean_loss(task_cfg, B.Adam(lr=1e-3), seeds, 200)
