"""The hand-crafted rules against torch.optim (the independent oracle), in float64."""
from __future__ import annotations

import copy
import io
import zlib

import pytest
import torch
from torch import nn
from torch.func import functional_call

import baselines as B

STEPS = 50
RTOL = 1e-10


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def make_data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 5, generator=g, dtype=torch.float64), torch.randn(32, 3, generator=g, dtype=torch.float64)


X, Y = make_data()


def loss_of(model: nn.Module, params: dict | None = None) -> torch.Tensor:
    out = model(X) if params is None else functional_call(model, params, (X,))
    return ((out - Y) ** 2).mean()


def rand(g: torch.Generator, lo: float, hi: float, log: bool = False) -> float:
    u = torch.rand((), generator=g, dtype=torch.float64).item()
    if log:
        import math
        return math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    return lo + u * (hi - lo)


# Each case: (name, sample hyperparameters, our rule from them, torch optimizer from them).
def _cases():
    def sgd(g, wd):
        return {"lr": rand(g, 1e-3, 1e-1, log=True), "weight_decay": wd}

    def mom(g, wd):
        return {**sgd(g, wd), "momentum": rand(g, 0.5, 0.99)}

    def damp(g, wd):
        return {**mom(g, wd), "dampening": rand(g, 0.1, 0.5)}

    def adagrad(g, wd):
        return {"lr": rand(g, 1e-3, 1e-1, log=True), "lr_decay": rand(g, 0, 0.05), "weight_decay": wd,
                "initial_accumulator_value": rand(g, 0, 0.1), "eps": rand(g, 1e-10, 1e-6, log=True)}

    def rms(centered, momentum):
        def f(g, wd):
            hp = {"lr": rand(g, 1e-4, 1e-2, log=True), "alpha": rand(g, 0.9, 0.999), "eps": rand(g, 1e-8, 1e-4, log=True),
                  "weight_decay": wd, "centered": centered}
            hp["momentum"] = rand(g, 0.5, 0.95) if momentum else 0.0
            return hp
        return f

    def adam(amsgrad):
        def f(g, wd):
            return {"lr": rand(g, 1e-4, 1e-2, log=True), "betas": (rand(g, 0.5, 0.95), rand(g, 0.9, 0.9999)),
                    "eps": rand(g, 1e-8, 1e-4, log=True), "weight_decay": wd, "amsgrad": amsgrad}
        return f

    def adadelta(g, wd):
        return {"lr": rand(g, 0.1, 1.0), "rho": rand(g, 0.8, 0.99), "eps": rand(g, 1e-7, 1e-4, log=True), "weight_decay": wd}

    T = torch.optim
    return [
        ("sgd", sgd, B.SGD, T.SGD),
        ("gd", sgd, B.GD, T.SGD),
        ("momentum", mom, B.Momentum, T.SGD),
        ("sgd_dampening", damp, B.SGD, T.SGD),
        ("nesterov", mom, B.Nesterov, lambda p, **h: T.SGD(p, nesterov=True, **h)),
        ("adagrad", adagrad, B.Adagrad, T.Adagrad),
        ("rmsprop", rms(False, False), B.RMSprop, T.RMSprop),
        ("rmsprop_centered", rms(True, False), B.RMSprop, T.RMSprop),
        ("rmsprop_momentum", rms(False, True), B.RMSprop, T.RMSprop),
        ("rmsprop_centered_momentum", rms(True, True), B.RMSprop, T.RMSprop),
        ("adam", adam(False), B.Adam, T.Adam),
        ("amsgrad", adam(True), B.Adam, T.Adam),
        ("adamw", adam(False), B.AdamW, T.AdamW),
        ("adamw_amsgrad", adam(True), B.AdamW, T.AdamW),
        ("adadelta", adadelta, B.Adadelta, T.Adadelta),
    ]


CASES = [(name, wd, sample, ours, ref) for name, sample, ours, ref in _cases() for wd in (0.0, 0.03)]
IDS = [f"{c[0]}-wd{c[1]}" for c in CASES]


def hyperparameters(name: str, wd: float, sample) -> dict:
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}{wd}".encode()))
    return sample(g, wd)


def reference_trajectory(ref, hp: dict, steps: int = STEPS) -> list[dict]:
    model = make_model()
    opt = ref(model.parameters(), **hp)
    traj = []
    for _ in range(steps):
        opt.zero_grad()
        loss_of(model).backward()
        opt.step()
        traj.append({k: v.detach().clone() for k, v in model.named_parameters()})
    return traj


def assert_rel_close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL, what: str = "") -> None:
    err = (a - b).abs().max().item()
    scale = b.abs().max().item()
    assert err <= rtol * max(scale, 1e-300), f"{what}: max abs diff {err:.3e} vs scale {scale:.3e}"


