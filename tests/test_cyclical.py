"""The CLR comparison (learned_opt.lecture.cyclical): its config checks, per-variant metrics, the answer
computed from them, the W&B history, and one tiny run wired as the procedure says; ``steps_to_accuracy``
(learned_opt.evaluation.metrics) on hand-made evaluations."""
from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_experiments import composed_config

from baselines import CyclicLR, RangeTestResult, make_rule
from learned_opt.evaluation import suite
from learned_opt.lecture import cyclical
from learned_opt.lecture.cyclical import (ADAM, CLR, FIXED, ClrResult, Variant, check_config, clr_bounds,
                                             cycle_budget, run_clr, variant_metrics)
from learned_opt.evaluation.metrics import steps_to_accuracy
from learned_opt.evaluation.results import CellResult
from learned_opt.evaluation.suite import run_cell
from learned_opt.runlog import RunLogger, read_jsonl
from learned_opt.schema import ConfigError

INF = math.inf


def config(**changes) -> dict:
    """configs/clr.yaml as the entry point sees it, with ``{"a.b": value}`` changes."""
    cfg = copy.deepcopy(composed_config("clr", resolve=True))
    for path, value in changes.items():
        *parents, key = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[key] = value
    return cfg


# --------------------------------------------------------------------------- metrics
def test_steps_to_accuracy_is_the_step_of_the_first_evaluation_at_or_above_the_target():
    evals = [{"step": 0, "test_accuracy": 0.1}, {"step": 16, "test_accuracy": 0.85},
             {"step": 32, "test_accuracy": math.nan}, {"step": 48, "test_loss": 0.2},
             {"step": 64, "test_accuracy": 0.91}, {"step": 80, "test_accuracy": 0.88}]
    assert steps_to_accuracy(evals, 0.9) == 64.0      # not 32 (NaN) nor 48 (no accuracy there)
    assert steps_to_accuracy(evals, 0.85) == 16.0     # reaching the target counts
    assert steps_to_accuracy(evals, 0.95) == INF
    assert steps_to_accuracy([], 0.5) == INF
    assert steps_to_accuracy([{"step": 8, "val": 0.7}], 0.6, key="val") == 8.0


def test_variant_metrics_per_seed_with_a_diverged_seed_counted_as_failing():
    ok = CellResult(seed=1, train_loss=[1.0, 0.6, 0.2, 0.1], diverged=False, seconds=0.0,
                    evals=[{"step": 2, "test_accuracy": 0.7}, {"step": 4, "test_accuracy": 0.95}],
                    final_train_loss=0.05, final_test={"loss": 0.2, "accuracy": 0.95})
    bad = CellResult(seed=2, train_loss=[1.0, 3.0], diverged=True, seconds=0.0, diverged_at=2,
                     evals=[{"step": 2, "test_accuracy": 0.1}])
    m = variant_metrics([ok, bad], {"test_accuracy": 0.9, "train_loss": 0.4, "smooth": 2})
    assert m["final_train_loss"][0] == 0.05 and math.isnan(m["final_train_loss"][1])
    assert m["test_accuracy"][0] == 0.95 and math.isnan(m["test_accuracy"][1])
    assert m["steps_to_accuracy"] == [4.0, INF]
    assert m["steps_to_loss"] == [3.0, INF]  # trailing means of 2: -, 0.8, 0.4 (step 3), 0.15
    assert m["diverged"] == 1


# --------------------------------------------------------------------------- budget and bounds
def test_cycle_budget_counts_minibatches_per_epoch_and_whole_cycles():
    def task(n, batch):
        return SimpleNamespace(batch_size=batch, dataset=SimpleNamespace(y_train=torch.zeros(n)))
    clr = {"epochs_per_half_cycle": 4, "cycles": 3}
    assert cycle_budget(task(4000, 128), clr) == (32, 128, 768)  # ceil(4000 / 128) = 32
    assert cycle_budget(task(4096, 128), clr) == (32, 128, 768)
    assert cycle_budget(task(100, None), {"epochs_per_half_cycle": 2, "cycles": 1}) == (1, 2, 4)  # full batch


