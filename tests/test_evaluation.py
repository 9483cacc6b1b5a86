"""The shared evaluation: tuning against an analytic optimum, determinism, resume, W&B files, bad input."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from learned_opt.evaluation import evaluate as E
from learned_opt.evaluation import suite as S
from learned_opt.runlog import read_wandb_run

TINY = {
    "device": "cpu", "steps": 12, "seeds": [100, 101], "eval_every": 6, "eval_examples": 200, "progress": False,
    "tuning": {"method": "grid", "budget": 2, "seeds": [0], "objective": "final_val_loss", "val_fraction": 0.2,
               "split_seed": 0, "seed": 0},
    "suite": {"digits": {"name": "mlp", "dataset": "digits", "hidden_sizes": [8], "activation": "relu",
                         "batch_size": 32},
              "quad": {"name": "quadratic", "dim": 5}},
    "optimizers": {"sgd": {"rule": "sgd", "lr": 0.05, "tune": {"lr": [0.01, 0.1]}},
                   "adam": {"rule": "adam", "lr": 0.01, "tune": {"lr": [0.003, 0.03]}}},
    "wandb": {"mode": "disabled"},
}


def test_tuning_finds_the_analytic_best_lr_on_a_bowl():
    """GD on 0.5 (x^2 + 10 y^2): the contraction max(|1 - lr|, |1 - 10 lr|) is smallest at lr = 2/11."""
    best = 2 / 11
    spec = S.OptimizerSpec("gd", rule="gd", hparams={"lr": 0.1}, tune={"lr": [0.1, 0.17, best, 0.19, 0.3]})
    cfg = {"steps": 60, "tuning": {"method": "grid", "budget": 5, "seeds": [0], "objective": "final_train_loss"}}
    out = S.tune(spec, {"name": "bowl"}, cfg, torch.device("cpu"))
    assert out["best"]["lr"] == pytest.approx(best)
    scores = {round(t["hparams"]["lr"], 4): t["score"] for t in out["trials"]}
    assert scores[0.3] == float("inf")  # |1 - 10 * 0.3| = 2: diverges
    assert min(scores, key=scores.get) == round(best, 4)


def test_log_grid_and_random_candidates():
    grid = S.candidates({"lr": [1e-4, 1e-1]}, "grid", 4, 0)
    assert [c["lr"] for c in grid] == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    rand = S.candidates({"lr": [1e-4, 1e-1], "momentum": [0.5, 0.9, 0.99]}, "random", 20, 0)
    assert len(rand) == 20 and all(1e-4 <= c["lr"] <= 1e-1 and c["momentum"] in (0.5, 0.9, 0.99) for c in rand)
    with pytest.raises(ValueError, match="allowed"):
        S.candidates({"lr": [1e-4, 1e-1]}, "bayes", 4, 0)


def test_same_config_same_numbers_and_resume_gives_the_same_csv(tmp_path, monkeypatch):
    E.evaluate(copy.deepcopy(TINY), tmp_path / "a")
    E.evaluate(copy.deepcopy(TINY), tmp_path / "b")
    csv_a = (tmp_path / "a" / "results.csv").read_text()
    assert csv_a == (tmp_path / "b" / "results.csv").read_text()
    n_rows = len(csv_a.splitlines()) - 1
    assert n_rows == 2 * 4 * 2 * 12  # tasks x (sgd, adam) x (default, tuned) x seeds x steps
    # interrupt after 5 cells, then resume
    calls = {"n": 0}
    real = E.run_cell

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(E, "run_cell", flaky)
    with pytest.raises(KeyboardInterrupt):
        E.evaluate(copy.deepcopy(TINY), tmp_path / "c")
    assert len(list((tmp_path / "c" / "cells").glob("*.json"))) == 5
    monkeypatch.setattr(E, "run_cell", real)
    with pytest.raises(FileExistsError, match="resume"):
        E.evaluate(copy.deepcopy(TINY), tmp_path / "c")
    E.evaluate(copy.deepcopy(TINY), tmp_path / "c", resume=True)
    assert (tmp_path / "c" / "results.csv").read_text() == csv_a
    other = copy.deepcopy(TINY)
    other["steps"] = 13
    with pytest.raises(ValueError, match="different configuration"):
        E.evaluate(other, tmp_path / "c", resume=True)


def test_summary_structure(tmp_path):
    summary = E.evaluate(copy.deepcopy(TINY), tmp_path)
    rows = summary["tasks"]["digits"]["rows"]
    assert set(rows) == {"sgd@default", "sgd@tuned", "adam@default", "adam@tuned"}
    assert rows["adam@tuned"]["stats"]["score_vs_adam"]["median"] == pytest.approx(1.0, rel=0.5)
    assert rows["sgd@default"]["wins_ties_losses_vs_adam"] is not None
    for f in ("summary.md", "summary.json", "results.csv", "curves_digits.png", "curves_quad.png", "scores.png",
              "ranks.png"):
        assert (tmp_path / f).stat().st_size > 0, f
    md = (tmp_path / "summary.md").read_text()
    assert "### digits" in md and "### quad" in md and "Ranking" in md


def test_wandb_offline_run_files_hold_config_summary_and_history(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = copy.deepcopy(TINY)
    cfg["wandb"] = {"mode": "offline", "project": "test"}
    cfg["suite"] = {"quad": cfg["suite"]["quad"]}
    cfg["optimizers"] = {"adam": cfg["optimizers"]["adam"]}
    E.evaluate(cfg, tmp_path)
    runs = sorted((tmp_path / "wandb_runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 3  # adam@default/quad, adam@tuned/quad, summary
    by_name = {}
    for r in runs:
        recs = read_wandb_run(r)
        run = next(x["run"] for x in recs if x["type"] == "run")
        by_name[run["display_name"]] = recs
    recs = by_name["adam@tuned/quad"]
    run = next(x["run"] for x in recs if x["type"] == "run")
    assert run["run_group"] == "quad" and "adaptive" in run["tags"] and "tuned" in run["tags"]
    config = run["config"]["update"]
    assert config["optimizer"] == "adam@tuned" and config["task"] == "quad" and config["steps"] == TINY["steps"]
    assert config["hparams"]["lr"] in (0.003, 0.03)
    history = [x["history"]["item"] for x in recs if x["type"] == "history"]
    assert len(history) == TINY["steps"] and all("train_loss" in h for h in history)
    summary = {}
    for x in recs:
        if x["type"] == "summary":
            summary.update(x["summary"]["update"])
    assert {"final_train_loss_median", "auc_median", "score_vs_adam_median"} <= set(summary)
    assert summary["score_vs_adam_median"] == pytest.approx(1.0, rel=0.5)
    cells = json.loads((tmp_path / "summary.json").read_text())["summary"]["tasks"]["quad"]["rows"]["adam@tuned"]
    assert summary["auc_median"] == pytest.approx(cells["stats"]["auc"]["median"])
    summ = by_name["summary"]
    assert any(x["type"] == "history" and "summary_table._type" in x["history"]["item"] for x in summ)


@pytest.mark.parametrize("mutate,match,exc", [
    (lambda c: c["optimizers"].update(bad={"rule": "adamax"}), "optimizers.bad.rule='adamax' is not allowed", ValueError),
    (lambda c: c["suite"].update(bad={"name": "resnet"}), "suite.bad.name='resnet' is not allowed", ValueError),
    (lambda c: c["optimizers"].update(lopt={"checkpoint": "/nonexistent/lopt.pt"}), "no such file", FileNotFoundError),
    (lambda c: c.update(suite={}), "suite is empty", ValueError),
    (lambda c: c.update(optimizers={}), "optimizers is empty", ValueError),
    (lambda c: c["tuning"].update(seeds=[100]), "overlap", ValueError),
    (lambda c: c["optimizers"]["sgd"]["tune"].update(betas=[0.1, 0.2]), "no hyperparameter 'betas'", ValueError),
])
def test_bad_config_fails_before_any_work(tmp_path, mutate, match, exc):
    cfg = copy.deepcopy(TINY)
    mutate(cfg)
    with pytest.raises(exc, match=match):
        E.evaluate(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_suite_entry_may_set_its_own_budget(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["suite"]["quad"]["steps"] = 5
    cfg["optimizers"] = {"adam": cfg["optimizers"]["adam"]}
    E.evaluate(cfg, tmp_path)
    rows = (tmp_path / "results.csv").read_text().splitlines()[1:]
    per_task = {t: sum(1 for r in rows if r.split(",")[2] == t) for t in ("digits", "quad")}
    assert per_task == {"digits": 2 * 2 * 12, "quad": 2 * 2 * 5}
    trials = json.loads((tmp_path / "tuning" / "adam__quad.json").read_text())["trials"]
    assert len(trials) == 2
