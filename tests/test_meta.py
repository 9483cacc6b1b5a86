"""Meta-training: it learns, its meta-gradients are right, it resumes exactly, it survives NaN, it loads."""
from __future__ import annotations

import copy
import json
import math
import pickle

import higher
import pytest
import torch
from torch import nn

import baselines as B
import learned_opt
from learned_opt.meta import CheckpointError, TruncatedBPTT, meta_train
from learned_opt.meta import trainer as T
from learned_opt.meta.checkpoint import content_hash, load_checkpoint, save_checkpoint
from learned_opt.optimizers import LearnedAdam, make_learned_rule
from learned_opt.tasks import make_family
from learned_opt.tasks.base import TaskFamily
from learned_opt.unroll import unroll
from learned_opt.utils import generator

BASE = {
    "seed": 0, "device": "cpu", "progress": False, "checkpoint_every": 0,
    "optimizer": {"name": "learned_adam", "lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8},
    "family": {"name": "quadratic_family", "dim": 10},
    "meta": {"steps": 4, "horizon": 20, "truncation": 10, "tasks_per_step": 2, "optimizer": "adam", "lr": 0.05,
             "clip_grad_norm": 1.0, "first_order": False, "meta_loss": "log_mean", "divergence_factor": 1000.0},
    "validation": {"every": 0, "tasks": 0, "steps": 20},
    "wandb": {"mode": "disabled"},
}


def changed(base: dict, **changes) -> dict:
    """A deep copy of ``base`` with ``changes`` applied: ``meta__lr=0.1`` sets ``cfg["meta"]["lr"]``."""
    cfg = copy.deepcopy(base)
    for dotted, value in changes.items():
        node = cfg
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return cfg


def cfg_with(**changes) -> dict:
    return changed(BASE, **changes)


def held_out_loss(rule, family_cfg: dict, steps: int, n: int = 8) -> float:
    cfg = {"meta": {"horizon": steps}, "validation": {"tasks": n, "steps": steps}}
    fam = dict(family_cfg)
    family = make_family(fam.pop("name"), **fam)
    return T.validation_loss(rule, family, cfg, torch.device("cpu"))


def test_meta_training_the_mlp_optimizer_lowers_held_out_loss_markedly(tmp_path):
    cfg = cfg_with(optimizer={"name": "mlp"}, meta__steps=40, meta__lr=0.01, meta__tasks_per_step=4)
    torch.manual_seed(0)
    before = held_out_loss(T.build_rule(cfg, torch.device("cpu")), cfg["family"], 20)
    meta_train(cfg, tmp_path)
    after = held_out_loss(learned_opt.load(tmp_path / "checkpoint.pt"), cfg["family"], 20)
    assert after < 0.5 * before, (before, after)


def test_learned_adam_moves_its_lr_toward_the_grid_search_optimum(tmp_path):
    cfg = cfg_with(meta__steps=30, meta__truncation=20, meta__horizon=20, meta__lr=0.1, meta__tasks_per_step=4)
    family = make_family("quadratic_family", dim=10)
    grid = [10 ** e for e in (-3, -2.5, -2, -1.5, -1, -0.5, 0)]
    scores = {}
    for lr in grid:
        losses = []
        for i in range(8):
            task = family.sample(torch.Generator().manual_seed(50 + i))
            g = generator(50 + i)
            params = task.init_params(g)
            rule = B.Adam(lr=lr)
            res = unroll(task, rule, params, rule.init(params), 20, g)
            losses.append(res.losses.log().mean().item() if not res.diverged else math.inf)
        scores[lr] = sum(losses) / len(losses)
    best = min(scores, key=scores.get)
    meta_train(cfg, tmp_path)
    learned = learned_opt.load(tmp_path / "checkpoint.pt").current_hparams()["lr"]
    start = cfg["optimizer"]["lr"]
    assert best > start  # the test is only meaningful if the optimum is away from the start
    assert abs(math.log(learned / best)) < abs(math.log(start / best)) / 2, (start, learned, best)


def test_meta_gradient_matches_finite_differences_and_higher():
    family = make_family("quadratic_family", dim=6, dtype="float64")
    rule = LearnedAdam(lr=0.05, eps=1e-16).double()
    est = TruncatedBPTT(family, horizon=8, truncation=8, num_tasks=1, device=torch.device("cpu"),
                        generator=generator(3), meta_loss="mean")
    state = copy.deepcopy(est.state_dict())
    grads = dict(zip([n for n, p in rule.named_parameters()], est.estimate(rule).grads))

    def meta_loss_at(log_lr: float) -> float:
        r = LearnedAdam(lr=0.05, eps=1e-16).double()
        with torch.no_grad():
            r.log_lr.fill_(log_lr)
        e = TruncatedBPTT(family, horizon=8, truncation=8, num_tasks=1, device=torch.device("cpu"),
                          generator=generator(3), meta_loss="mean")
        e.load_state_dict(copy.deepcopy(state), r)
        return e.estimate(r).meta_loss

    x0, h = rule.log_lr.item(), 1e-5
    fd = (meta_loss_at(x0 + h) - meta_loss_at(x0 - h)) / (2 * h)
    assert grads["log_lr"].item() == pytest.approx(fd, rel=1e-6)

    # higher: the same inner loop with torch.optim.Adam and a differentiable lr override
    task = family.sample(torch.Generator().manual_seed(est.slots[0].task_seed))
    g = torch.Generator().manual_seed(est.slots[0].task_seed)
    init = task.init_params(g)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = nn.Parameter(init["theta"].clone())

    model = Wrap()
    # the rule's hyperparameters as it holds them (its parameters were created in float32)
    lr = rule.log_lr.detach().exp().clone().requires_grad_()
    betas = (torch.sigmoid(rule.logit_beta1).item(), torch.sigmoid(rule.logit_beta2).item())
    opt = torch.optim.Adam(model.parameters(), lr=lr.item(), betas=betas, eps=rule.log_eps.exp().item())
    total = 0.0
    with higher.innerloop_ctx(model, opt, copy_initial_weights=True, override={"lr": [lr]}) as (fm, dopt):
        for _ in range(8):
            loss = task.loss({"theta": fm.theta}, ())
            total = total + loss / 8
            dopt.step(loss)
    (dlr,) = torch.autograd.grad(total, [lr])
    assert grads["log_lr"].item() == pytest.approx((dlr * lr).item(), rel=1e-8)  # d/dlog lr = lr d/dlr


def test_resume_after_interruption_equals_uninterrupted_bitwise(tmp_path, monkeypatch):
    cfg = cfg_with(optimizer={"name": "mlp"}, meta__steps=7, checkpoint_every=2)
    meta_train(copy.deepcopy(cfg), tmp_path / "full")
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["meta_params"]

    real = TruncatedBPTT.estimate
    calls = {"n": 0}

    def interrupted(self, rule):
        calls["n"] += 1
        if calls["n"] == 6:  # dies during meta-step 6; the last checkpoint is at step 4
            raise KeyboardInterrupt
        return real(self, rule)

    monkeypatch.setattr(TruncatedBPTT, "estimate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        meta_train(copy.deepcopy(cfg), tmp_path / "cut")
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["meta_step"] == 4
    monkeypatch.setattr(TruncatedBPTT, "estimate", real)
    with pytest.raises(CheckpointError, match="resume"):
        meta_train(copy.deepcopy(cfg), tmp_path / "cut")  # refuses to overwrite without resume
    meta_train(copy.deepcopy(cfg), tmp_path / "cut", resume=True)
    resumed = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert resumed["meta_step"] == 7
    for k in full:
        assert torch.equal(full[k], resumed["meta_params"][k]), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-3:] == [5, 6, 7]


class NaNFamily(TaskFamily):
    """Quadratics whose loss turns NaN for some inner iterates (a poisoned region of parameter space)."""

    def __init__(self):
        self.inner = make_family("quadratic_family", dim=4)

    def sample(self, generator):
        task = self.inner.sample(generator)
        base = task.loss

        def loss(params, batch):
            value = base(params, batch)
            return value + 0.0 * torch.log(1.5 - params["theta"].abs().max())  # NaN once any |theta_i| > 1.5
        task.loss = loss
        return task


def test_nan_in_the_inner_loss_never_reaches_meta_parameters(tmp_path, monkeypatch):
    monkeypatch.setitem(T.__dict__, "make_family", lambda name, **kw: NaNFamily())
    cfg = cfg_with(meta__steps=15, meta__lr=0.5, optimizer={"name": "learned_adam", "lr": 0.5})
    summary = meta_train(cfg, tmp_path)
    assert summary["diverged_truncations"] > 0
    rule = learned_opt.load(tmp_path / "checkpoint.pt")
    assert all(torch.isfinite(p).all() for p in rule.parameters())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["diverged_truncations"] == summary["diverged_truncations"]


def test_corrupt_missing_foreign_and_mismatched_checkpoints_are_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        learned_opt.load(tmp_path / "nope.pt")
    rule = make_learned_rule("mlp")
    good = save_checkpoint(tmp_path / "good.pt", rule, 3, {"a": 1})
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        learned_opt.load(tmp_path / "trunc.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError):
        learned_opt.load(tmp_path / "garbage.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="format"):
        learned_opt.load(tmp_path / "foreign.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="weights_only|corrupt"):
        learned_opt.load(tmp_path / "evil.pt")
    ckpt = torch.load(good, weights_only=True)
    ckpt["rule"]["config"]["hidden_sizes"] = [7]
    ckpt["sha256"] = content_hash(ckpt)  # a consistent file whose meta-parameters do not fit its rule
    torch.save(ckpt, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        learned_opt.load(tmp_path / "mismatch.pt")

    cfg = cfg_with(meta__steps=2)
    meta_train(copy.deepcopy(cfg), tmp_path / "run")
    other = cfg_with(meta__steps=4, meta__truncation=5)
    with pytest.raises(CheckpointError, match="different configuration"):
        meta_train(other, tmp_path / "run", resume=True)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        meta_train(copy.deepcopy(cfg), tmp_path / "empty", resume=True)


@pytest.mark.parametrize("bad,match", [
    ({"meta__steps": 0}, "meta.steps"),
    ({"meta__truncation": 50}, "truncation"),
    ({"meta__optimizer": "lbfgs"}, "allowed"),
    ({"meta__meta_loss": "median"}, "allowed"),
    ({"optimizer": {"name": "transformer"}}, "allowed"),
    ({"family": {"name": "imagenet"}}, "allowed"),
    ({"wandb": {"mode": "cloud"}}, "allowed"),
])
def test_bad_config_is_rejected_before_work(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        meta_train(cfg_with(**bad), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_loaded_learned_optimizer_trains_a_conv_net_through_the_adapter(tmp_path):
    meta_train(cfg_with(meta__steps=2), tmp_path)
    rule = learned_opt.load(tmp_path / "checkpoint.pt")
    task = learned_opt.make_task("conv", dataset="digits", batch_size=64)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 10))
    opt = B.RuleOptimizer(net.parameters(), rule, lr=10.0)  # lr multiplies the learned rule's step
    g = generator(0)
    losses = []
    for _ in range(60):
        x, y = task.sample_batch(g)
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10


def test_best_checkpoint_holds_the_lowest_validation_loss(tmp_path):
    cfg = cfg_with(meta__steps=8, meta__lr=0.2, validation={"every": 1, "tasks": 2, "steps": 20})
    summary = meta_train(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    vals = [(r["val_loss"], r["step"]) for r in rows if r.get("val_loss") is not None]
    assert len(vals) == 8
    best_val, best_step = min(vals)
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["meta_step"] == best_step == summary["best_meta_step"]
    assert ckpt["val_loss"] == pytest.approx(best_val)
    # the saved meta-parameters really score that validation loss again
    again = T.validation_loss(learned_opt.load(tmp_path / "best.pt"), make_family("quadratic_family", dim=10),
                              cfg, torch.device("cpu"))
    assert again == pytest.approx(best_val, rel=1e-6)


def test_a_run_whose_every_truncation_diverges_warns_and_leaves_meta_parameters_alone(tmp_path):
    cfg = cfg_with(optimizer={"name": "learned_adam", "lr": 50.0}, meta__steps=3, meta__divergence_factor=2.0)
    before = T.build_rule(cfg, torch.device("cpu")).state_dict()
    with pytest.warns(UserWarning, match="every meta-step of this run was skipped"):
        summary = meta_train(cfg, tmp_path)
    assert summary["skipped_steps"] == 3 and summary["diverged_truncations"] == 6
    after = learned_opt.load(tmp_path / "checkpoint.pt").state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_a_run_from_before_an_option_existed_resumes_with_the_option_at_its_old_value(tmp_path):
    lstm = {"name": "lstm", "hidden_size": 4}
    cfg = cfg_with(optimizer=lstm, meta__steps=2)  # the config names neither step_scale nor input_scale
    meta_train(cfg, tmp_path)
    later = cfg_with(optimizer={**lstm, "step_scale": "none", "input_scale": "none"}, meta__steps=3)
    assert meta_train(later, tmp_path, resume=True)["meta_steps"] == 3
    with pytest.raises(CheckpointError, match="optimizer.step_scale: checkpoint 'none' vs now 'grad_rms'"):
        meta_train(cfg_with(optimizer={**lstm, "step_scale": "grad_rms"}, meta__steps=4), tmp_path, resume=True)
