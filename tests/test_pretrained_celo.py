"""The recommended general-purpose learned optimizer (learned_opt/pretrained/celo_radial.pt): found by its short
names, the celo core with its two controllers, rebuilt bit for bit by the commands that made it, usable through the torch.optim adapter, and better than
Adam at its default lr on a task it never saw."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

import baselines as B
import learned_opt
from learned_opt.optimizers import Celo, Controlled
from learned_opt.optimizers.controllers import HypergradientStepSize, RadialGain
from learned_opt.optimizers.files import derive_checkpoint, load_checkpoint, resolve_pretrained
from learned_opt.tasks import make_task
from learned_opt.unroll import init_state, unroll

SHIPPED = resolve_pretrained("celo")


def test_short_names_find_the_shipped_file():
    assert SHIPPED.name == "celo_radial.pt" and SHIPPED.is_file()
    for name in ("celo_general", "celo_hd", "celo_backoff"):   # the earlier ones, by their own names
        assert resolve_pretrained(name).name == f"{name}.pt"
    a, b = learned_opt.load("celo"), learned_opt.load(str(SHIPPED))
    assert isinstance(a, Controlled) and isinstance(a.core, Celo) and list(a.controllers) == ["radial", "hypergradient"]
    radial, hd = a.controllers["radial"], a.controllers["hypergradient"]
    assert isinstance(radial, RadialGain) and radial.config() == {"gain": 0.1, "range": 4.0, "shrink": 2.0,
                                                                  "learn_gain": False}
    assert isinstance(hd, HypergradientStepSize) and hd.shrink == 2.0 and hd.range == 3.0 and hd.learn_gain
    assert learned_opt.load("general").state_dict().keys() == a.state_dict().keys()
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_it_is_celo_backoff_with_the_radial_controller_its_readme_names(tmp_path):
    """learned_opt/pretrained/README.md: celo_backoff's file with radial_gain=0.1 and nothing else changed;
    re-deriving it (the single class's option name, as the file records) gives the same meta-parameters and
    config, and so does the new form (the radial controller with the shrink the single class shared)."""
    backoff = resolve_pretrained("celo_backoff")
    again = derive_checkpoint("celo_backoff", tmp_path / "again.pt", {"radial_gain": 0.1}, {})
    shipped, rebuilt, src = load_checkpoint(SHIPPED), load_checkpoint(again), load_checkpoint(backoff)
    assert learned_opt.load(str(SHIPPED)).config() == learned_opt.load(str(again)).config()
    assert shipped["derived_from"] == rebuilt["derived_from"] and shipped["derived_from"]["source_sha256"] == src["sha256"]
    for k, v in shipped["meta_params"].items():
        assert torch.equal(v, src["meta_params"][k]), k
    for (k, x), (_, y) in zip(learned_opt.load(str(SHIPPED)).state_dict().items(),
                              learned_opt.load(str(again)).state_dict().items()):
        assert torch.equal(x, y), k
    new = derive_checkpoint("celo_backoff", tmp_path / "new.pt", {"radial.gain": 0.1, "radial.shrink": 2.0})
    a, b = learned_opt.load(str(SHIPPED)), learned_opt.load(str(new))
    assert a.config() == b.config()
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_celo_backoff_is_celo_hd_with_the_settings_its_readme_names(tmp_path):
    """learned_opt/pretrained/README.md: celo_hd's meta-trained weights, log_scale + 1 (steps e times larger), backing off
    twice as fast (hypergradient_shrink=2). Re-deriving it gives the same meta-parameters and config."""
    backoff = resolve_pretrained("celo_backoff")
    again = derive_checkpoint("celo_hd", tmp_path / "again.pt", {"hypergradient_shrink": 2}, {"log_scale": 1.0})
    shipped, rebuilt, hd = load_checkpoint(backoff), load_checkpoint(again), load_checkpoint(resolve_pretrained("celo_hd"))
    # options added since the file was made take their defaults (the same rule): compare the rebuilt rules
    assert learned_opt.load(str(backoff)).config() == learned_opt.load(str(again)).config()
    assert shipped["derived_from"] == rebuilt["derived_from"]
    assert shipped["derived_from"]["source_sha256"] == hd["sha256"]
    for (k, x), (_, y) in zip(learned_opt.load(str(backoff)).state_dict().items(),
                              learned_opt.load(str(again)).state_dict().items()):
        assert torch.equal(x, y), k
    for k, v in shipped["meta_params"].items():
        assert torch.equal(v, hd["meta_params"][k]) == (k != "log_scale"), k


def mean_loss(rule, task, steps: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    params = task.init_params(g)
    with torch.no_grad():
        state = init_state(rule, params, steps)
        res = unroll(task, rule, params, state, steps, g)
    assert not res.diverged
    return float(res.losses.mean())


def test_beats_adam_at_its_default_lr_on_an_unseen_wider_mlp():
    """Width 256 is outside the meta-training family (widths 16-128); Adam's default lr is the reference."""
    task = make_task("mlp", dataset="digits", hidden_sizes=[256], activation="relu", batch_size=128)
    celo = mean_loss(learned_opt.load("celo"), task, 200, seed=7)
    adam = mean_loss(B.Adam(lr=1e-3), task, 200, seed=7)
    assert celo < 0.8 * adam, (celo, adam)


def test_trains_an_nn_module_through_the_adapter():
    """A regression net (MSE, GELU: nothing the family has) trained by the adapter, against torch.optim.Adam."""
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = x[:, :3].sum(1, keepdim=True).sin()
    init = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))
    finals = {}
    for name in ("celo", "adam"):
        model = copy.deepcopy(init)
        opt = (B.RuleOptimizer(model.parameters(), learned_opt.load("celo")) if name == "celo"
               else torch.optim.Adam(model.parameters(), lr=1e-3))
        losses = []
        for _ in range(300):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        finals[name] = losses[-1]
        assert all(map(math.isfinite, losses)) and losses[-1] < 0.5 * losses[0], name
    assert finals["celo"] < finals["adam"], finals


