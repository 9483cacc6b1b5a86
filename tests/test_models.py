"""The modern-architecture models as tasks (learned_opt.tasks.models), the stdlib text corpus, and a
suite entry naming a module task run through the evaluation."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import baselines as B
from learned_opt.evaluation import evaluate as E
from learned_opt.tasks import make_task
from learned_opt.tasks.models import ByteWindows, stdlib_bytes
from learned_opt.unroll import init_state, unroll

SMALL = {
    "transformer_lm": dict(data="stdlib_bytes", data_options={"context": 16, "max_bytes": 200_000},
                           model_options={"dim": 32, "layers": 1, "context": 16}),
    "bn_cnn": dict(data="mnist5k", model_options={"channels": [4, 8]}),
    "gru_rows": dict(data="mnist5k", model_options={"hidden": 16}),
    "res_mlp": dict(data="mnist5k", model_options={"width": 32, "blocks": 2}),
    "vit": dict(data="mnist5k", model_options={"dim": 16, "heads": 2, "layers": 1}),
}


@pytest.mark.parametrize("model", sorted(SMALL))
def test_every_model_trains_a_few_steps(model):
    task = make_task("module", model=model, batch_size=32, **SMALL[model])
    params = task.init_params(torch.Generator().manual_seed(0))
    rule = B.Adam(lr=3e-3)
    res = unroll(task, rule, params, init_state(rule, params, 30, task), 30, torch.Generator().manual_seed(1))
    assert not res.diverged and torch.isfinite(res.losses).all()
    assert res.losses[-5:].mean() < res.losses[:5].mean()
    m = task.metrics(res.params, "test", max_examples=64)
    assert math.isfinite(m["loss"]) and 0 <= m["accuracy"] <= 1


def test_the_stdlib_corpus_is_deterministic_and_windows_predict_the_next_byte():
    a, b = stdlib_bytes(100_000), stdlib_bytes(100_000)
    assert a.dtype == torch.uint8 and len(a) == 100_000 and torch.equal(a, b)
    sampler = ByteWindows(context=8, max_bytes=100_000)
    x, y = sampler(torch.Generator().manual_seed(0), "train", 4)
    x2, y2 = sampler(torch.Generator().manual_seed(0), "train", 4)
    assert torch.equal(x, x2) and x.shape == (4, 8) and torch.equal(x[:, 1:], y[:, :-1])
    val = sampler.validation(0.2)   # tuning text comes from the training split only
    assert len(val.splits["train"]) + len(val.splits["test"]) == len(sampler.splits["train"])


def test_a_suite_entry_names_a_module_task_and_the_evaluation_tunes_it_on_a_validation_split(tmp_path):
    cfg = {
        "device": "cpu", "steps": 8, "seeds": [100], "eval_every": 0, "eval_examples": 100, "progress": False,
        "tuning": {"method": "grid", "budget": 2, "seeds": [0], "objective": "final_val_loss", "val_fraction": 0.2,
                   "split_seed": 0, "seed": 0},
        "suite": {"cnn": {"name": "module", "model": "bn_cnn", "data": "digits",
                          "model_options": {"channels": [4], "image": 8}, "batch_size": 16}},
        "optimizers": {"adam": {"rule": "adam", "lr": 0.01, "tune": {"lr": [0.003, 0.03]}}},
        "wandb": {"mode": "disabled"},
    }
    summary = E.evaluate(copy.deepcopy(cfg), tmp_path)
    rows = summary["tasks"]["cnn"]["rows"]
    assert set(rows) == {"adam@default", "adam@tuned"}
    assert all(math.isfinite(r["stats"]["final_test_loss"]["median"]) for r in rows.values())
    with pytest.raises(ValueError, match="model="):
        E.evaluate({**copy.deepcopy(cfg), "suite": {"x": {"name": "module", "model": "nope", "data": "digits"}}},
                   tmp_path / "bad")


def test_the_modern_suite_and_the_peers_line_up_pass_the_evaluation_checks():
    pytest.importorskip("prodigyopt")
    pytest.importorskip("schedulefree")
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="evaluate", overrides=["suite=modern", "lineup=[adam,peers]"]),
                                     resolve=True)
    cfg.pop("threads", None)   # the entry point's (learned_opt.entry), not the evaluation's
    specs, suite = E.check_config(cfg, torch.device("cpu"))
    assert set(suite) == {"transformer_lm", "bn_cnn", "gru_rows", "res_mlp", "vit"}
    assert {s.label: s.family for s in specs} == {"celo": "learned", "adam": "adaptive", "adamw": "torch.optim", "prodigy": "torch.optim",
                                                   "sf_adamw": "torch.optim", "muon": "torch.optim"}