def test_clr_bounds_scale_the_upper_bound_and_refuse_an_empty_range():
    res = RangeTestResult(lrs=[1e-3, 1e-2, 1e-1], losses=[2.0, 1.0, 3.0], smoothed=[2.0, 1.0, 3.0],
                          suggested_min_lr=1e-3, suggested_max_lr=1e-2, diverged_at=None)
    assert clr_bounds(res, config()) == (1e-3, 1e-2)
    assert clr_bounds(res, config(**{"clr.max_lr_factor": 0.5})) == (1e-3, 5e-3)
    with pytest.raises(RuntimeError, match="the range test suggests min lr 0.001 >= max lr 0.0005"):
        clr_bounds(res, config(**{"clr.max_lr_factor": 0.05}))


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("change, message", [
    ({"tuning.method": "bayes"}, "tuning.method='bayes' is not allowed; allowed: grid, random"),
    ({"tuning.objective": "val"}, "tuning.objective='val' is not allowed; allowed: final_val_loss, "
                                  "mean_train_loss, final_train_loss"),
    ({"tuning.budget": 1}, "tuning.budget=1 is not allowed; allowed: an integer >= 2"),
    ({"tuning.seeds": [100]}, "tuning.seeds=[100] and range_test.seed=0 are not allowed"),
    ({"range_test.seed": 101}, "range_test.seed=101 are not allowed"),
    ({"adam.grid": [1e-2, 1e-4]}, "adam.grid=[0.01, 0.0001] is not allowed; allowed: [low, high] with 0 < low"),
    ({"adam.tune": "yes"}, "adam.tune='yes' is not allowed; allowed: true or false"),
    ({"range_test.max_lr": 1e-4}, "range_test.max_lr=0.0001 is not allowed; allowed: a number > "
                                  "range_test.min_lr=0.0001"),
    ({"range_test.rule": "adam"}, "range_test.momentum=0.9: rule 'adam' takes no option 'momentum'"),
    ({"range_test.mode": "log"}, "range_test.mode='log' is not allowed; allowed: exp, linear"),
    ({"clr.cycles": 0}, "clr.cycles=0 is not allowed; allowed: an integer >= 1"),
    ({"clr.cycle": 3}, "clr.cycle=3: unknown key (nothing reads it); did you mean clr.cycles?"),
    ({"clr.mode": "sine"}, "clr.mode='sine' is not allowed; allowed: triangular, triangular2, exp_range"),
    ({"clr.cycle_momentum": True, "clr.base_momentum": 0.95, "clr.max_momentum": 0.85},
     "clr (CyclicLR): max_momentum=0.85 is not allowed"),
    ({"targets.test_accuracy": 1.5}, "targets.test_accuracy=1.5 is not allowed"),
    ({"figure.band": "std"}, "figure.band='std' is not allowed; allowed: iqr, minmax"),
    ({"wandb.mode": "cloud"}, "wandb.mode='cloud' is not allowed; allowed: offline, online, disabled"),
])
def test_bad_config_fails_in_check_config_before_any_task_is_built(monkeypatch, change, message):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the config was checked")
    monkeypatch.setattr(suite, "TASKS", {name: no_work for name in suite.TASKS})  # (build_task's)
    with pytest.raises(ConfigError) as e:
        check_config(config(**change))
    assert message in str(e.value)


def test_a_bad_tuning_method_stops_run_clr_before_any_work(monkeypatch, tmp_path):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the config was checked")
    for name in ("range_test", "tune", "run_cell"):
        monkeypatch.setattr(cyclical, name, no_work)
    monkeypatch.setattr(suite, "TASKS", {name: no_work for name in suite.TASKS})  # (build_task's)
    with pytest.raises(ConfigError, match="tuning.method='bayes' is not allowed"):
        run_clr(config(**{"tuning.method": "bayes"}), tuning_dir=tmp_path / "tuning", progress=False)
    assert not (tmp_path / "tuning").exists()


