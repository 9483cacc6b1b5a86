"""learned_opt.meta.short_horizon: the config of the short-horizon-bias experiment, checked before any work."""
from __future__ import annotations

import math

import pytest

from learned_opt.meta.short_horizon import check_config, final_lr, meta_config
from learned_opt.schema import ConfigError
from test_experiments import composed_config


def test_each_estimator_gets_a_meta_training_config_of_learned_sgd_on_the_task():
    cfg = composed_config("short_horizon_bias", resolve=True)
    check_config(cfg)
    m = meta_config(cfg, "pes")
    assert m["optimizer"] == {"name": "learned_sgd", "lr": cfg["initial_lr"], "momentum": 0.0, "steps": 1}
    assert m["family"] == {"name": "single_task", "task": "noisy_quadratic",
                           **{k: v for k, v in cfg["task"].items() if k != "name"}}
    assert m["meta"]["estimator"] == "pes" and m["meta"]["horizon"] == cfg["horizon"]
    assert m["meta"]["population"] == cfg["meta"]["tasks_per_step"] and m["pes"] == cfg["pes"]


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(estimators=["bptt", "sgd"]), r"estimators\[1\]='sgd' is not allowed; allowed: bptt, es, pes"),
    (lambda c: c["grid"].update(low=2.0), r"grid.low=2.0 is not allowed; allowed: a number below grid.high=1.0"),
    (lambda c: c.update(horizon=0), "horizon=0 is not allowed"),
    (lambda c: c["meta"].update(truncation=0), "truncation"),           # checked as meta-training checks it
    (lambda c: c["pes"].update(pairs=0), "pes.pairs"),
    (lambda c: c.update(horizn=10), "horizn=10: unknown key"),
])
def test_bad_configs_are_rejected(change, message):
    cfg = composed_config("short_horizon_bias", resolve=True)
    change(cfg)
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_final_lr_is_the_geometric_mean_of_the_last_tenth():
    history = [1.0] * 18 + [0.1, 0.4]
    assert final_lr(history) == pytest.approx(math.sqrt(0.1 * 0.4))
    assert final_lr([0.3]) == pytest.approx(0.3)
    assert final_lr([0.5, 0.2, 0.8]) == pytest.approx(0.8)  # fewer than ten: the last one
