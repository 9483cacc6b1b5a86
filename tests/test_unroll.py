"""The one inner loop: against a hand-written loop, against `higher`, and its divergence guard."""
from __future__ import annotations

import higher
import pytest
import torch
from torch import nn
from torch.func import functional_call

import baselines as B
from learned_opt.tasks.base import Task
from learned_opt.unroll import unroll


class ModuleTask(Task):
    """A regression task around an ``nn.Module`` (test-local, so the oracle shares no task code)."""

    name = "module_regression"
    is_classifier = False

    def __init__(self, batch_size: int = 16, dtype=torch.float64):
        self.device, self.dtype, self.batch_size = torch.device("cpu"), dtype, batch_size
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=g, dtype=dtype)
        self.y = torch.sin(self.x.sum(1, keepdim=True)) + 0.1 * torch.randn(64, 1, generator=g, dtype=dtype)
        torch.manual_seed(0)
        self.module = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)

    def init_params(self, generator):
        return {k: torch.randn(v.shape, generator=generator, dtype=self.dtype) * 0.5
                for k, v in self.module.named_parameters()}

    def sample_batch(self, generator, split="train"):
        idx = torch.randint(0, self.x.shape[0], (self.batch_size,), generator=generator)
        return self.x[idx], self.y[idx]

    def loss(self, params, batch):
        x, y = batch
        return ((functional_call(self.module, params, (x,)) - y) ** 2).mean()

    def metrics(self, params, split="test", max_examples=None):
        with torch.no_grad():
            return {"loss": float(self.loss(params, (self.x, self.y)))}


def test_unroll_with_sgd_equals_hand_written_loop():
    task = ModuleTask()
    params = task.init_params(torch.Generator().manual_seed(1))
    rule = B.SGD(lr=0.1, momentum=0.9)
    res = unroll(task, rule, params, rule.init(params), 30, torch.Generator().manual_seed(2))

    g = torch.Generator().manual_seed(2)
    w = {k: v.clone().requires_grad_() for k, v in params.items()}
    buf = None
    losses = []
    for _ in range(30):
        loss = task.loss(w, task.sample_batch(g))
        grads = torch.autograd.grad(loss, list(w.values()))
        losses.append(loss.item())
        with torch.no_grad():
            buf = [gr.clone() for gr in grads] if buf is None else [0.9 * b + gr for b, gr in zip(buf, grads)]
            w = {k: (v - 0.1 * b).requires_grad_() for (k, v), b in zip(w.items(), buf)}
    assert res.losses.shape == (30,) and not res.diverged
    torch.testing.assert_close(res.losses, torch.tensor(losses, dtype=torch.float64), rtol=1e-12, atol=0)
    for k in w:
        torch.testing.assert_close(res.params[k], w[k].detach(), rtol=1e-12, atol=1e-14)
    assert res.losses.grad_fn is None and not any(p.requires_grad for p in res.params.values())


@pytest.mark.parametrize("which", ["sgd", "adam"])
def test_meta_gradient_wrt_lr_matches_higher(which):
    task = ModuleTask()
    params = task.init_params(torch.Generator().manual_seed(3))
    steps, lr0 = 8, (0.05 if which == "sgd" else 0.01)

    lr = torch.tensor(lr0, dtype=torch.float64, requires_grad=True)
    # higher's Adam adds eps before the bias correction of the second moment (the pre-1.x torch
    # formula), torch.optim and we add it after; with eps ~ 0 both formulas coincide.
    eps = 1e-16
    rule = B.SGD(lr=lr, momentum=0.5) if which == "sgd" else B.Adam(lr=lr, eps=eps)
    res = unroll(task, rule, params, rule.init(params), steps, torch.Generator().manual_seed(4))
    (ours,) = torch.autograd.grad(res.losses.sum(), [lr])

    model = ModuleTask().module
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(params[k])
    lr_h = torch.tensor(lr0, dtype=torch.float64, requires_grad=True)
    opt = (torch.optim.SGD(model.parameters(), lr=lr0, momentum=0.5) if which == "sgd"
           else torch.optim.Adam(model.parameters(), lr=lr0, eps=eps))
    g = torch.Generator().manual_seed(4)
    total = 0.0
    with higher.innerloop_ctx(model, opt, copy_initial_weights=True, override={"lr": [lr_h]}) as (fmodel, diffopt):
        for _ in range(steps):
            x, y = task.sample_batch(g)
            loss = ((fmodel(x) - y) ** 2).mean()
            total = total + loss
            diffopt.step(loss)
    (ref,) = torch.autograd.grad(total, [lr_h])
    torch.testing.assert_close(res.losses.sum(), total.detach(), rtol=1e-10, atol=0)
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-12)
    assert ours.abs() > 0


