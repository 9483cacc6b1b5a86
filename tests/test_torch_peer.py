"""torch.optim optimizers as update rules (baselines.torch_peer) and as line-up entries (evaluation/peers.py).

The oracle is the same torch.optim optimizer stepping an nn.Module in a plain loop on the same batches.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import baselines as B
from baselines.checks import ConfigError
from baselines.torch_peer import TorchOptimRule
from learned_opt.evaluation import evaluate as E
from learned_opt.evaluation import suite as S
from learned_opt.tasks import make_task
from learned_opt.tasks.module import ModuleTask
from learned_opt.unroll import init_state, unroll

D = torch.float64


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3))


def module_task() -> ModuleTask:
    g = torch.Generator().manual_seed(0)
    x, xt = torch.randn(80, 6, generator=g), torch.randn(40, 6, generator=g)
    w = torch.randn(6, 3, generator=g)
    return ModuleTask(net, {"train": (x, (x @ w).argmax(1)), "test": (xt, (xt @ w).argmax(1))}, batch_size=16,
                      dtype="float64")


def run(task, rule, steps=20, seed=3):
    params = task.init_params(torch.Generator().manual_seed(1))
    return params, unroll(task, rule, params, init_state(rule, params, steps, task), steps,
                          torch.Generator().manual_seed(seed))


def torch_loop(task, params, make_opts, steps=20, seed=3):
    model = net().to(D)
    model.load_state_dict(params)
    opts = make_opts(model)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x, y = task.sample_batch(g)
        for o in opts:
            o.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        for o in opts:
            o.step()
        losses.append(loss.item())
    return model, opts, torch.tensor(losses, dtype=D)


def test_a_torch_adam_peer_takes_exactly_the_steps_of_baselines_adam_and_of_torch_adam():
    task = make_task("mlp", dataset="digits", hidden_sizes=[8], dtype="float64", batch_size=32)
    _, peer = run(task, TorchOptimRule("torch.optim.Adam", lr=0.01))
    _, ours = run(task, B.Adam(lr=0.01))
    torch.testing.assert_close(peer.losses, ours.losses, rtol=1e-10, atol=1e-12)
    for k in ours.params:
        torch.testing.assert_close(peer.params[k], ours.params[k], rtol=1e-8, atol=1e-10)
    mtask = module_task()
    params, peer = run(mtask, TorchOptimRule(torch.optim.Adam, lr=0.01))
    _, _, ref = torch_loop(mtask, params, lambda m: [torch.optim.Adam(m.parameters(), lr=0.01)])
    torch.testing.assert_close(peer.losses, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon")
def test_muon_steps_the_matrices_and_adamw_the_rest():
    task = module_task()
    rule = TorchOptimRule("torch.optim.Muon", lr=0.02, rest={"lr": 0.003})
    params, peer = run(task, rule)

    def opts(m):
        mats = [p for p in m.parameters() if p.dim() == 2]
        rest = [p for p in m.parameters() if p.dim() != 2]
        return [torch.optim.Muon(mats, lr=0.02), torch.optim.AdamW(rest, lr=0.003)]

    model, _, ref = torch_loop(task, params, opts)
    torch.testing.assert_close(peer.losses, ref, rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="only torch.optim.Muon takes `rest`"):
        TorchOptimRule("torch.optim.Adam", rest={"lr": 0.1})


def test_prodigy_runs_like_its_own_loop():
    prodigyopt = pytest.importorskip("prodigyopt")
    task = module_task()
    params, peer = run(task, TorchOptimRule("prodigyopt.Prodigy", lr=1.0))
    _, _, ref = torch_loop(task, params, lambda m: [prodigyopt.Prodigy(m.parameters(), lr=1.0)])
    torch.testing.assert_close(peer.losses, ref, rtol=1e-9, atol=1e-11)


def test_schedule_free_is_evaluated_at_its_eval_point():
    schedulefree = pytest.importorskip("schedulefree")
    task = module_task()
    rule = TorchOptimRule("schedulefree.AdamWScheduleFree", lr=0.01)
    params, peer = run(task, rule)

    def opts(m):
        o = schedulefree.AdamWScheduleFree(m.parameters(), lr=0.01)
        o.train()
        return [o]

    model, (opt,), ref = torch_loop(task, params, opts)
    torch.testing.assert_close(peer.losses, ref, rtol=1e-9, atol=1e-11)
    at = rule.eval_params(peer.params)
    again = rule.eval_params(peer.params)          # the switch leaves the training point as it was
    opt.eval()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(at[k], v, rtol=1e-9, atol=1e-11)
        assert torch.equal(at[k], again[k])
    assert not torch.equal(at["0.weight"], peer.params["0.weight"])
    # the evaluation's cell reports the metrics at the eval point
    cell = S.run_cell(task, TorchOptimRule("schedulefree.AdamWScheduleFree", lr=0.01), 7, 10, torch.device("cpu"))
    rule2 = TorchOptimRule("schedulefree.AdamWScheduleFree", lr=0.01)
    g = torch.Generator().manual_seed(7)
    p = task.init_params(g)
    res = unroll(task, rule2, p, init_state(rule2, p, 10, task), 10, g)
    assert cell.final_test["loss"] == pytest.approx(task.metrics(rule2.eval_params(res.params))["loss"], rel=1e-12)
    assert cell.final_test["loss"] != pytest.approx(task.metrics(res.params)["loss"], rel=1e-9)


def test_a_peer_state_is_spent_once_and_no_meta_gradient_goes_through_it():
    task = module_task()
    rule = TorchOptimRule("torch.optim.SGD", lr=0.1)
    params = task.init_params(torch.Generator().manual_seed(0))
    grads = {k: torch.ones_like(v) for k, v in params.items() if k not in task.buffer_names}
    params = {k: params[k] for k in grads}
    state = rule.init(params)
    new, _ = rule.update(grads, state, params)
    assert torch.equal(new["0.bias"], params["0.bias"] - 0.1)
    with pytest.raises(RuntimeError, match="advanced once"):
        rule.update(grads, state, params)
    with pytest.raises(RuntimeError, match="not differentiable"):
        rule.update({k: g.requires_grad_() for k, g in grads.items()}, rule.init(params), params)


TINY = {
    "device": "cpu", "steps": 10, "seeds": [100], "eval_every": 5, "eval_examples": 200, "progress": False,
    "tuning": {"method": "grid", "budget": 2, "seeds": [0], "objective": "final_val_loss", "val_fraction": 0.2,
               "split_seed": 0, "seed": 0},
    "suite": {"digits": {"name": "mlp", "dataset": "digits", "hidden_sizes": [8], "batch_size": 32}},
    "optimizers": {"adam": {"rule": "adam", "lr": 0.01},
                   "torch_adam": {"torch_optim": "torch.optim.Adam", "lr": 0.01, "tune": {"lr": [0.003, 0.03]}}},
    "wandb": {"mode": "disabled"},
}


def test_a_line_up_entry_names_a_torch_optim_class_and_runs_through_the_same_cells_and_tuning(tmp_path):
    summary = E.evaluate(copy.deepcopy(TINY), tmp_path)
    rows = summary["tasks"]["digits"]["rows"]
    assert set(rows) == {"adam@default", "torch_adam@default", "torch_adam@tuned"}
    cells = {e: json.loads((tmp_path / "cells" / f"{e}__digits__100.json").read_text())
             for e in ("adam@default", "torch_adam@default")}
    assert cells["adam@default"]["train_loss"] == pytest.approx(cells["torch_adam@default"]["train_loss"], rel=1e-5)
    tuned = json.loads((tmp_path / "tuning" / "torch_adam__digits.json").read_text())
    assert len(tuned["trials"]) == 2 and tuned["best"]["lr"] in (0.003, 0.03)
    assert rows["torch_adam@tuned"]["hparams"]["lr"] == tuned["best"]["lr"]


@pytest.mark.parametrize("entry, match", [
    ({"torch_optim": "fake_peer_module.FastOpt"}, r"module 'fake_peer_module' is not installed; install it with "
                                                  r"`pip install fake_peer_module`"),
    ({"torch_optim": "torch.optim.NoSuchOpt"}, "has no attribute 'NoSuchOpt'"),
    ({"torch_optim": "collections.OrderedDict"}, "torch.optim.Optimizer subclass"),
    ({"torch_optim": "torch.optim.Adam", "lr": -1.0}, "optimizers.bad: .*Invalid learning rate"),
    ({"torch_optim": "torch.optim.Adam", "momentum": 0.9}, "optimizers.bad.momentum: torch.optim.Adam takes no"),
    ({"torch_optim": "torch.optim.Adam", "tune": {"betas": [0.1, 0.2]}}, "the search would try"),
])
def test_a_bad_or_missing_peer_is_named_before_any_cell_runs(tmp_path, entry, match):
    cfg = copy.deepcopy(TINY)
    cfg["optimizers"] = {"bad": entry}
    with pytest.raises(ConfigError, match=match):
        E.evaluate(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_known_peer_package_is_named_with_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "prodigyopt", None)   # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install prodigyopt.*learned-opt\[peers\]"):
        S.parse_optimizers({"p": {"torch_optim": "prodigyopt.Prodigy"}})