def assert_trajectories_equal(ours: list[dict], ref: list[dict], rtol: float = RTOL) -> None:
    assert len(ours) == len(ref)
    for t, (a, b) in enumerate(zip(ours, ref)):
        for k in b:
            assert_rel_close(a[k], b[k], rtol, what=f"step {t + 1}, {k}")


def pure_trajectory(rule, steps: int = STEPS) -> list[dict]:
    model = make_model()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = rule.init(params)
    traj = []
    for _ in range(steps):
        p = {k: v.requires_grad_() for k, v in params.items()}
        grads = dict(zip(p, torch.autograd.grad(loss_of(model, p), list(p.values()))))
        with torch.no_grad():
            params, state = rule.update(grads, state, {k: v.detach() for k, v in p.items()})
        traj.append(params)
    return traj


@pytest.mark.parametrize("name,wd,sample,ours,ref", CASES, ids=IDS)
def test_pure_update_matches_torch_optim(name, wd, sample, ours, ref):
    hp = hyperparameters(name, wd, sample)
    if ours is B.GD:
        hp = {"lr": hp["lr"], "weight_decay": wd}
    assert_trajectories_equal(pure_trajectory(ours(**hp)), reference_trajectory(ref, hp))


def adapter_trajectory(rule, steps: int = STEPS, **overrides) -> list[dict]:
    model = make_model()
    opt = B.RuleOptimizer(model.parameters(), rule, **overrides)
    traj = []
    for _ in range(steps):
        opt.zero_grad()
        loss_of(model).backward()
        opt.step()
        traj.append({k: v.detach().clone() for k, v in model.named_parameters()})
    return traj


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["fast-path", "pure-path"])
@pytest.mark.parametrize("name,wd,sample,ours,ref", CASES, ids=IDS)
def test_adapter_matches_torch_optim(name, wd, sample, ours, ref, tensor_lr):
    hp = hyperparameters(name, wd, sample)
    if ours is B.GD:
        hp = {"lr": hp["lr"], "weight_decay": wd}
    rule = ours(**hp)
    if tensor_lr:  # a tensor hyperparameter forces the pure update path
        rule = ours(**{**hp, "lr": torch.tensor(hp["lr"], dtype=torch.float64)})
    assert_trajectories_equal(adapter_trajectory(rule), reference_trajectory(ref, hp))


def test_update_is_pure():
    model = make_model()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    for rule in [B.SGD(lr=0.1, momentum=0.9), B.Adam(amsgrad=True), B.RMSprop(centered=True, momentum=0.5),
                 B.Adagrad(), B.Adadelta(), B.AdamW()]:
        state = rule.init(params)
        before = copy.deepcopy((params, grads, state))
        for _ in range(3):
            new_params, new_state = rule.update(grads, state, params)
        after = (params, grads, state)
        for x, y in zip(torch.utils._pytree.tree_leaves(before), torch.utils._pytree.tree_leaves(after)):
            assert torch.equal(torch.as_tensor(x), torch.as_tensor(y)), f"{rule} wrote into its inputs"
        assert new_state["step"] == 1 and state["step"] == 0
        assert all(new_params[k].shape == params[k].shape for k in params)


def test_nesterov_is_lookahead_momentum():
    """torch's Nesterov form holds the look-ahead point u = w + a v of Sutskever's NAG."""
    g = torch.Generator().manual_seed(3)
    A = torch.randn(6, 6, generator=g, dtype=torch.float64)
    A = A @ A.T / 6 + 0.1 * torch.eye(6, dtype=torch.float64)
    grad = lambda w: A @ w  # noqa: E731 - gradient of 0.5 w^T A w
    lr, a = 0.05, 0.9
    w = torch.randn(6, generator=g, dtype=torch.float64)
    v = torch.zeros(6, dtype=torch.float64)
    rule = B.Nesterov(lr=lr, momentum=a)
    params = {"w": w.clone()}
    state = rule.init(params)
    for _ in range(40):
        params, state = rule.update({"w": grad(params["w"])}, state, params)
        v = a * v - lr * grad(w + a * v)  # the look-ahead definition
        w = w + v
        assert_rel_close(params["w"], w + a * v, 1e-12, "look-ahead point")


def test_momentum_is_lecture_form():
    """m <- a m + g, w <- w - lr m, written out by hand."""
    g = torch.Generator().manual_seed(4)
    grads = [torch.randn(4, generator=g, dtype=torch.float64) for _ in range(10)]
    rule = B.Momentum(lr=0.1, momentum=0.8)
    params = {"w": torch.ones(4, dtype=torch.float64)}
    state = rule.init(params)
    w, m = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    for gr in grads:
        params, state = rule.update({"w": gr}, state, params)
        m = 0.8 * m + gr
        w = w - 0.1 * m
    assert_rel_close(params["w"], w, 1e-14, "momentum")