class Quadratic1D(Task):
    """f(w) = 0.5 a w^2: first- and second-order meta-gradients have closed forms."""

    name, is_classifier, batch_size = "quadratic1d", False, None

    def __init__(self, a: float):
        self.a, self.device, self.dtype = a, torch.device("cpu"), torch.float64

    def init_params(self, generator):
        return {"w": torch.tensor([1.0], dtype=torch.float64)}

    def sample_batch(self, generator, split="train"):
        return ()

    def loss(self, params, batch):
        return 0.5 * self.a * (params["w"] ** 2).sum()

    def metrics(self, params, split="test", max_examples=None):
        return {"loss": float(self.loss(params, ()))}


@pytest.mark.parametrize("first_order", [False, True])
def test_first_and_second_order_meta_gradients_have_closed_forms(first_order):
    a, lr0, K = 2.0, 0.1, 6
    task = Quadratic1D(a)
    lr = torch.tensor(lr0, dtype=torch.float64, requires_grad=True)
    rule = B.SGD(lr=lr)
    params = task.init_params(None)
    res = unroll(task, rule, params, rule.init(params), K, None, first_order=first_order)
    (grad,) = torch.autograd.grad(res.losses.sum(), [lr])
    # w_{t+1} = w_t - lr * g_t with g_t = a w_t. dw_{t+1} = dw_t - g_t - lr * dg_t, where
    # dg_t = a dw_t (second order) or 0 (first order: g_t treated as a constant).
    w, dw, expected = 1.0, 0.0, 0.0
    for _ in range(K):
        expected += a * w * dw      # d(0.5 a w^2)/dlr
        g = a * w
        dg = 0.0 if first_order else a * dw
        w, dw = w - lr0 * g, dw - g - lr0 * dg
    assert grad.item() == pytest.approx(expected, rel=1e-12)


def test_divergence_is_detected_and_nan_never_returned():
    task = Quadratic1D(1.0)
    params = task.init_params(None)
    rule = B.SGD(lr=5.0)  # |1 - lr a| = 4: the iterate grows 4x per step, the loss 16x
    res = unroll(task, rule, params, rule.init(params), 50, None, divergence_factor=1e3)
    assert res.diverged and res.diverged_at == 3 and "reference" in res.reason
    assert res.losses.shape == (3,) and torch.isfinite(res.losses).all()
    assert res.params["w"].item() == 16.0  # w_t = (-4)^t; w_2 is the last iterate with a good loss

    class NaNTask(Quadratic1D):  # the loss turns NaN once |w| < 0.5 (log of a negative number)
        def loss(self, params, batch):
            w = params["w"]
            return (0.5 * w ** 2 + 0.0 * torch.log(w.abs() - 0.5)).sum()

    t = NaNTask(1.0)
    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    rule = B.SGD(lr=lr)
    res = unroll(t, rule, t.init_params(None), rule.init({}), 20, None)
    assert res.diverged and res.reason == "non-finite loss" and res.diverged_at == 2  # w: 1, 0.7, 0.49
    assert torch.isfinite(res.params["w"]).all() and torch.isfinite(res.losses).all()
    res.losses.sum().backward()
    assert torch.isfinite(lr.grad) and lr.grad != 0

    class NaNGradTask(Quadratic1D):  # finite loss, NaN gradient: the torch.where trap
        def loss(self, params, batch):
            w = params["w"]
            return torch.where(w.abs() < 2.0, 0.5 * w ** 2, w * float("nan")).sum()

    t = NaNGradTask(1.0)
    res = unroll(t, rule, t.init_params(None), rule.init({}), 20, None)
    assert res.diverged and res.diverged_at == 1 and torch.equal(res.params["w"], t.init_params(None)["w"])


def test_callback_records_and_validation():
    task = Quadratic1D(1.0)
    params = task.init_params(None)
    rule = B.SGD(lr=0.1)
    res = unroll(task, rule, params, rule.init(params), 10, None, callback_every=5,
                 callback=lambda step, p, loss: {"step": step, "w": p["w"].item()})
    assert [r["step"] for r in res.records] == [0, 5, 10]
    assert res.records[-1]["w"] == pytest.approx(0.9 ** 10)
    with pytest.raises(ValueError, match="steps"):
        unroll(task, rule, params, rule.init(params), -1, None)
    with pytest.raises(ValueError, match="divergence_factor"):
        unroll(task, rule, params, rule.init(params), 1, None, divergence_factor=0.5)