def test_the_task_must_be_a_classifier():
    with pytest.raises(ConfigError, match="task.name='quadratic' is not allowed; allowed: a classifier"):
        check_config(config(task={"name": "quadratic", "dim": 3}))
    with pytest.raises(ConfigError, match="task.hidden_size=.*takes no option 'hidden_size'"):
        check_config(config(**{"task.hidden_size": 10}))


# --------------------------------------------------------------------------- the answer and the report
def result_with(metrics: dict[str, dict], cells: dict[str, list[CellResult]] | None = None) -> ClrResult:
    res = RangeTestResult(lrs=[1e-3, 1e-2, 1e-1], losses=[2.0, 1.0, 3.0], smoothed=[2.0, 1.0, 3.0],
                          suggested_min_lr=1e-3, suggested_max_lr=1e-2, diverged_at=0.1)
    variants = {k: Variant(label=k, cells=(cells or {}).get(k, []), metrics=m) for k, m in metrics.items()}
    return ClrResult(config=config(), task_name="t", device="cpu", steps_per_epoch=2, step_size=2, steps=8,
                     range_test=res, bounds=(0.1, 1.0), tuned={}, adam_lr=3e-4, fixed_lr=0.02, variants=variants,
                     seconds=1.0)


CLR_M = {"final_train_loss": [0.01, 0.03], "test_accuracy": [0.95, 0.93], "steps_to_accuracy": [64.0, 96.0],
         "steps_to_loss": [50.0, 70.0], "diverged": 0}
ADAM_M = {"final_train_loss": [0.1, 0.12], "test_accuracy": [0.92, 0.9], "steps_to_accuracy": [160.0, INF],
          "steps_to_loss": [200.0, 180.0], "diverged": 0}


def test_the_answer_compares_clr_with_adam_on_the_four_measures():
    r = result_with({CLR: CLR_M, ADAM: ADAM_M, FIXED: ADAM_M})
    assert r.checks() == {"lower final train loss": ("yes", "0.02 vs 0.11"),
                          "higher test accuracy": ("yes", "0.94 vs 0.91"),
                          "fewer steps to 0.9 test accuracy": ("yes", "2/2 vs 1/2 seeds got there"),
                          "fewer steps to train loss 0.3": ("yes", "60 vs 190")}
    assert r.overall() == "yes"
    assert r.answer().startswith("Does Nesterov + CLR reach a lower loss / higher accuracy faster than Adam "
                                 "(tuned lr) here? **yes**: lower final train loss: yes (0.02 vs 0.11); ")
    worse_acc = {**ADAM_M, "test_accuracy": [0.97, 0.96]}
    assert result_with({CLR: CLR_M, ADAM: worse_acc, FIXED: ADAM_M}).overall() == "partly (3 of 4)"
    assert result_with({CLR: ADAM_M, ADAM: CLR_M, FIXED: ADAM_M}).overall() == "no"


def test_report_rows_are_mean_and_std_over_seeds_and_the_json_record_is_plain():
    r = result_with({CLR: CLR_M, ADAM: ADAM_M, FIXED: ADAM_M})
    assert r.rows()[0] == [CLR, "0.02 ± 0.014", "0.94 ± 0.014", "80 ± 23", "60 ± 14", 0]
    assert r.rows()[1][3] == "160 ± 0 (1/2 not reached)"
    md = r.markdown()
    assert "| variant | final train loss | test accuracy | steps to 0.9 test accuracy | steps to train loss 0.3 " \
           "| diverged seeds |" in md
    assert "CLR uses [0.1, 1]" in md and r.answer() in md
    record = json.loads(json.dumps(r.to_json()))
    assert record["range_test"]["clr_bounds"] == [0.1, 1.0] and record["checks"]["higher test accuracy"][0] == "yes"
    assert record["variants"][ADAM]["steps_to_accuracy"] == [160.0, INF]