def test_its_step_size_adapts_per_task():
    """The hypergradient state: after 200 steps the per-tensor log step sizes differ between two
    unseen tasks (a wide ReLU MLP on 8x8 digits, a tanh MLP on MNIST-1D) and between tensors."""
    rule = learned_opt.load("celo")
    finals = []
    for task in (make_task("mlp", dataset="digits", hidden_sizes=[256], activation="relu", batch_size=128),
                 make_task("mlp", dataset="mnist1d", hidden_sizes=[64, 64], activation="tanh", batch_size=64)):
        g = torch.Generator().manual_seed(3)
        params = task.init_params(g)
        with torch.no_grad():
            state = init_state(rule, params, 200)
            res = unroll(task, rule, params, state, 200, g)
        assert all(v.numel() == 1 for v in res.state["hypergradient.log_step"].values())   # per tensor
        logs = [float(v.flatten()[0]) for v in res.state["hypergradient.log_step"].values()]
        assert all(abs(x) <= rule.controllers["hypergradient"].range + 1e-6 for x in logs)
        assert max(logs) - min(logs) > 0.1, logs    # per tensor
        finals.append(logs)
    assert max(abs(a - b) for a, b in zip(finals[0], finals[1][:len(finals[0])])) > 0.1, finals


def test_its_radial_controller_stops_the_growth_that_hurts_a_regression():
    """An MSE student of a tanh teacher on MNIST-1D (no loss the family has): celo_backoff grows every tensor
    and plateaus; the shipped rule's radial factor falls there and its mean loss is clearly lower."""
    task = make_task("regression", dataset="mnist1d", hidden_sizes=[32], activation="tanh", outputs=3, batch_size=64)
    radial, backoff = learned_opt.load("celo"), learned_opt.load("celo_backoff")
    g = torch.Generator().manual_seed(11)
    params = task.init_params(g)
    with torch.no_grad():
        res = unroll(task, radial, params, init_state(radial, params, 300), 300, g)
    assert not res.diverged and min(float(v.min()) for v in res.state["radial.log_radial"].values()) < -1.0
    assert float(res.losses.mean()) < 0.8 * mean_loss(backoff, task, 300, seed=11)
