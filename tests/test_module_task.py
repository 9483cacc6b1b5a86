"""Any nn.Module as a task (learned_opt.tasks.module.ModuleTask) against plain PyTorch training loops.

The oracle is the module itself trained by ``torch.optim`` on the same batches: the losses step by
step, the BatchNorm running statistics and the eval-mode test loss must agree with what ``unroll``
gives; meta-gradients through an unroll agree with ``higher`` differentiating the same torch loop.
"""
from __future__ import annotations

import higher
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import baselines as B
from baselines.adapter import RuleOptimizer
from learned_opt.meta import PES, TruncatedBPTT, TruncatedES
from learned_opt.optimizers import LearnedSGD
from learned_opt.tasks import make_task
from learned_opt.tasks.base import SingleTaskFamily
from learned_opt.tasks.module import ModuleTask
from learned_opt.tasks.population import PopulationTask
from learned_opt.unroll import init_state, unroll

D = torch.float64


def bn_net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3))


def data(seed: int = 0, n: int = 80) -> dict:
    g = torch.Generator().manual_seed(seed)
    x, xt = torch.randn(n, 6, generator=g), torch.randn(n // 2, 6, generator=g)
    w = torch.randn(6, 3, generator=g)
    return {"train": (x, (x @ w).argmax(1)), "test": (xt, (xt @ w).argmax(1))}


def bn_task(**kw) -> ModuleTask:
    return ModuleTask(bn_net, data(), batch_size=16, dtype="float64", **kw)


def torch_loop(task: ModuleTask, params: dict, make_opt, steps: int, seed: int):
    """The module trained by a torch.optim optimizer on the task's batches (drawn alike)."""
    model = bn_net().to(D)
    model.load_state_dict(params)
    opt = make_opt(model.parameters())
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x, y = task.sample_batch(g)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, torch.tensor(losses, dtype=D)


@pytest.mark.parametrize("which", ["sgd", "adam"])
def test_unroll_on_a_batchnorm_module_is_the_torch_optim_loop(which):
    task = bn_task()
    assert task.buffer_names == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    params = task.init_params(torch.Generator().manual_seed(1))
    rule, make_opt = ((B.SGD(lr=0.1, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
                      if which == "sgd" else (B.Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)))
    steps = 25
    res = unroll(task, rule, params, init_state(rule, params, steps, task), steps, torch.Generator().manual_seed(5))
    model, ref = torch_loop(task, params, make_opt, steps, 5)
    torch.testing.assert_close(res.losses, ref, rtol=1e-10, atol=1e-12)
    state = model.state_dict()
    assert set(res.params) == set(state)
    for k, v in state.items():   # running statistics (and the batch count) carried through the unroll
        torch.testing.assert_close(res.params[k], v, rtol=1e-8, atol=1e-10)
    assert int(res.params["1.num_batches_tracked"]) == steps
    assert not torch.equal(res.params["1.running_mean"], params["1.running_mean"])
    model.eval()
    x, y = task._data["test"]
    with torch.no_grad():
        out = model(x)
    m = task.metrics(res.params, "test")
    assert m["loss"] == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-9)
    assert m["accuracy"] == pytest.approx((out.argmax(1) == y).double().mean().item())
    # the rule never sees the buffers
    assert set(init_state(rule, params, steps, task).get("exp_avg", params)) >= set(task.param_names)
    assert not set(init_state(rule, params, steps, task).get("exp_avg", {})) & task.buffer_names


def test_the_caller_params_are_never_written():
    task = bn_task()
    params = task.init_params(torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in params.items()}
    task.loss(params, task.sample_batch(torch.Generator().manual_seed(0)))
    rule = B.Adam(lr=0.01)
    unroll(task, rule, params, init_state(rule, params, 3, task), 3, torch.Generator().manual_seed(0))
    for k in before:
        assert torch.equal(before[k], params[k]), k


def test_init_params_come_from_the_generator_and_leave_the_global_rng_alone():
    task = bn_task()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = task.init_params(torch.Generator().manual_seed(7))
    assert torch.equal(torch.rand(3), expected)
    b = task.init_params(torch.Generator().manual_seed(7))
    c = task.init_params(torch.Generator().manual_seed(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.weight"], c["0.weight"])
    assert a["0.weight"].dtype == D and a["1.num_batches_tracked"].dtype == torch.int64


def test_the_rule_optimizer_adapter_trains_the_module_like_the_unroll():
    task = bn_task()
    params = task.init_params(torch.Generator().manual_seed(2))
    res = unroll(task, B.Adam(lr=0.02), params, init_state(B.Adam(lr=0.02), params, 10, task), 10,
                 torch.Generator().manual_seed(3))
    _, ref = torch_loop(task, params, lambda p: RuleOptimizer(p, B.Adam(lr=0.02)), 10, 3)
    torch.testing.assert_close(res.losses, ref, rtol=1e-10, atol=1e-12)


def test_the_meta_gradient_through_a_batchnorm_module_matches_higher():
    task = bn_task()
    params = task.init_params(torch.Generator().manual_seed(1))
    lr0, steps = 0.05, 6
    lr = torch.tensor(lr0, dtype=D, requires_grad=True)
    rule = B.SGD(lr=lr, momentum=0.5)
    res = unroll(task, rule, params, init_state(rule, params, steps, task), steps, torch.Generator().manual_seed(4))
    (ours,) = torch.autograd.grad(res.losses.sum(), [lr])

    model = bn_net().to(D)
    model.load_state_dict(params)
    lr_h = torch.tensor(lr0, dtype=D, requires_grad=True)
    opt = torch.optim.SGD(model.parameters(), lr=lr0, momentum=0.5)
    g = torch.Generator().manual_seed(4)
    total = 0.0
    with higher.innerloop_ctx(model, opt, copy_initial_weights=True, override={"lr": [lr_h]}) as (fmodel, diffopt):
        for _ in range(steps):
            x, y = task.sample_batch(g)
            loss = F.cross_entropy(fmodel(x), y)
            total = total + loss
            diffopt.step(loss)
    (ref,) = torch.autograd.grad(total, [lr_h])
    torch.testing.assert_close(res.losses.sum(), total.detach(), rtol=1e-10, atol=0)
    torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-12)
    assert int(res.params["1.num_batches_tracked"]) == steps


class DataDependent(nn.Module):
    """A module ``vmap`` cannot run (Python control flow on a tensor's value)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x):
        h = self.bn(x)
        return self.lin(h) if float(h.detach().sum()) > -1e9 else -self.lin(h)


@pytest.mark.parametrize("model, mode", [(bn_net, "vmap"), (DataDependent, "loop")])
def test_a_population_of_module_tasks_reproduces_separate_runs(model, mode):
    task = ModuleTask(model, data(), batch_size=16, dtype="float64")
    pop = PopulationTask([task, task, task])
    assert pop.mode == mode
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    stacked = pop.init_params(gens)
    rule = B.Adam(lr=0.01)
    res = unroll(pop, rule, stacked, init_state(rule, stacked, 5, pop), 5,
                 [torch.Generator().manual_seed(s) for s in (11, 12, 13)])
    for i, s in enumerate((1, 2, 3)):
        p = task.init_params(torch.Generator().manual_seed(s))
        one = unroll(task, rule, p, init_state(rule, p, 5, task), 5, torch.Generator().manual_seed(10 + s))
        torch.testing.assert_close(res.losses[:, i], one.losses, rtol=1e-10, atol=1e-12)
        for k in one.params:
            torch.testing.assert_close(res.params[k][i], one.params[k], rtol=1e-7, atol=1e-9)  # vmap rounds alike to 1e-10


@pytest.mark.parametrize("cls, kw", [(TruncatedBPTT, {}), (TruncatedES, dict(std=0.01, pairs=2)),
                                     (PES, dict(std=0.01, pairs=2))])
@pytest.mark.parametrize("population", [1, 2])
def test_every_estimator_meta_trains_on_a_batchnorm_module(cls, kw, population):
    task = ModuleTask(bn_net, data(), batch_size=16)
    est = cls(SingleTaskFamily(task), horizon=6, truncation=3, num_tasks=2, population=population,
              device=torch.device("cpu"), generator=torch.Generator().manual_seed(0), **kw)
    rule = LearnedSGD(lr=0.1, momentum=0.0, steps=1)
    for t in (1, 2):
        e = est.estimate(rule)
        assert e.counted == 2 and e.diverged == 0
        assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in e.grads)
        assert [int(s.params["1.num_batches_tracked"]) for s in est.slots] == [3 * t, 3 * t]


def test_a_sampler_feeds_the_task_and_its_metrics_are_repeatable():
    w = torch.randn(6, 1, generator=torch.Generator().manual_seed(0))

    def sampler(generator, split, batch_size):
        x = torch.randn(batch_size, 6, generator=generator)
        return x, x @ w + (0.0 if split == "train" else 0.1)

    task = ModuleTask(lambda: nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 1)), sampler,
                      loss="mse", batch_size=32, eval_batches=4)
    assert not task.buffer_names and not task.is_classifier
    params = task.init_params(torch.Generator().manual_seed(0))
    rule = B.Adam(lr=0.02)
    res = unroll(task, rule, params, init_state(rule, params, 60, task), 60, torch.Generator().manual_seed(1))
    assert res.losses[-10:].mean() < 0.5 * res.losses[:10].mean()
    a, b = task.metrics(res.params, "test"), task.metrics(res.params, "test")
    assert a == b and set(a) == {"loss"}


def test_bad_module_task_input_is_named():
    with pytest.raises(ValueError, match="loss='hinge'"):
        ModuleTask(bn_net, data(), loss="hinge")
    with pytest.raises(ValueError, match="data has splits"):
        ModuleTask(bn_net, {"train": data()["train"]})
    with pytest.raises(ValueError, match="nn.Module"):
        ModuleTask(lambda: 3, data())
    with pytest.raises(ValueError, match="model="):
        make_task("module", model="no_such_model", data="digits")


class TiedLM(nn.Module):
    """An output head tied to the embedding (one tensor under two names)."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(11, 8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 11, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, x):
        return self.head(torch.tanh(self.mix(self.tok(x))))


def test_tied_weights_are_one_trained_tensor_as_in_the_module():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 11, (40, 5), generator=g)
    y = torch.roll(x, 1, dims=1)
    task = ModuleTask(TiedLM, {"train": (x, y), "test": (x, y)}, batch_size=8, dtype="float64")
    assert "head.weight" not in task.param_names and "tok.weight" in task.param_names and not task.buffer_names
    params = task.init_params(torch.Generator().manual_seed(1))
    res = unroll(task, B.Adam(lr=0.05), params, init_state(B.Adam(lr=0.05), params, 10, task), 10,
                 torch.Generator().manual_seed(2))
    model = TiedLM().to(D)
    model.load_state_dict(task.state_dict(params))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    gb = torch.Generator().manual_seed(2)
    ref = []
    for _ in range(10):
        xb, yb = task.sample_batch(gb)
        opt.zero_grad()
        loss = F.cross_entropy(model(xb).reshape(-1, 11), yb.reshape(-1))
        loss.backward()
        opt.step()
        ref.append(loss.item())
    torch.testing.assert_close(res.losses, torch.tensor(ref, dtype=D), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(task.state_dict(res.params)["head.weight"], model.head.weight.detach())


def test_gradient_checkpointing_gives_the_same_meta_gradient_with_buffers():
    task = bn_task()
    out = []
    for segments in (1, 2):
        est = TruncatedBPTT(SingleTaskFamily(task), horizon=8, truncation=4, num_tasks=1, device=torch.device("cpu"),
                            generator=torch.Generator().manual_seed(0), checkpoint_segments=segments)
        e = est.estimate(LearnedSGD(lr=0.1, momentum=0.0, steps=1).double())
        out.append((e.meta_loss, e.grads[0], est.slots[0].params["1.running_mean"]))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-12)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(out[0][2], out[1][2], rtol=1e-12, atol=1e-14)


def test_a_model_that_does_not_fit_its_data_fails_when_the_task_is_built():
    """The 28x28 BatchNorm CNN on 8x8 digits: a clear error naming the model before any run, not a shape error
    in the middle of an evaluation."""
    from learned_opt.schema import ConfigError
    from learned_opt.tasks import make_task
    with pytest.raises(ConfigError, match="model .*does not run on its data: mat1 and mat2 shapes"):
        make_task("module", model="bn_cnn", data="digits", batch_size=8)
    make_task("module", model="bn_cnn", data="mnist5k", batch_size=8)   # its own data: fine