def test_median_history_logs_medians_over_seeds_after_the_range_test(tmp_path):
    def cell(seed, losses, accs):
        return CellResult(seed=seed, train_loss=losses, diverged=len(losses) < 8, seconds=0.0,
                          evals=[{"step": s, "test_accuracy": a} for s, a in zip((4, 8), accs)])
    cells = {CLR: [cell(0, [1.0] * 8, [0.5, 0.7]), cell(1, [3.0] * 8, [0.7, 0.9]), cell(2, [2.0] * 3, [0.9])],
             ADAM: [cell(0, [1.0] * 8, [0.2, 0.4])], FIXED: [cell(0, [1.0] * 8, [0.3, 0.6])]}
    r = result_with({CLR: CLR_M, ADAM: ADAM_M, FIXED: ADAM_M}, cells)
    curves, x = r.median_history()
    assert x == {f"{k}/test_accuracy_median": [4, 8] for k in (CLR, ADAM, FIXED)}
    # triangular between 0.1 and 1 with half cycles of 2 steps
    assert curves[f"{CLR}/lr"] == [pytest.approx([0.1, 0.55, 1.0, 0.55, 0.1, 0.55, 1.0, 0.55])]
    logger = RunLogger(tmp_path, {"mode": "disabled"})
    logger.log_medians(curves, x=x, offset=3, step_key="comparison_step")
    logger.finish()
    rows = {row["step"]: row for row in read_jsonl(tmp_path / "metrics.jsonl")}
    assert rows[3 + 2][f"{CLR}/train_loss_median"] == 2.0 and rows[3 + 2]["comparison_step"] == 2
    assert rows[3 + 5][f"{CLR}/train_loss_median"] == 2.0  # seeds 0 and 1 only: seed 2 stopped after 3 steps
    assert rows[3 + 4][f"{CLR}/test_accuracy_median"] == 0.7 and rows[3 + 8][f"{CLR}/test_accuracy_median"] == 0.8
    assert rows[3 + 1][f"{CLR}/lr"] == pytest.approx(0.55) and f"{CLR}/test_accuracy_median" not in rows[3 + 1]


# --------------------------------------------------------------------------- one tiny run
def test_run_clr_runs_each_variant_as_the_procedure_says(tmp_path):
    cfg = config(**{"task.dataset": "digits", "task.hidden_sizes": [16], "seeds": [100], "range_test.num_steps": 40,
                    "clr.epochs_per_half_cycle": 1, "clr.cycles": 1, "tuning.budget": 2, "eval_every": 4})
    r = run_clr(cfg, tuning_dir=tmp_path / "tuning", progress=False)
    assert (r.steps_per_epoch, r.step_size, r.steps) == (12, 12, 24)  # ceil(1438 / 128) steps per epoch
    assert r.bounds == (r.range_test.suggested_min_lr, r.range_test.suggested_max_lr)
    assert sorted(p.name for p in (tmp_path / "tuning").iterdir()) == ["adam.json", "nesterov_fixed.json"]
    assert r.adam_lr in np.geomspace(1e-4, 1e-2, 2) and r.adam_lr == r.tuned["adam"]["best"]["lr"]
    device, task = torch.device("cpu"), check_config(cfg)[1]
    again = {CLR: make_rule("nesterov", lr=CyclicLR(*r.bounds, 12), momentum=0.9),
             ADAM: make_rule("adam", lr=r.adam_lr), FIXED: make_rule("nesterov", lr=r.fixed_lr, momentum=0.9)}
    for key, rule in again.items():
        (cell,) = r.variants[key].cells
        ref = run_cell(task, rule, 100, 24, device, eval_every=4)
        np.testing.assert_array_equal(cell.train_loss, ref.train_loss)
        assert cell.evals == ref.evals and len(cell.train_loss) == 24
