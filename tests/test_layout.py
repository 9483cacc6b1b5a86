"""Who imports whom, and one definition of each default: using a shipped rule never loads the meta-training
package, and the code's defaults are the ones configs/meta_train.yaml states."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_loading_a_shipped_rule_imports_nothing_from_meta():
    code = ("import sys, learned_opt; learned_opt.load('celo'); import learned_opt.evaluation.suite; "
            "print('learned_opt.meta' in sys.modules, any(m.startswith('learned_opt.meta.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_code_defaults_are_the_configs():
    from learned_opt.meta.config import DEFAULT_ESTIMATOR, ESTIMATORS
    from learned_opt.meta.inner import DEFAULT_META_LOSS, META_LOSSES
    cfg = yaml.safe_load((ROOT / "configs" / "meta_train.yaml").read_text())
    assert cfg["meta"]["estimator"] == DEFAULT_ESTIMATOR and DEFAULT_ESTIMATOR in ESTIMATORS
    assert cfg["meta"]["meta_loss"] == DEFAULT_META_LOSS and DEFAULT_META_LOSS in META_LOSSES
    import learned_opt.meta as meta
    import learned_opt.meta.trainer as trainer
    assert meta.ESTIMATORS is ESTIMATORS and trainer.ESTIMATORS is ESTIMATORS


def test_the_celo_config_group_builds_the_core_and_its_controllers():
    from learned_opt.optimizers import Celo, Controlled, make_learned_rule
    cfg = yaml.safe_load((ROOT / "configs" / "optimizer" / "celo.yaml").read_text())
    name = cfg.pop("name")
    assert isinstance(make_learned_rule(name, **cfg), Celo)            # every controller off by default
    for c in cfg["controllers"].values():
        c["enabled"] = True
    rule = make_learned_rule(name, **cfg)
    assert isinstance(rule, Controlled) and list(rule.controllers) == list(cfg["controllers"])
    for cname, options in cfg["controllers"].items():   # the yaml states each controller's defaults
        got = rule.controllers[cname].config()
        assert {k: got[k] for k in options if k != "enabled"} == {k: v for k, v in options.items() if k != "enabled"}
