"""Learned update rules: formulas at hand-picked values, purity, meta-gradients against finite
differences, equivalence of the learned-hyperparameter rules with the hand-crafted ones,
the torch.optim adapter, config round trips and input validation."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import baselines.rules as R
from baselines.adapter import RuleOptimizer
from learned_opt.optimizers import (LEARNED_RULES, LearnedAdam, LearnedSGD, LSTMOptimizer, MLPOptimizer,
                                    make_learned_rule, preprocess_gradient)
from learned_opt.tasks.base import Task
from learned_opt.unroll import unroll

SHAPES = {"scalar": (), "vector": (5,), "matrix": (3, 4), "conv": (2, 3, 3, 3)}


# a core with controllers, so the generic tests cover the seam too (learned gains: meta-parameters of both kinds)
CONTROLLED = {"core": {"kind": "learned", "name": "celo", "config": {"hidden_sizes": [8]}},
              "controllers": [{"name": "radial", "gain": 0.2, "learn_gain": True}, {"name": "hypergradient"}]}


def make_rule(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    if name == "controlled":
        kwargs = {**CONTROLLED, **kwargs}
    return make_learned_rule(name, **kwargs)


def random_params(dtype=torch.float32, seed=0, device="cpu") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g, dtype=dtype).to(device) for k, s in SHAPES.items()}


class Quadratic(Task):
    """Full-batch 0.5 * sum_k a_k * (w_k - b_k)^2 over tensors of every shape (test-local)."""

    name, is_classifier, batch_size = "quadratic", False, None

    def __init__(self, dtype=torch.float64, device="cpu"):
        self.device, self.dtype = torch.device(device), dtype
        self.scale = {k: v.abs() + 0.5 for k, v in random_params(dtype, 1, device).items()}
        self.target = random_params(dtype, 2, device)

    def init_params(self, generator):  # a CPU generator: the same numbers on every device
        return {k: torch.randn(s, generator=generator, dtype=self.dtype).to(self.device) for k, s in SHAPES.items()}

    def sample_batch(self, generator, split="train"):
        return ()

    def loss(self, params, batch):
        return sum(0.5 * (self.scale[k] * (w - self.target[k]) ** 2).sum() for k, w in params.items())

    def metrics(self, params, split="test", max_examples=None):
        return {"loss": float(self.loss(params, ()))}


def meta_loss(rule: nn.Module, task: Quadratic, steps: int = 3) -> torch.Tensor:
    """Sum of the losses before each of ``steps`` updates and after the last one."""
    g = torch.Generator().manual_seed(5)
    params = task.init_params(g)
    res = unroll(task, rule, params, rule.init(params), steps, g)
    assert not res.diverged
    return res.losses.sum() + task.loss(res.params, ())


# Rules as the tests build them. The MLP gets a larger step_mult so its effect on the
# loss is far above rounding noise in the finite-difference check.
RULE_KWARGS = {"lstm": {}, "mlp": {"step_mult": 0.1}, "learned_adam": {"lr": 0.05},
               "learned_sgd": {"lr": 0.05, "steps": 5}, "celo": {"step_mult": 0.1},
               "controlled": {"core": {**CONTROLLED["core"], "config": {"hidden_sizes": [8], "step_mult": 0.1}}}}


# --------------------------------------------------------------------------- formulas


def test_preprocess_gradient_matches_the_formula_at_hand_picked_values():
    p = 10.0
    g = torch.tensor([0.0, 1e-6, -1e-3, 0.5, -3.0, 1e5], dtype=torch.float64)
    expected = torch.tensor([
        [-1.0, 0.0],                              # |g| < exp(-10) = 4.54e-5: (-1, e^10 g)
        [-1.0, math.exp(10) * 1e-6],
        [math.log(1e-3) / 10, -1.0],              # |g| >= exp(-10): (log|g| / p, sign g)
        [math.log(0.5) / 10, 1.0],
        [math.log(3.0) / 10, -1.0],
        [math.log(1e5) / 10, 1.0],
    ], dtype=torch.float64)
    out = preprocess_gradient(g, p)
    assert out.shape == (6, 2)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=0)
    # shape (*g.shape, 2), and a finite gradient at g = 0 (the unused log branch is clamped)
    x = torch.zeros(2, 3, requires_grad=True)
    y = preprocess_gradient(x, p)
    assert y.shape == (2, 3, 2)
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(gx).all()
    torch.testing.assert_close(gx, torch.full((2, 3), math.exp(10)))


def test_mlp_momenta_are_the_hand_computed_emas():
    rule = make_rule("mlp", decays=[0.5, 0.9])
    params = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    state = rule.init(params)
    seq = [torch.tensor([1.0, 2.0]), torch.tensor([-3.0, 0.5]), torch.tensor([4.0, -1.0])]
    for g in seq:
        params, state = rule.update({"w": g.double()}, state, params)
    assert state["step"] == 3
    for d in (0.5, 0.9):
        m = torch.zeros(2, dtype=torch.float64)
        for g in seq:
            m = d * m + (1 - d) * g.double()
        # by hand for d = 0.5, first coordinate: ((0 * .5 + .5 * 1) * .5 + .5 * -3) * .5 + .5 * 4 = 1.375
        torch.testing.assert_close(state[f"momentum_{d:g}"]["w"], m, rtol=1e-14, atol=0)
    assert state["momentum_0.5"]["w"][0].item() == pytest.approx(1.375)


def test_mlp_features_have_unit_second_moment_per_tensor():
    rule = make_rule("mlp")
    params, grads = random_params(torch.float64, 0), random_params(torch.float64, 1)
    grads = {k: 1e3 * g if k == "matrix" else g for k, g in grads.items()}  # tensors on different scales
    momenta = {k: [(i + 1) * grads[k] + 0.01 * params[k] for i in range(len(rule.decays))] for k in params}
    for k in params:
        f = rule.features(grads[k], params[k], momenta[k])
        assert f.shape == (*params[k].shape, 2 + len(rule.decays))
        second = (f ** 2).reshape(-1, f.shape[-1]).mean(0)
        torch.testing.assert_close(second, torch.ones_like(second), rtol=1e-6, atol=0)
        # the features are the inputs divided by one positive number per feature and tensor
        raw = torch.stack([grads[k], params[k], *momenta[k]], -1)
        ratio = (raw / f).reshape(-1, f.shape[-1])
        torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio))


def test_mlp_population_dim_equals_independent_problems():
    rule = make_rule("mlp", step_mult=0.1).double()
    a, b = random_params(torch.float64, 0), random_params(torch.float64, 1)
    ga, gb = random_params(torch.float64, 2), random_params(torch.float64, 3)
    gb = {k: 100 * v for k, v in gb.items()}  # a different scale in the second member
    sa, sb = rule.init(a), rule.init(b)
    for _ in range(2):
        (na, sa), (nb, sb) = rule.update(ga, sa, a), rule.update(gb, sb, b)
        a, b = na, nb
    pop = copy.deepcopy(rule)
    pop.population_dim = 0
    stack = lambda x, y: {k: torch.stack([x[k], y[k]]) for k in x}  # noqa: E731
    p = stack(random_params(torch.float64, 0), random_params(torch.float64, 1))
    s = pop.init(p)
    for _ in range(2):
        p, s = pop.update(stack(ga, gb), s, p)
    for k in p:
        torch.testing.assert_close(p[k][0], a[k])
        torch.testing.assert_close(p[k][1], b[k])


# --------------------------------------------------------------------------- purity and shapes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(LEARNED_RULES))
def test_update_is_pure_and_preserves_shapes(name, dtype):
    rule = make_rule(name, **RULE_KWARGS[name])
    params, grads = random_params(dtype, 0), random_params(dtype, 1)
    state = rule.init(params)
    with torch.no_grad():
        params, state = rule.update(grads, state, params)  # a non-trivial state to start from
    before = copy.deepcopy((params, grads, state))
    meta_before = copy.deepcopy(rule.state_dict())
    new_params, new_state = rule.update(grads, state, params)
    for a, b in zip(before, (params, grads, state)):
        assert _tree_equal(a, b)
    assert _tree_equal(meta_before, rule.state_dict())
    assert new_state["step"] == state["step"] + 1 == 2
    assert new_params.keys() == params.keys() and new_state.keys() == state.keys()
    for k, w in params.items():
        assert new_params[k].shape == w.shape and new_params[k].dtype == dtype
        assert not torch.equal(new_params[k], w)
    for buf, value in state.items():
        if buf == "step":
            continue
        assert value.keys() == params.keys()
        for k, t in value.items():
            assert new_state[buf][k].shape == t.shape and new_state[buf][k].dtype == dtype


def _tree_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_tree_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_tree_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_lstm_state_layout():
    rule = make_rule("lstm", hidden_size=7)
    params = random_params()
    state = rule.init(params)
    assert set(state) == {"step", "h0", "c0", "h1", "c1"}
    for buf in ("h0", "c0", "h1", "c1"):
        for k, w in params.items():
            assert state[buf][k].shape == (*w.shape, 7)


@pytest.mark.parametrize("name", list(LEARNED_RULES))
def test_float32_rule_drives_float64_params(name):
    rule = make_rule(name)
    params, grads = random_params(torch.float64, 0), random_params(torch.float64, 1)
    new, state = rule.update(grads, rule.init(params), params)
    assert all(v.dtype == torch.float64 for v in new.values())
    assert all(v.dtype == torch.float64 for b, d in state.items() if b != "step" for v in d.values())


@pytest.mark.parametrize("name", list(LEARNED_RULES))
def test_empty_params(name):
    rule = make_rule(name)
    new, state = rule.update({}, rule.init({}), {})
    assert new == {} and state["step"] == 1


# --------------------------------------------------------------------------- meta-gradients


@pytest.mark.parametrize("name", list(LEARNED_RULES))
def test_meta_gradient_exists_and_matches_finite_differences(name):
    task = Quadratic(torch.float64)
    rule = make_rule(name, **RULE_KWARGS[name]).double()
    names, metas = zip(*rule.named_parameters())
    grads = torch.autograd.grad(meta_loss(rule, task), metas, allow_unused=True)
    assert all(g is not None for g in grads), [n for n, g in zip(names, grads) if g is None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(int((g != 0).any()) for g in grads) >= max(1, len(grads) // 2)

    gen = torch.Generator().manual_seed(0)
    checked, seen = 0, set()
    for _ in range(50):  # two distinct random entries whose derivative is not negligible
        i = int(torch.randint(len(metas), (), generator=gen))
        j = int(torch.randint(metas[i].numel(), (), generator=gen))
        analytic = grads[i].reshape(-1)[j].item()
        if abs(analytic) < 1e-5 or (i, j) in seen:
            continue
        seen.add((i, j))
        # h = 1e-3: the rounding noise of the loss (~1e-14) / h stays far below 1e-5 relative,
        # and the O(h^2) truncation error measured ~1e-7 relative for every rule here
        h = 1e-3 * max(1.0, abs(metas[i].reshape(-1)[j].item()))
        values = []
        for sign in (1, -1):
            perturbed = copy.deepcopy(rule)
            with torch.no_grad():
                dict(perturbed.named_parameters())[names[i]].view(-1)[j] += sign * h
                values.append(meta_loss(perturbed, task).item())
        fd = (values[0] - values[1]) / (2 * h)
        assert analytic == pytest.approx(fd, rel=1e-5), (names[i], j)
        checked += 1
        if checked == 2:
            break
    assert checked == 2


@pytest.mark.parametrize("name", list(LEARNED_RULES))
def test_update_under_no_grad_keeps_no_graph(name):
    rule = make_rule(name)
    params, grads = random_params(), random_params(seed=1)
    with torch.no_grad():
        new, state = rule.update(grads, rule.init(params), params)
    assert not any(v.requires_grad for v in new.values())
    new2, _ = rule.update(grads, rule.init(params), params)
    assert all(v.requires_grad for v in new2.values())  # with grad, the meta-parameters are in the graph
    for k in new:
        torch.testing.assert_close(new[k], new2[k].detach(), rtol=0, atol=0)


# --------------------------------------------------------------------------- learned hyperparameters


def test_learned_adam_with_initial_values_is_adam():
    rule = LearnedAdam(lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    assert rule.current_hparams() == pytest.approx({"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6})
    with torch.no_grad():  # the same hyperparameter values (float32 round trips of exp/sigmoid)
        ref = R.Adam(lr=rule.log_lr.exp(), betas=(torch.sigmoid(rule.logit_beta1), torch.sigmoid(rule.logit_beta2)),
                     eps=rule.log_eps.exp())
    plain = R.Adam(lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    _same_trajectory(rule, ref, plain)


def test_learned_sgd_with_initial_values_is_sgd_and_keeps_its_last_lr():
    rule = LearnedSGD(lr=0.05, momentum=0.7, steps=3)
    with torch.no_grad():
        rule.log_lrs.copy_(torch.tensor([0.05, 0.02, 0.01]).log())
        lrs = rule.log_lrs.exp().clone()
        ref = R.SGD(lr=lambda t: lrs[min(t, 2)], momentum=torch.sigmoid(rule.logit_momentum))
    plain = R.SGD(lr=lambda t: [0.05, 0.02, 0.01][min(t, 2)], momentum=0.7)
    _same_trajectory(rule, ref, plain, steps=6)
    assert rule.current_hparams()["momentum"] == pytest.approx(0.7)
    assert rule.current_hparams()["lr_last"] == pytest.approx(0.01)


def _same_trajectory(rule, ref, plain, steps=5):
    """``rule`` equals ``ref`` (same tensor hyperparameters) exactly, and ``plain`` (floats) closely."""
    task = Quadratic(torch.float32)
    params = task.init_params(torch.Generator().manual_seed(0))
    runs = [unroll(task, r, params, r.init(params), steps, torch.Generator(), differentiable=False)
            for r in (rule, ref, plain)]
    for k in params:
        assert torch.equal(runs[0].params[k], runs[1].params[k])
        torch.testing.assert_close(runs[0].params[k], runs[2].params[k], rtol=1e-5, atol=1e-6)
    assert torch.equal(runs[0].losses, runs[1].losses)


# --------------------------------------------------------------------------- adapter, config, errors


@pytest.mark.parametrize("name", list(LEARNED_RULES))
def test_adapter_equals_pure_update(name):
    rule = make_rule(name, **RULE_KWARGS[name])
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x, y = torch.randn(8, 1, 6, 6), torch.randn(8, 3)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = rule.init(params)
    opt = RuleOptimizer(model.parameters(), rule)
    for _ in range(5):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        grads = {k: v.grad.clone() for k, v in model.named_parameters()}
        opt.step()
        with torch.no_grad():
            params, state = rule.update(grads, state, params)
        for k, v in model.named_parameters():
            torch.testing.assert_close(v.detach(), params[k], rtol=1e-5, atol=1e-7)
    # the adapter's lr is the output multiplier: lr = 0 freezes the model
    frozen = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt.param_groups[0]["lr"] = 0.0
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    opt.step()
    for k, v in model.named_parameters():
        assert torch.equal(v.detach(), frozen[k])


@pytest.mark.parametrize("name", list(LEARNED_RULES))
def test_config_round_trip_gives_identical_updates(name):
    import json
    rule = make_rule(name, **RULE_KWARGS[name])
    with torch.no_grad():  # move the meta-parameters away from their initial values
        for p in rule.parameters():
            p.add_(0.01 * torch.randn_like(p))
    cfg = json.loads(json.dumps(rule.config()))
    torch.manual_seed(123)  # different initial weights, overwritten by load_state_dict
    clone = type(rule)(**cfg)
    clone.load_state_dict(rule.state_dict())
    assert clone.config() == rule.config()
    params, grads = random_params(), random_params(seed=1)
    a = rule.update(grads, rule.init(params), params)
    b = clone.update(grads, clone.init(params), params)
    assert _tree_equal(a, b)


def test_unknown_name_lists_allowed_names():
    with pytest.raises(ValueError, match="lstm, mlp, learned_adam, learned_sgd"):
        make_learned_rule("adamw")


@pytest.mark.parametrize("name, kwargs, field", [
    ("lstm", {"hidden_size": 0}, "hidden_size"),
    ("lstm", {"hidden_size": -3}, "hidden_size"),
    ("lstm", {"preprocess_p": 0.0}, "preprocess_p"),
    ("lstm", {"preprocess_p": -1.0}, "preprocess_p"),
    ("lstm", {"output_scale": 0.0}, "output_scale"),
    ("mlp", {"decays": [0.9, 1.0]}, "decays"),
    ("mlp", {"decays": [0.0]}, "decays"),
    ("mlp", {"decays": [1.5]}, "decays"),
    ("mlp", {"hidden_sizes": [32, 0]}, "hidden_sizes"),
    ("mlp", {"step_mult": 0.0}, "step_mult"),
    ("mlp", {"exp_mult": -1.0}, "exp_mult"),
    ("learned_adam", {"lr": 0.0}, "lr"),
    ("learned_adam", {"betas": (0.9, 1.0)}, "betas"),
    ("learned_adam", {"eps": 0.0}, "eps"),
    ("learned_sgd", {"momentum": 1.0}, "momentum"),
    ("learned_sgd", {"momentum": -0.5}, "momentum"),
    ("learned_sgd", {"steps": 0}, "steps"),
])
def test_bad_constructor_values_name_the_argument(name, kwargs, field):
    with pytest.raises(ValueError, match=field):
        make_learned_rule(name, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(LEARNED_RULES))
def test_cuda_matches_cpu(name):
    rule = make_rule(name, **RULE_KWARGS[name]).double()
    params, grads = random_params(torch.float64), random_params(torch.float64, seed=1)
    cpu = rule.update(grads, rule.init(params), params)
    cuda_rule = copy.deepcopy(rule).cuda()
    to = lambda d: {k: v.cuda() for k, v in d.items()}  # noqa: E731
    gpu = cuda_rule.update(to(grads), cuda_rule.init(to(params)), to(params))
    for k in params:
        assert gpu[0][k].device.type == "cuda"
        torch.testing.assert_close(gpu[0][k].cpu(), cpu[0][k])
    cpu_loss = meta_loss(rule, Quadratic(torch.float64))
    gpu_loss = meta_loss(cuda_rule, Quadratic(torch.float64, "cuda"))
    assert gpu_loss.device.type == "cuda"
    torch.testing.assert_close(gpu_loss.cpu(), cpu_loss.detach())
    (g_cpu,) = torch.autograd.grad(cpu_loss, [next(rule.parameters())])
    (g_gpu,) = torch.autograd.grad(gpu_loss, [next(cuda_rule.parameters())])
    torch.testing.assert_close(g_gpu.cpu(), g_cpu)
    with torch.no_grad():  # a float32 rule on float64 CUDA params, under no_grad
        new, state = cuda_rule.float().update(to(grads), cuda_rule.init(to(params)), to(params))
    assert all(v.dtype == torch.float64 and v.device.type == "cuda" for v in new.values())


@pytest.mark.parametrize("make", [lambda s: MLPOptimizer(hidden_sizes=[8], step_scale=s, step_mult=1.0),
                                  lambda s: LSTMOptimizer(hidden_size=6, step_scale=s, output_scale=1.0)],
                         ids=["mlp", "lstm"])
def test_grad_rms_step_scale_multiplies_each_tensors_step_by_its_gradient_rms(make):
    torch.manual_seed(0)
    plain = make("none").double()
    scaled = make("grad_rms").double()
    scaled.load_state_dict(plain.state_dict())
    gen = torch.Generator().manual_seed(1)
    params = {"w": torch.randn(4, 3, generator=gen, dtype=torch.float64),
              "b": torch.randn(3, generator=gen, dtype=torch.float64)}
    grads = {"w": 0.01 * torch.randn(4, 3, generator=gen, dtype=torch.float64),
             "b": 5.0 * torch.randn(3, generator=gen, dtype=torch.float64)}
    new_plain, _ = plain.update(grads, plain.init(params), params)
    new_scaled, _ = scaled.update(grads, scaled.init(params), params)
    for k in params:
        rms = math.sqrt(float((grads[k] ** 2).mean()) + 1e-8)  # independent of the rule's helper
        torch.testing.assert_close(new_scaled[k] - params[k], (new_plain[k] - params[k]) * rms,
                                   rtol=1e-10, atol=1e-14)


def test_mlp_optimizer_is_scale_invariant_by_default_and_equivariant_with_grad_rms():
    """Features are normalised: scaling the gradient by c leaves the default step alone and
    multiplies the grad_rms step by c (up to the 1e-8 in the normalisation, hence gradients large
    enough that even the slowest momentum, 1e-4 * g after one step, dwarfs it)."""
    torch.manual_seed(0)
    params = {"w": torch.randn(5, 4, dtype=torch.float64)}
    g = {"w": 100 * torch.randn(5, 4, dtype=torch.float64)}
    g10 = {"w": 10 * g["w"]}
    for scale, factor in (("none", 1.0), ("grad_rms", 10.0)):
        rule = MLPOptimizer(hidden_sizes=[8], step_scale=scale, step_mult=1.0).double()
        a = rule.update(g, rule.init(params), params)[0]["w"] - params["w"]
        b = rule.update(g10, rule.init(params), params)[0]["w"] - params["w"]
        torch.testing.assert_close(b, factor * a, rtol=1e-3, atol=1e-12)


def test_unknown_step_scale_is_rejected():
    with pytest.raises(ValueError, match="step_scale='adam' is not allowed; allowed: none, grad_rms"):
        MLPOptimizer(step_scale="adam")
    with pytest.raises(ValueError, match="step_scale"):
        LSTMOptimizer(step_scale="x")


def test_lstm_with_grad_rms_input_and_step_is_scale_equivariant_and_without_is_not():
    torch.manual_seed(0)
    params = {"w": torch.randn(5, 4, dtype=torch.float64), "b": torch.randn(4, dtype=torch.float64)}
    g = {k: torch.randn_like(v) for k, v in params.items()}
    g10 = {k: 10 * v for k, v in g.items()}

    def steps(rule):
        a = rule.update(g, rule.init(params), params)[0]
        b = rule.update(g10, rule.init(params), params)[0]
        return [(a[k] - params[k], b[k] - params[k]) for k in params]

    for a, b in steps(LSTMOptimizer(hidden_size=6, step_scale="grad_rms", input_scale="grad_rms").double()):
        torch.testing.assert_close(b, 10 * a, rtol=1e-6, atol=1e-12)
    torch.manual_seed(0)
    for a, b in steps(LSTMOptimizer(hidden_size=6, step_scale="grad_rms").double()):  # log-scale input
        assert not torch.allclose(b, 10 * a, rtol=1e-3)
    with pytest.raises(ValueError, match="input_scale"):
        LSTMOptimizer(input_scale="adam")


def test_every_registered_rule_is_a_learned_rule_with_the_shared_bookkeeping():
    from learned_opt.optimizers import LearnedRule, fused
    for name, cls in LEARNED_RULES.items():
        rule = make_rule(name)
        assert isinstance(rule, LearnedRule) and rule.hparam_names == ("lr",)
        assert rule.numeric_hparams() is (name == "celo" and fused.kernel_available()[0])   # the adapter's fast path
        rebuilt = cls(**rule.config())
        assert rebuilt.config() == rule.config(), name
    assert "hidden_size=20" in repr(LSTMOptimizer())  # repr from config
    with pytest.raises(NotImplementedError):
        LearnedRule().config()