# ---------------------------------------------------------------- hypergradients
HYPER = [
    (B.SGD, {"momentum": 0.9}, ["lr", "momentum"]),
    (B.Nesterov, {}, ["lr", "momentum"]),
    (B.Adagrad, {}, ["lr", "eps"]),
    (B.RMSprop, {"centered": True, "momentum": 0.5}, ["lr", "alpha", "eps", "momentum"]),
    (B.Adam, {}, ["lr", "beta1", "beta2", "eps"]),
    (B.Adam, {"amsgrad": True}, ["lr", "beta1", "beta2"]),
    (B.AdamW, {}, ["lr", "beta1", "weight_decay"]),
    (B.Adadelta, {}, ["lr", "rho", "eps"]),
]
DEFAULT = {"lr": 0.05, "momentum": 0.8, "alpha": 0.9, "eps": 1e-3, "beta1": 0.8, "beta2": 0.95,
           "weight_decay": 0.1, "rho": 0.9}


def loss_after(cls, fixed: dict, hp: dict, k: int = 5) -> torch.Tensor:
    kwargs = dict(fixed)
    for n, v in hp.items():
        if n in ("beta1", "beta2"):
            continue
        kwargs[n] = v
    if "beta1" in hp or "beta2" in hp:
        kwargs["betas"] = (hp.get("beta1", 0.9), hp.get("beta2", 0.999))
    rule = cls(**kwargs)
    model = make_model()
    params = {k_: v.detach().clone().requires_grad_() for k_, v in model.named_parameters()}
    state = rule.init(params)
    for _ in range(k):
        loss = loss_of(model, params)
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), create_graph=True)))
        params, state = rule.update(grads, state, params)
    return loss_of(model, params)


@pytest.mark.parametrize("cls,fixed,names", HYPER, ids=[f"{c.__name__}-{'-'.join(n)}" for c, _, n in HYPER])
def test_hypergradient_matches_finite_differences(cls, fixed, names):
    for name in names:
        base = {n: torch.tensor(DEFAULT[n], dtype=torch.float64) for n in names}
        base[name].requires_grad_()
        (grad,) = torch.autograd.grad(loss_after(cls, fixed, base), [base[name]])
        h = 1e-6 * max(1.0, abs(DEFAULT[name]))
        plus = {**base, name: torch.tensor(DEFAULT[name] + h, dtype=torch.float64)}
        minus = {**base, name: torch.tensor(DEFAULT[name] - h, dtype=torch.float64)}
        fd = (loss_after(cls, fixed, plus) - loss_after(cls, fixed, minus)).item() / (2 * h)
        assert abs(grad.item() - fd) <= 1e-5 * max(abs(fd), 1e-3), f"d loss / d {name}: autograd {grad.item()} vs FD {fd}"
        assert grad.item() != 0.0


def test_schedule_lr_and_tensor_lr_give_same_trajectory():
    lrs = [0.1 * 0.9 ** k for k in range(STEPS)]
    sched = pure_trajectory(B.Adam(lr=lambda step: lrs[step]))
    model = make_model()
    ref = []
    opt = torch.optim.Adam(model.parameters(), lr=lrs[0])
    for k in range(STEPS):
        opt.param_groups[0]["lr"] = lrs[k]
        opt.zero_grad()
        loss_of(model).backward()
        opt.step()
        ref.append({n: v.detach().clone() for n, v in model.named_parameters()})
    assert_trajectories_equal(sched, ref)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("make,arg", [
    (lambda: B.SGD(lr=-1.0), "lr"),
    (lambda: B.Adam(lr=torch.tensor(-0.1)), "lr"),
    (lambda: B.Momentum(momentum=1.0), "momentum"),
    (lambda: B.Momentum(momentum=-0.1), "momentum"),
    (lambda: B.Adam(betas=(1.0, 0.999)), r"betas\[0\]"),
    (lambda: B.Adam(betas=(0.9, -0.1)), r"betas\[1\]"),
    (lambda: B.Adam(betas=(0.9,)), "betas"),
    (lambda: B.Adam(eps=0.0), "eps"),
    (lambda: B.AdamW(eps=-1e-8), "eps"),
    (lambda: B.RMSprop(alpha=1.5), "alpha"),
    (lambda: B.RMSprop(eps=0), "eps"),
    (lambda: B.Adagrad(eps=0), "eps"),
    (lambda: B.Adadelta(rho=1.0), "rho"),
    (lambda: B.SGD(weight_decay=-1), "weight_decay"),
    (lambda: B.SGD(lr=0.1, nesterov=True), "nesterov"),
    (lambda: B.make_rule("adamax"), "allowed"),
])
def test_bad_hyperparameters_raise_value_error(make, arg):
    with pytest.raises(ValueError, match=arg) as info:
        make()
    if arg not in ("nesterov", "allowed"):
        assert "allowed" in str(info.value)


