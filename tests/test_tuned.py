"""Tuned optimizers side by side (learned_opt.lecture.tuned), read back from a real evaluation's cells."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from learned_opt.evaluation import evaluate as E
from learned_opt.lecture import tuned as T
from learned_opt.evaluation.sealed import read_sealed
from learned_opt.schema import ConfigError

CFG = {
    "device": "cpu", "steps": 15, "seeds": [100, 101], "eval_every": 0, "eval_examples": 100, "progress": False,
    "tuning": {"method": "grid", "budget": 2, "seeds": [0], "objective": "mean_train_loss", "val_fraction": 0.2,
               "split_seed": 0, "seed": 0},
    "suite": {"logreg": {"name": "logreg", "dataset": "digits", "batch_size": 32}},
    "optimizers": {"sgd": {"rule": "sgd", "lr": 0.1, "tune": {"lr": [0.01, 1.0]}},
                   "adam": {"rule": "adam", "lr": 0.001, "tune": {"lr": [0.001, 0.1]}}},
    "wandb": {"mode": "disabled"},
}
LABELS = {"sgd": "SGD", "adam": "Adam"}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("tuned") / "run"
    E.evaluate(copy.deepcopy(CFG), run)
    return run


def test_compare_tuned_reads_the_evaluations_tuned_cells(evaluated):
    tuning = {(o, "logreg"): read_sealed(evaluated / "tuning" / f"{o}__logreg.json") for o in CFG["optimizers"]}
    res = T.compare_tuned(evaluated, CFG, tuning, LABELS)["logreg"]
    for opt in CFG["optimizers"]:
        cells = [json.loads((evaluated / "cells" / f"{opt}@tuned__logreg__{s}.json").read_text()) for s in CFG["seeds"]]
        r = res["per_optimizer"][opt]
        assert r["lr"] == tuning[(opt, "logreg")]["best"]["lr"] == cells[0]["hparams"]["lr"]
        assert r["mean_train_cost"] == pytest.approx([np.mean(c["train_loss"]) for c in cells], rel=1e-12)
        assert r["final_train_cost"] == [c["final_train_loss_full"] for c in cells]
        assert r["test_accuracy"] == [c["final_test_accuracy"] for c in cells]
        np.testing.assert_array_equal(r["curves"], [c["train_loss"] for c in cells])
    means = {o: np.mean(r["mean_train_cost"]) for o, r in res["per_optimizer"].items()}
    assert res["ranking_by_mean_train_cost"] == sorted(means, key=means.get)
    rank = res["ranking_by_mean_train_cost"].index("adam") + 1
    assert f"Adam ranks {rank} of 2" in res["verdict"]
    md = T.tuned_markdown({"logreg": res}, CFG["suite"], LABELS)
    assert md.startswith("### Logistic regression (`logreg`:") and md.count("\n| ") == 3  # header + 2 rows
    png = T.plot_tuned({"logreg": res}, CFG["suite"], LABELS, {"smooth": 3, "band": "iqr", "width": 6.0,
                                                                "height": 4.0, "dpi": 50},
                       evaluated / "tuned.png", xlabel="iterations", title="t")
    assert png.stat().st_size > 1000


def test_labels_must_name_every_optimizer_and_every_optimizer_is_tuned():
    T.check_labels(CFG["optimizers"], LABELS)
    with pytest.raises(ConfigError, match="labels.adam is missing"):
        T.check_labels(CFG["optimizers"], {"sgd": "SGD"})
    with pytest.raises(ConfigError, match="labels.adamw='AdamW': unknown key"):
        T.check_labels(CFG["optimizers"], {**LABELS, "adamw": "AdamW"})
    with pytest.raises(ValueError, match="optimizers.sgd.tune is empty"):
        T.check_labels({"sgd": {"rule": "sgd", "lr": 0.1}}, {"sgd": "SGD"})


def test_panel_titles_describe_the_task():
    assert T.describe({"name": "logreg"}) == "Logistic regression"
    assert T.describe({"name": "mlp", "hidden_sizes": [1000, 1000], "activation": "relu", "dropout": 0.5}) == \
        "MLP 2x1000 ReLU, dropout 0.5"
    assert T.describe({"name": "mlp", "hidden_sizes": [64, 32]}) == "MLP 64-32 sigmoid, no dropout"
    assert T.describe({"name": "conv"}) == "conv"
