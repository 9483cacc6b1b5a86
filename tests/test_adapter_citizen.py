"""The adapter is a full torch.optim citizen: deepcopy, pickle and torch.save of the optimizer continue
bitwise, and hyperparameters are validated alike for hand-crafted and learned rules."""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import baselines as B
from learned_opt.optimizers import make_learned_rule

torch.set_num_threads(1)


def make_rule(kind: str):
    torch.manual_seed(1)
    return {"adam": lambda: B.Adam(lr=0.01),
            "nesterov": lambda: B.Nesterov(lr=0.05, momentum=0.9),
            "lstm": lambda: make_learned_rule("lstm", hidden_size=4),
            "mlp": lambda: make_learned_rule("mlp", hidden_sizes=[8]),
            "learned_adam": lambda: make_learned_rule("learned_adam", lr=0.01)}[kind]()


def model_and_opt(kind: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    return model, B.RuleOptimizer(model.parameters(), make_rule(kind))


def train(model, opt, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 4, generator=g)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def torch_save_round_trip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


COPIES = {"deepcopy": copy.deepcopy, "pickle": lambda o: pickle.loads(pickle.dumps(o)),
          "torch.save": torch_save_round_trip}


@pytest.mark.parametrize("how", list(COPIES))
@pytest.mark.parametrize("kind", ["adam", "nesterov", "lstm", "mlp", "learned_adam"])
def test_a_copied_optimizer_continues_bitwise(kind, how):
    model, opt = model_and_opt(kind)
    train(model, opt, 3, seed=0)
    model2, opt2 = COPIES[how]((model, opt))     # model and optimizer travel together, as in a checkpoint
    train(model, opt, 4, seed=1)
    train(model2, opt2, 4, seed=1)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


@pytest.mark.parametrize("kind", ["adam", "lstm"])
def test_a_deep_copied_optimizer_alone_steps_like_the_original(kind):
    """copy.deepcopy(opt) then step() (this once raised AttributeError)."""
    model, opt = model_and_opt(kind)
    train(model, opt, 2, seed=0)
    model(torch.ones(3, 4)).sum().backward()
    twin = copy.deepcopy(opt)
    for a, b in zip(opt.param_groups[0]["params"], twin.param_groups[0]["params"]):
        b.grad = a.grad.clone()  # nn.Parameter's deepcopy leaves .grad behind
    opt.step()
    twin.step()
    for a, b in zip(opt.param_groups[0]["params"], twin.param_groups[0]["params"]):
        assert a is not b and torch.equal(a, b)


BAD = [(-1.0, ValueError, "lr=-1.0 is not allowed"), (float("nan"), ValueError, "lr=nan is not allowed"),
       (float("inf"), ValueError, "lr=inf is not allowed"), ("0.1", TypeError, "lr='0.1' is not allowed")]


@pytest.mark.parametrize("kind", ["adam", "lstm", "mlp", "learned_adam"])
@pytest.mark.parametrize("value,exc,match", BAD)
def test_bad_lr_is_rejected_alike_for_hand_crafted_and_learned_rules(kind, value, exc, match):
    model = nn.Linear(3, 1)
    rule = make_rule(kind)
    with pytest.raises(exc, match=match):
        B.RuleOptimizer(model.parameters(), rule, lr=value)
    with pytest.raises(exc, match=match):
        B.RuleOptimizer([{"params": [model.weight]}, {"params": [model.bias], "lr": value}], rule)
    opt = B.RuleOptimizer([model.weight], rule)
    with pytest.raises(exc, match=match):
        opt.add_param_group({"params": [model.bias], "lr": value})
    # a value set later (as a scheduler does) is checked at the next step, before anything moves
    opt = B.RuleOptimizer(model.parameters(), rule)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.ones(2, 3)).sum().backward()
    opt.param_groups[0]["lr"] = value
    with pytest.raises(exc, match=match):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("kind", ["adam", "lstm"])
def test_good_lr_values_are_accepted_and_zero_lr_does_not_move(kind):
    model = nn.Linear(3, 1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = B.RuleOptimizer(model.parameters(), make_rule(kind), lr=0.0)
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    B.RuleOptimizer(model.parameters(), make_rule(kind), lr=torch.tensor(0.5))


def test_a_learned_rule_takes_no_schedule_for_lr():
    with pytest.raises(TypeError, match="no schedule"):
        B.RuleOptimizer(nn.Linear(2, 1).parameters(), make_rule("lstm"), lr=lambda step: 0.1)


@pytest.mark.parametrize("cls", [B.Adam, type(make_rule("lstm"))])
def test_passing_the_class_instead_of_an_instance_is_a_type_error(cls):
    with pytest.raises(TypeError, match=f"got the class {cls.__name__}.*{cls.__name__}\\(\\)"):
        B.RuleOptimizer(nn.Linear(2, 1).parameters(), cls)