# ---------------------------------------------------------------- adapter specifics
def train(opt, model, steps, scheduler=None):
    for _ in range(steps):
        def closure():
            opt.zero_grad()
            loss = loss_of(model)
            loss.backward()
            return loss
        opt.step(closure)
        if scheduler is not None:
            scheduler.step()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("rule", [B.Adam(lr=1e-2, amsgrad=True), B.RMSprop(lr=1e-3, centered=True, momentum=0.9),
                                  B.SGD(lr=0.05, momentum=0.9, nesterov=True), B.Adadelta(), B.Adagrad(lr=0.1)],
                         ids=lambda r: type(r).__name__)
def test_adapter_state_dict_round_trip_continues_exactly(rule):
    model = make_model()
    opt = B.RuleOptimizer(model.parameters(), rule)
    full = train(opt, model, 40)

    model = make_model()
    opt = B.RuleOptimizer(model.parameters(), rule)
    train(opt, model, 20)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2 = make_model(seed=123)
    model2.load_state_dict(saved["model"])
    opt2 = B.RuleOptimizer(model2.parameters(), rule)
    opt2.load_state_dict(saved["opt"])
    resumed = train(opt2, model2, 20)
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def test_adapter_param_groups_and_torch_scheduler_match_torch():
    def groups(model):
        return [{"params": model[0].parameters(), "lr": 0.05}, {"params": model[2].parameters()}]
    model = make_model()
    ours = B.RuleOptimizer(groups(model), B.SGD(lr=0.01, momentum=0.9))
    sched = torch.optim.lr_scheduler.CyclicLR(ours, base_lr=0.001, max_lr=0.05, step_size_up=7, cycle_momentum=True,
                                              base_momentum=0.8, max_momentum=0.95)
    a = train(ours, model, 30, sched)
    model = make_model()
    ref = torch.optim.SGD(groups(model), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.CyclicLR(ref, base_lr=0.001, max_lr=0.05, step_size_up=7, cycle_momentum=True,
                                              base_momentum=0.8, max_momentum=0.95)
    b = train(ref, model, 30, sched)
    for k in b:
        assert_rel_close(a[k], b[k], RTOL, k)


def test_adapter_adam_with_step_lr_matches_torch():
    out = []
    for make in (lambda p: B.RuleOptimizer(p, B.Adam(lr=1e-2)), lambda p: torch.optim.Adam(p, lr=1e-2)):
        model = make_model()
        opt = make(model.parameters())
        out.append(train(opt, model, 30, torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)))
    for k in out[1]:
        assert_rel_close(out[0][k], out[1][k], RTOL, k)


def test_adapter_rejects_unknown_override_and_bad_group():
    model = make_model()
    with pytest.raises(ValueError, match="betas"):
        B.RuleOptimizer(model.parameters(), B.SGD(), betas=(0.9, 0.99))
    with pytest.raises(ValueError, match="lr"):
        B.RuleOptimizer([{"params": model.parameters(), "lr": -1.0}], B.Adam())
    with pytest.raises(TypeError, match="init"):
        B.RuleOptimizer(model.parameters(), object())


def test_cyclic_momentum_schedule_matches_torch_cycliclr_with_cycle_momentum():
    """SGD's momentum may be a schedule: Smith's CLR cycling momentum inversely to the lr."""
    clr = B.CyclicLR(base_lr=0.001, max_lr=0.05, step_size_up=5, cycle_momentum=True, base_momentum=0.8,
                     max_momentum=0.95)
    ours = pure_trajectory(B.SGD(lr=clr, momentum=clr.momentum, nesterov=True), steps=30)
    fast = adapter_trajectory(B.SGD(lr=clr, momentum=clr.momentum, nesterov=True), steps=30)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.001, max_lr=0.05, step_size_up=5, cycle_momentum=True,
                                              base_momentum=0.8, max_momentum=0.95)
    ref = train(opt, model, 30, sched)
    for k in ref:
        assert_rel_close(ours[-1][k], ref[k], RTOL, k)
        assert_rel_close(fast[-1][k], ref[k], RTOL, k)


def test_unchecked_skips_validation_only_inside_the_call():
    rule = B.Adam.unchecked(lr=torch.tensor(0.01), betas=(torch.tensor(0.9), torch.tensor(0.999)))
    assert isinstance(rule, B.Adam) and rule.betas[0].item() == pytest.approx(0.9)
    assert B.Adam.unchecked(lr=-1.0).lr == -1.0
    with pytest.raises(ValueError, match="lr"):
        B.Adam(lr=-1.0)  # checks are back on after the call
