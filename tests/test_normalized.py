"""The per-tensor normalised MLP optimizer (``celo``): the normalisation, its invariances, weight
decay, the Adam bias path against torch.optim.Adam, horizon features, batched populations,
``torch.func.vmap`` over meta-parameters, meta-gradients and checkpoints.

The generic learned-rule tests (purity, shapes, adapter, config round trip, finite-difference
meta-gradients on a quadratic) run on it too, from ``tests/test_learned_rules.py``."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

import learned_opt
from learned_opt.meta.checkpoint import save_checkpoint
from learned_opt.optimizers import LEARNED_RULES, NormalizedMLPOptimizer, make_learned_rule
from learned_opt.optimizers.normalized import orthogonalize
from learned_opt.tasks import make_task
from learned_opt.unroll import unroll

SHAPES = {"matrix": (5, 4), "bias": (4,), "conv": (3, 2, 3, 3), "scalar": ()}


def rule_(**kw) -> NormalizedMLPOptimizer:
    torch.manual_seed(0)
    return NormalizedMLPOptimizer(**kw).double()


def tree(seed: int, scale: float = 1.0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(s, generator=g, dtype=dtype) for k, s in SHAPES.items()}


def run(rule, grads_seq, params, horizon=None):
    """Apply ``rule`` to a sequence of gradient dicts (no graph); returns the params and state after them."""
    state = rule.init(params, horizon=horizon)
    with torch.no_grad():
        for g in grads_seq:
            params, state = rule.update(g, state, params)
    return params, state


def rms(x: torch.Tensor) -> float:
    return float((x * x).mean().sqrt().detach())


def test_registered_as_celo_and_defaults():
    assert LEARNED_RULES["celo"] is NormalizedMLPOptimizer
    rule = make_learned_rule("celo")
    assert rule.hidden_sizes == [8, 8] and rule.hparam_names == ("lr",) and rule.numeric_hparams() is False
    assert rule.num_inputs == len(rule.feature_names()) == 2 + 5 + 2 * 6 + 5 + 2
    assert rule.feature_names()[rule.init_feature_index()] == "m_0.9/sqrt(v_0.999)"
    assert {n for n, _ in rule.named_parameters()} == {
        "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "layers.2.weight",
        "layers.2.bias", "skip", "log_scale"}
    adam = make_learned_rule("celo", bias_rule="adam", learn_scale=False)
    assert "log_bias_scale" in dict(adam.named_buffers()) and "log_scale" in adam.state_dict()
    assert not any("scale" in n for n, _ in adam.named_parameters())


# --------------------------------------------------------------------------- the normalisation


@pytest.mark.parametrize("lr, log_scale", [(1.0, 0.0), (0.3, 0.7)])
def test_each_tensors_step_has_rms_step_mult_times_lr_without_magnitude(lr, log_scale):
    rule = rule_(magnitude=False, step_mult=2e-3, lr=lr)
    with torch.no_grad():
        rule.log_scale.fill_(log_scale)
    params = tree(0)
    grads = [tree(1), tree(2, 100.0), tree(3, 1e-3)]
    state = rule.init(params)
    for g in grads:
        new, state = rule.update(g, state, params)
        for k in params:
            assert rms(new[k] - params[k]) == pytest.approx(2e-3 * lr * math.exp(log_scale), rel=1e-12), k
        params = new


def test_magnitude_scales_each_tensor_by_a_factor_in_0_2():
    plain, scaled = rule_(magnitude=False), rule_(magnitude=True)
    with torch.no_grad():
        for r in (plain, scaled):  # a large, non-trivial magnitude head
            r.layers[-1].weight.normal_(generator=torch.Generator().manual_seed(4))
    params, grads = tree(0), tree(1)
    a, _ = plain.update(grads, plain.init(params), params)
    b, _ = scaled.update(grads, scaled.init(params), params)
    factors = []
    for k in params:
        da, db = a[k] - params[k], b[k] - params[k]
        ratio = (db / da).reshape(-1)
        torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio))  # one factor per tensor
        factors.append(float(ratio[0].detach()))
        assert 0 < factors[-1] < 2
    assert max(factors) - min(factors) > 0.05  # per tensor, not global


def test_magnitude_log_range_gives_the_exp_tanh_factor_per_tensor():
    """With magnitude_log_range=r each tensor's step is the plain one times exp(r * tanh(mean head output)),
    checked against the head output computed independently from the rule's own MLP."""
    r = 2.0
    plain, wide = rule_(magnitude=False), rule_(magnitude=True, magnitude_log_range=r)
    with torch.no_grad():
        wide.layers[-1].weight.normal_(generator=torch.Generator().manual_seed(4))
        wide.layers[-1].bias.fill_(3.0)  # a large head output: the factor nears exp(r)
        plain.load_state_dict(wide.state_dict())
    params, grads = tree(0), tree(1)
    a, _ = plain.update(grads, plain.init(params), params)
    b, state = wide.update(grads, wide.init(params), params)
    for k in params:
        feats = wide.features(grads[k], params[k], [state[m][k] for m in wide.momentum_keys],
                              [state[v][k] for v in wide.rms_keys]).reshape(-1, wide.num_features)
        x = torch.cat([feats, wide.time_features(0, None, feats).expand(feats.shape[0], -1)], dim=-1)
        expected = math.exp(r * math.tanh(float(wide.mlp(x)[:, 1].mean().detach())))
        ratio = ((b[k] - params[k]) / (a[k] - params[k])).reshape(-1)
        torch.testing.assert_close(ratio, torch.full_like(ratio, expected))
        assert 2 < expected < math.exp(r)  # beyond what the (0, 2) form can reach
    assert wide.config()["magnitude_log_range"] == r and plain.config()["magnitude_log_range"] is None


@pytest.mark.parametrize("bias_rule", ["mlp", "adam"])
def test_step_does_not_depend_on_the_gradients_scale(bias_rule):
    """Features and output are normalised: scaling every gradient by c leaves the steps alone, up to
    the 1e-20 in the normalisations (against the mean square ~1e-12 of the slowest momentum after
    one step at c = 1e-3: 1e-8 relative), and on the Adam bias path up to Adam's eps = 1e-8
    (against second-moment roots ~1e-3: 1e-5 relative)."""
    rule = rule_(bias_rule=bias_rule)
    params = tree(0)
    seq = [tree(s) for s in (1, 2, 3)]
    ref, ref_state = run(rule, seq, params)
    for c in (1e-3, 1e3):
        out, state = run(rule, [{k: c * v for k, v in g.items()} for g in seq], params)
        for k in params:
            adam_path = bias_rule == "adam" and len(SHAPES[k]) <= 1
            torch.testing.assert_close(out[k] - params[k], ref[k] - params[k], atol=1e-12,
                                       rtol=1e-4 if adam_path else 1e-6)
        torch.testing.assert_close(state["rms_0.95"]["matrix"], c * c * ref_state["rms_0.95"]["matrix"])


def test_weight_decay_is_decoupled_and_follows_the_formula():
    plain, decayed = rule_(step_mult=0.01, lr=0.5), rule_(step_mult=0.01, lr=0.5, weight_decay=0.1)
    decayed.load_state_dict(plain.state_dict())
    params, grads = tree(0), tree(1)
    a, _ = plain.update(grads, plain.init(params), params)
    b, _ = decayed.update(grads, decayed.init(params), params)
    for k in params:
        torch.testing.assert_close(b[k], a[k] - 0.01 * 0.5 * 0.1 * params[k], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("log_bias_scale", [0.0, -0.4])
def test_adam_bias_path_matches_torch_optim_adam(log_bias_scale):
    rule = rule_(bias_rule="adam", step_mult=1e-2, lr=0.5)
    with torch.no_grad():
        rule.log_bias_scale.fill_(log_bias_scale)
    lr = 1e-2 * 0.5 * math.exp(log_bias_scale)
    params = tree(0)
    bias, scalar = (nn.Parameter(params[k].clone()) for k in ("bias", "scalar"))
    opt = torch.optim.Adam([bias, scalar], lr=lr)
    state = rule.init(params)
    for s in range(6):
        grads = tree(10 + s, scale=10.0 ** (s % 3 - 1))
        bias.grad, scalar.grad = grads["bias"].clone(), grads["scalar"].clone()
        opt.step()
        params, state = rule.update(grads, state, params)
        torch.testing.assert_close(params["bias"], bias.detach(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(params["scalar"], scalar.detach(), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="bias_rule='adam' uses the momentum_0.9 and rms_0.999"):
        NormalizedMLPOptimizer(bias_rule="adam", decays=[0.5, 0.99])


def test_untrained_rule_is_a_per_tensor_normalised_adam_step():
    rule = rule_(magnitude=False)
    params = tree(0)
    seq = [tree(s) for s in (1, 2, 3, 4)]
    new, state = run(rule, seq, params)
    old, _ = run(rule, seq[:-1], params)
    for k in ("matrix", "conv"):
        adam = state["momentum_0.9"][k] / state["rms_0.999"][k].sqrt()
        step = old[k] - new[k]
        cos = float((adam * step).sum() / (adam.norm() * step.norm()))
        assert cos > 0.99, (k, cos)


def test_untrained_rule_trains_a_small_mlp():
    task = make_task("mlp", dataset="digits", hidden_sizes=[16], activation="relu", batch_size=64)
    torch.manual_seed(0)
    rule = NormalizedMLPOptimizer(step_mult=3e-3)
    g = torch.Generator().manual_seed(0)
    params = task.init_params(g)
    with torch.no_grad():
        res = unroll(task, rule, params, rule.init(params, horizon=60), 60, g)
    assert not res.diverged and float(res.losses[-10:].mean()) < 0.5 * float(res.losses[:3].mean())


# --------------------------------------------------------------------------- horizon


def test_horizon_features_and_state():
    rule = rule_()
    like = torch.zeros((), dtype=torch.float64)
    t = rule.time_features(30, None, like)
    torch.testing.assert_close(t, torch.tensor([math.tanh(30 / s) for s in (1, 10, 100, 1000, 10000)] + [0, 0],
                                               dtype=torch.float64))
    assert rule.time_features(30, 120, like)[-2:].tolist() == [0.25, 1.0]
    assert rule.time_features(500, 120, like)[-2:].tolist() == [1.0, 1.0]  # clamped past the horizon
    params, grads = tree(0), tree(1)
    with_h = rule.init(params, horizon=100)
    assert with_h["horizon"] == 100 and "horizon" not in rule.init(params)
    a, sa = rule.update(grads, with_h, params)
    b, _ = rule.update(grads, rule.init(params), params)
    assert sa["horizon"] == 100 and sa["step"] == 1
    assert not torch.equal(a["matrix"], b["matrix"])  # the fraction features reach the step
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="horizon"):
            rule.init(params, horizon=bad)


# --------------------------------------------------------------------------- batching


HD_SMOOTH = {"hypergradient_momentum": 0.6, "hypergradient_shrink": 2.5}   # both hypergradient options on
HD_FLOOR_SNR = {"hypergradient_shrink": 2.0, "hypergradient_floor": -0.5, "snr_step": True}   # the later options
RADIAL = {"hypergradient_shrink": 2.0, "radial_gain": 0.3}   # the radial part's own step size


@pytest.mark.parametrize("bias_rule, orth, hd, extra", [("mlp", False, 0.0, {}), ("adam", False, 0.0, {}),
                                                        ("adam", True, 0.0, {}), ("mlp", False, 0.3, {}),
                                                        ("adam", False, 0.3, {}), ("mlp", False, 0.3, HD_SMOOTH),
                                                        ("adam", False, 0.3, HD_FLOOR_SNR),
                                                        ("mlp", False, 0.3, RADIAL), ("adam", False, 0.0, RADIAL)])
def test_population_dim_equals_independent_problems(bias_rule, orth, hd, extra):
    rule = rule_(bias_rule=bias_rule, step_mult=0.1, orthogonalize=orth, hypergradient=hd, **extra)
    members = [tree(0), tree(1)]
    grads = [[tree(2), tree(3), tree(6)], [tree(4, 100.0), tree(5, 100.0), tree(7, 100.0)]]  # the second member on another scale
    singles = [run(rule, [grads[i][s] for s in range(3)], members[i], horizon=7)[0] for i in range(2)]
    pop = copy.deepcopy(rule)
    pop.population_dim = 0
    stack = lambda trees: {k: torch.stack([t[k] for t in trees]) for k in trees[0]}  # noqa: E731
    out, _ = run(pop, [stack([grads[0][s], grads[1][s]]) for s in range(3)], stack(members), horizon=7)
    for i in range(2):
        for k in SHAPES:
            torch.testing.assert_close(out[k][i], singles[i][k], rtol=1e-12, atol=1e-15)


class _UpdateCall(nn.Module):
    """``forward`` is one ``rule.update``; returns only tensor leaves (the int step stays outside vmap)."""

    def __init__(self, rule: nn.Module):
        super().__init__()
        self.rule = rule

    def forward(self, grads, tensors, params, step: int, horizon: int | None):
        state = {"step": step, **tensors, **({"horizon": horizon} if horizon else {})}
        new, new_state = self.rule.update(grads, state, params)
        return new, {k: v for k, v in new_state.items() if isinstance(v, dict)}


@pytest.mark.parametrize("bias_rule, horizon, orth, hd, extra", [
    ("mlp", None, False, 0.0, {}), ("adam", 50, False, 0.0, {}), ("mlp", 50, True, 0.0, {}),
    ("mlp", 50, False, 0.2, {}), ("mlp", 50, False, 0.2, HD_SMOOTH), ("mlp", 50, False, 0.2, HD_FLOOR_SNR),
    ("mlp", 50, False, 0.2, RADIAL)])
def test_vmap_over_perturbed_meta_parameters_equals_separate_updates(bias_rule, horizon, orth, hd, extra):
    """What an ES/PES estimator does: ``vmap`` of ``functional_call`` over stacked meta-parameter
    sets, with shared inner params (in_dims None) and with one inner trajectory per set (in_dims 0)."""
    rule = rule_(bias_rule=bias_rule, step_mult=0.05, orthogonalize=orth, hypergradient=hd, **extra)
    call = _UpdateCall(rule)
    base = dict(call.named_parameters())
    gen = torch.Generator().manual_seed(7)
    metas = [{k: v.detach() + 0.05 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in base.items()}
             for _ in range(3)]
    stacked = {k: torch.stack([m[k] for m in metas]) for k in base}
    params, grads = tree(0), tree(1)
    tensors = {k: v for k, v in rule.init(params).items() if k != "step"}

    def one_step(meta, g, t, p, step):
        return functional_call(call, meta, (g, t, p, step, horizon))

    # step 0: the inner params are shared by every meta-parameter set
    batched = vmap(lambda m, g, t, p: one_step(m, g, t, p, 0), in_dims=(0, None, None, None))(
        stacked, grads, tensors, params)
    separate = [one_step(m, grads, tensors, params, 0) for m in metas]
    for i, (p_i, t_i) in enumerate(separate):
        for k in SHAPES:
            torch.testing.assert_close(batched[0][k][i], p_i[k], rtol=1e-12, atol=1e-15)
        assert not torch.equal(p_i["matrix"], separate[(i + 1) % 3][0]["matrix"])
    # step 1: each set carries its own inner params and state (stacked), gradients too
    grads2 = {k: torch.stack([tree(10 + i)[k] for i in range(3)]) for k in SHAPES}
    batched2 = vmap(lambda m, g, t, p: one_step(m, g, t, p, 1))(stacked, grads2, batched[1], batched[0])
    for i, (p_i, t_i) in enumerate(separate):
        p2, t2 = one_step(metas[i], {k: v[i] for k, v in grads2.items()}, t_i, p_i, 1)
        for k in SHAPES:
            torch.testing.assert_close(batched2[0][k][i], p2[k], rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(batched2[1]["rms_0.999"][k][i], t2["rms_0.999"][k], rtol=1e-12, atol=0)


@pytest.mark.parametrize("hd", [0.0, 0.3])
def test_meta_gradient_passes_gradcheck(hd):
    """Finite differences (float64) of the params after two updates w.r.t. every meta-parameter."""
    torch.manual_seed(1)
    rule = NormalizedMLPOptimizer(hidden_sizes=[4], decays=[0.5, 0.9], rms_decays=[0.999], step_timescales=[3],
                                  bias_rule="adam", hypergradient=hd).double()
    names = [n for n, _ in rule.named_parameters()]
    shapes = {"w": (3, 2), "b": (2,)}
    gen = torch.Generator().manual_seed(2)
    params = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    grads = [{k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()} for _ in range(2)]

    def f(*metas):
        p, state = params, rule.init(params, horizon=4)
        for g in grads:
            p, tensors = _functional_update(rule, dict(zip(names, metas)), g, state, p)
            state = {**state, **tensors, "step": state["step"] + 1}
        return tuple(p[k] for k in shapes)

    inputs = tuple(p.detach().clone().requires_grad_() for p in rule.parameters())
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def _functional_update(rule, metas, grads, state, params):
    return torch.func.functional_call(_UpdateCall(rule), {f"rule.{k}": v for k, v in metas.items()},
                                      (grads, {k: v for k, v in state.items() if isinstance(v, dict)}, params,
                                       state["step"], state.get("horizon")))


# --------------------------------------------------------------------------- checkpoints and errors


def test_checkpoint_round_trip_rebuilds_the_rule(tmp_path):
    rule = make_learned_rule("celo", hidden_sizes=[16, 16], bias_rule="adam", weight_decay=0.01,
                             learn_scale=False, magnitude=False, orthogonalize=True)
    with torch.no_grad():
        for p in rule.parameters():
            p.add_(0.01 * torch.randn_like(p))
        rule.log_scale.fill_(0.2)
    path = save_checkpoint(tmp_path / "celo.pt", rule, 3, {"optimizer": {"name": "celo"}})
    loaded = learned_opt.load(path)
    assert isinstance(loaded, NormalizedMLPOptimizer) and loaded.config() == rule.config()
    assert float(loaded.log_scale) == pytest.approx(0.2)
    params, grads = tree(0, dtype=torch.float32), tree(1, dtype=torch.float32)
    a, _ = rule.update(grads, rule.init(params, horizon=10), params)
    b, _ = loaded.update(grads, loaded.init(params, horizon=10), params)
    for k in params:
        assert torch.equal(a[k], b[k])


@pytest.mark.parametrize("kwargs, field", [
    ({"hidden_sizes": [8, 0]}, "hidden_sizes"), ({"decays": []}, "decays"), ({"decays": [0.9, 0.9]}, "decays"),
    ({"rms_decays": [1.0]}, "rms_decays"), ({"step_timescales": [0]}, "step_timescales"),
    ({"step_mult": 0.0}, "step_mult"), ({"lr": -1.0}, "lr"), ({"weight_decay": -0.1}, "weight_decay"),
    ({"bias_rule": "sgd"}, "bias_rule"), ({"magnitude": "yes"}, "magnitude"), ({"learn_scale": 1}, "learn_scale"),
    ({"magnitude_log_range": 0.0}, "magnitude_log_range"), ({"orthogonalize": "yes"}, "orthogonalize"),
])
def test_bad_constructor_values_name_the_argument(kwargs, field):
    with pytest.raises(ValueError, match=field):
        NormalizedMLPOptimizer(**kwargs)


def test_works_without_rms_decays():
    rule = rule_(rms_decays=[], magnitude=False)
    assert rule.feature_names()[rule.init_feature_index()] == "m_0.9"
    params, grads = tree(0), tree(1)
    new, state = rule.update(grads, rule.init(params), params)
    assert set(state) == {"step", *rule.momentum_keys}
    assert rms(new["matrix"] - params["matrix"]) == pytest.approx(1e-3, rel=1e-12)


def test_output_norm_off_keeps_the_raw_direction():
    import torch
    from learned_opt.optimizers import make_learned_rule
    torch.manual_seed(0)
    on = make_learned_rule("celo", magnitude=False).double()
    with torch.no_grad():
        on.skip.mul_(3.0)  # the raw direction now has an RMS of about 3
    off = make_learned_rule("celo", magnitude=False, output_norm=False).double()
    off.load_state_dict(on.state_dict())
    params = {"w": torch.randn(6, 5, dtype=torch.float64)}
    grads = {"w": 3.0 * torch.randn(6, 5, dtype=torch.float64)}
    p_on, _ = on.update(grads, on.init(params), params)
    p_off, _ = off.update(grads, off.init(params), params)
    step_on, step_off = params["w"] - p_on["w"], params["w"] - p_off["w"]
    # with the output normalised the step's RMS is exactly step_mult; without, it is the direction's own
    assert float(step_on.pow(2).mean().sqrt()) == pytest.approx(1e-3, rel=1e-4)
    ratio = step_off / step_on
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-8)  # same direction, other size
    assert float(ratio.flatten()[0]) == pytest.approx(3.0, rel=0.05)


def test_relative_steps_scale_with_the_weights_and_follow_a_rescaling():
    torch.manual_seed(0)
    rule = NormalizedMLPOptimizer(relative_step=True, magnitude=False, bias_rule="adam", step_mult=0.01)
    g = torch.Generator().manual_seed(1)
    w, grad = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    b, gb = torch.randn(5, generator=g), torch.randn(5, generator=g)
    params, grads = {"w": w, "b": b}, {"w": grad, "b": gb}
    step = (w - rule.update(grads, rule.init(params), params)[0]["w"]).detach()
    # the step's RMS is step_mult times the weights' RMS (log_scale starts at 0, no magnitude)
    assert float(step.pow(2).mean().sqrt()) == pytest.approx(0.01 * float(w.pow(2).mean().sqrt()), rel=1e-5)
    for c in (1e-2, 1e2):  # w -> c w with g -> g / c is the same function: every step is c times as large
        scaled = {"w": c * w, "b": b}
        new = rule.update({"w": grad / c, "b": gb}, rule.init(scaled), scaled)[0]["w"]
        torch.testing.assert_close(c * w - new, c * step, rtol=1e-4, atol=1e-7 * c)
    plain = NormalizedMLPOptimizer(magnitude=False, bias_rule="adam", step_mult=0.01)
    plain.load_state_dict(rule.state_dict())
    plain_step = (w - plain.update(grads, plain.init(params), params)[0]["w"]).detach()
    torch.testing.assert_close(step, plain_step * w.pow(2).mean().sqrt(), rtol=1e-5, atol=1e-9)
    assert rule.config()["relative_step"] is True and NormalizedMLPOptimizer(**rule.config()).relative_step


# --------------------------------------------------------------------------- orthogonalised matrices


@pytest.mark.parametrize("shape", [(5, 4), (3, 7), (6, 6), (3, 2, 3, 3)])
def test_orthogonalize_keeps_the_singular_vectors_and_pushes_singular_values_to_one(shape):
    """Against the SVD: U^T orth(d) V is diagonal with entries near 1 (Newton-Schulz's quintic ends in
    about [0.7, 1.2] for singular values down to 1/100 of the largest, as here)."""
    g = torch.Generator().manual_seed(0)
    m = shape[0]
    n = math.prod(shape[1:])
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    S = torch.logspace(0, -2, k, dtype=torch.float64)
    d = (U * S) @ V.T
    out = orthogonalize(d.reshape(shape)).reshape(m, n)
    core = U.T @ out @ V
    diag = torch.diagonal(core)
    assert float(diag.min()) > 0.65 and float(diag.max()) < 1.25
    assert float((core - torch.diag(diag)).abs().max()) < 1e-6
    # nothing outside the span of d's singular vectors
    torch.testing.assert_close(U @ core @ V.T, out, rtol=0, atol=1e-9)


def test_orthogonalize_is_equivariant_and_scale_free():
    g = torch.Generator().manual_seed(1)
    d = torch.randn(5, 3, generator=g, dtype=torch.float64)
    Q1, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    Q2, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    torch.testing.assert_close(orthogonalize(Q1 @ d @ Q2), Q1 @ orthogonalize(d) @ Q2)
    torch.testing.assert_close(orthogonalize(1e4 * d), orthogonalize(d))
    batched = orthogonalize(torch.stack([d, 3 * d.flip(0)]), batch_dims=1)
    torch.testing.assert_close(batched[1], orthogonalize(d.flip(0)))


def test_orthogonalized_rule_takes_equal_steps_along_every_singular_direction():
    """A matrix's step: unit RMS times the scale, and singular values within Newton-Schulz's band, while
    the plain rule's step keeps more of the gradient's spread; 1-D tensors take the same step either way."""
    plain, orth = rule_(magnitude=False), rule_(magnitude=False, orthogonalize=True)
    g = torch.Generator().manual_seed(3)
    params = tree(0)
    grads = tree(1)
    U, _ = torch.linalg.qr(torch.randn(5, 4, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    grads["matrix"] = (U * torch.tensor([1.0, 0.5, 0.2, 0.1], dtype=torch.float64)) @ V.T   # spread spectrum
    (a, _), (b, _) = (run(r, [grads], params) for r in (plain, orth))
    step_plain, step_orth = params["matrix"] - a["matrix"], params["matrix"] - b["matrix"]
    assert rms(step_orth) == pytest.approx(1e-3, rel=1e-9)
    s_orth, s_plain = torch.linalg.svdvals(step_orth), torch.linalg.svdvals(step_plain)
    # Newton-Schulz leaves singular values within about [0.7, 1.2]: a ratio below 1.2 / 0.68
    assert float(s_orth.max() / s_orth.min()) < 1.8 and float(s_plain.max() / s_plain.min()) > 2.5
    torch.testing.assert_close(a["bias"], b["bias"], rtol=0, atol=0)
    torch.testing.assert_close(a["scalar"], b["scalar"], rtol=0, atol=0)
    s_conv = torch.linalg.svdvals((params["conv"] - b["conv"]).reshape(3, -1))   # conv: (out, in x kh x kw)
    assert float(s_conv.max() / s_conv.min()) < 1.8


# --------------------------------------------------------------------------- hypergradient step sizes


def _hd_reference(g, last, log_step, gain, r):
    """numpy: the adapted log step size of one tensor (the module docstring's formula)."""
    import numpy as np
    g, last = g.detach().numpy().ravel(), last.detach().numpy().ravel()
    denom = np.sqrt((g @ g) * (last @ last) + 1e-20)
    z = (g @ last) * np.sqrt(g.size) / denom
    return float(np.clip(log_step + gain * np.tanh(z), -r, r))


def test_hypergradient_multiplies_each_plain_step_by_its_adapted_step_size():
    """One update from a crafted state: each MLP tensor's step is the plain rule's step (same meta-
    parameters, same momenta) times exp(l), l from the numpy reference; the state keeps the plain
    direction and l."""
    hd = rule_(hypergradient=0.3, hypergradient_range=0.5)
    plain = rule_()
    plain.load_state_dict({k: v for k, v in hd.state_dict().items() if k != "log_hyper_gain"})
    assert float(hd.log_hyper_gain.detach()) == pytest.approx(math.log(0.3))
    params, grads = tree(0), tree(1)
    state = plain.init(params)
    hd_state = hd.init(params)
    assert set(hd_state) == set(state) | {"log_step", "last_dir"}
    last = tree(2)
    last["bias"] = -grads["bias"]          # opposed: the step size falls
    last["conv"] = grads["conv"] * 3.0     # aligned: it rises, past the clamp
    start = {"matrix": 0.1, "bias": -0.45, "conv": 0.4, "scalar": 0.0}
    hd_state["last_dir"] = last
    hd_state["log_step"] = {k: torch.full_like(v, start[k]) for k, v in params.items()}
    a, st_plain = plain.update(grads, state, params)
    b, st_hd = hd.update(grads, hd_state, params)
    for k in params:
        gain = math.exp(float(hd.log_hyper_gain.detach()))  # 0.3 up to float32 rounding of its log
        want = _hd_reference(grads[k], last[k], start[k], gain, 0.5)
        # (steps of ~1e-3 on weights of ~1: the differences keep ~13 digits)
        torch.testing.assert_close(params[k] - b[k], (params[k] - a[k]) * math.exp(want), rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(st_hd["log_step"][k], torch.full_like(params[k], want), rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(st_hd["last_dir"][k], (params[k] - a[k]) / 1e-3, rtol=1e-8, atol=1e-9)
    assert float(st_hd["log_step"]["conv"].flatten()[0]) == pytest.approx(0.5)     # clamped
    assert float(st_hd["log_step"]["bias"].flatten()[0]) == pytest.approx(-0.5)


def test_hypergradient_first_step_is_the_plain_step_and_small_tensors_on_adam_have_no_state():
    hd, plain = rule_(hypergradient=0.1, bias_rule="adam"), rule_(bias_rule="adam")
    plain.load_state_dict({k: v for k, v in hd.state_dict().items() if k != "log_hyper_gain"})
    params, grads = tree(0), tree(1)
    state = hd.init(params)
    assert set(state["log_step"]) == set(state["last_dir"]) == {"matrix", "conv"}
    a, _ = plain.update(grads, plain.init(params), params)
    b, new = hd.update(grads, state, params)
    for k in params:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert set(new["log_step"]) == {"matrix", "conv"} and float(new["log_step"]["matrix"].abs().max()) == 0.0


@pytest.mark.parametrize("step_mult, sign", [(1e-4, 1), (1.5, -1)])
def test_hypergradient_grows_a_too_small_step_and_shrinks_an_overshooting_one(step_mult, sign):
    """Full-batch quadratic 0.5 |A w|^2: steps far below the curvature's scale keep the gradient
    aligned with the last step (l rises to its clamp, and the loss falls faster than without); steps
    that overshoot turn it against the last step (l falls)."""
    torch.manual_seed(0)
    A = torch.diag(torch.linspace(0.5, 2.0, 20, dtype=torch.float64))
    loss = lambda w: 0.5 * (A @ w).pow(2).sum()  # noqa: E731
    finals = {}
    for beta in (0.0, 0.2):
        rule = rule_(hypergradient=beta, step_mult=step_mult, magnitude=False)
        params = {"w": torch.ones(20, 1, dtype=torch.float64)}
        state = rule.init(params)
        with torch.no_grad():
            for _ in range(40):
                params, state = rule.update({"w": A.T @ A @ params["w"]}, state, params)
        finals[beta] = float(loss(params["w"]))
        if beta:
            log_step = float(state["log_step"]["w"].flatten()[0])
            assert sign * log_step > 1.0
    if sign > 0:
        assert finals[0.2] < 0.99 * finals[0.0]


def test_hypergradient_steps_do_not_depend_on_the_gradients_scale():
    rule = rule_(hypergradient=0.2)
    params = tree(0)
    seqs = [[tree(s) for s in range(1, 5)], [tree(s, 1e3) for s in range(1, 5)]]
    outs = [run(rule, seq, params)[0] for seq in seqs]
    for k in params:
        torch.testing.assert_close(outs[0][k], outs[1][k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mu, shrink, floor", [(0.0, 3.0, None), (0.7, 1.0, None), (0.7, 2.0, None), (0.0, 3.0, -0.5)])
def test_hypergradient_momentum_and_shrink_follow_the_reference(mu, shrink, floor):
    """One update at step t = 3 from a crafted state (velocity included): l moves by the gain times the
    bias-corrected momentum of tanh(z), negative values times ``shrink`` (numpy reference); the step is
    the plain rule's times exp(l); with a floor, l is clipped to [floor, 2] instead of [-2, 2]."""
    import numpy as np
    hd = rule_(hypergradient=0.3, hypergradient_range=2.0, hypergradient_momentum=mu, hypergradient_shrink=shrink,
               hypergradient_floor=floor)
    plain = rule_()
    plain.load_state_dict({k: v for k, v in hd.state_dict().items() if k != "log_hyper_gain"})
    params, grads = tree(0), tree(1)
    last = tree(2)
    last["bias"], last["conv"] = -grads["bias"], grads["conv"]     # one opposed, one aligned
    velocity = {"matrix": -0.2, "bias": 0.3, "conv": 0.1, "scalar": 0.0}
    start = {"matrix": 0.1, "bias": -0.4, "conv": 0.4, "scalar": 0.0}
    state = {**plain.init(params), "step": 3}
    hd_state = {**hd.init(params), "step": 3, "last_dir": last,
                "log_step": {k: torch.full_like(v, start[k]) for k, v in params.items()}}
    assert ("hyper_velocity" in hd_state) == (mu > 0)
    if mu:
        hd_state["hyper_velocity"] = {k: torch.full_like(v, velocity[k]) for k, v in params.items()}
    a, _ = plain.update(grads, state, params)
    b, new = hd.update(grads, hd_state, params)
    gain = math.exp(float(hd.log_hyper_gain.detach()))
    for k in params:
        g, u = grads[k].numpy().ravel(), last[k].numpy().ravel()
        signal = np.tanh((g @ u) * np.sqrt(g.size) / np.sqrt((g @ g) * (u @ u) + 1e-20))
        if mu:
            v = mu * velocity[k] + (1 - mu) * signal
            torch.testing.assert_close(new["hyper_velocity"][k], torch.full_like(params[k], v), rtol=1e-12, atol=1e-15)
            signal = v / (1 - mu ** 3)
        want = float(np.clip(start[k] + gain * (shrink * signal if signal < 0 else signal),
                             -2.0 if floor is None else floor, 2.0))
        torch.testing.assert_close(new["log_step"][k], torch.full_like(params[k], want), rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(params[k] - b[k], (params[k] - a[k]) * math.exp(want), rtol=1e-8, atol=1e-12)
    if floor is not None:        # the opposed tensor would have fallen below the floor: it stops there
        assert float(new["log_step"]["bias"].flatten()[0]) == pytest.approx(floor, abs=1e-15)
    elif shrink != 1 and not mu:   # the opposed tensor fell by shrink x the gain, the aligned one rose by 1 x
        assert start["bias"] - float(new["log_step"]["bias"].flatten()[0]) > 2.5 * gain
        assert float(new["log_step"]["conv"].flatten()[0]) - start["conv"] < 1.01 * gain


def test_hypergradient_shrink_drifts_down_on_pure_noise_and_the_floor_stops_it():
    """Gradients of pure isotropic noise (fresh each step, independent of the last step): z = cos * sqrt(n)
    is about N(0, 1), so the symmetric rule's l has no drift, while with shrink k it falls by about
    gain * (k - 1) / 2 * E|tanh Z| per update (E|tanh Z| by numerical quadrature here); a floor F holds l
    at F and leaves the rest alone."""
    import numpy as np
    zs = np.linspace(-10, 10, 200001)
    e_abs_tanh = float(np.sum(np.abs(np.tanh(zs)) * np.exp(-zs ** 2 / 2)) * (zs[1] - zs[0]) / math.sqrt(2 * math.pi))
    params = {"w": torch.ones(30, 40, dtype=torch.float64)}
    gen = torch.Generator().manual_seed(0)
    noise = [torch.randn(30, 40, generator=gen, dtype=torch.float64) for _ in range(400)]
    finals = {}
    for shrink, floor, r in ((1.0, None, 100.0), (2.0, None, 100.0), (2.0, -1.0, 3.0)):
        rule = rule_(hypergradient=0.05, hypergradient_range=r, hypergradient_shrink=shrink, hypergradient_floor=floor)
        state, trace = rule.init(params), []
        with torch.no_grad():
            for g in noise:
                _, state = rule.update({"w": g}, state, params)
                trace.append(float(state["log_step"]["w"].flatten()[0]))
        finals[shrink, floor] = trace
    gain, n = 0.05, len(noise) - 1        # the first update has no last step
    drift = -gain * (2.0 - 1) / 2 * e_abs_tanh
    assert abs(finals[1.0, None][-1]) < 0.25 * abs(drift) * n   # no drift: a random walk of ~gain * sqrt(n) * 0.6
    assert finals[2.0, None][-1] == pytest.approx(drift * n, rel=0.15)
    floored = finals[2.0, -1.0]
    assert min(floored) == pytest.approx(-1.0, abs=1e-12) and floored[-1] > -1.0 - 1e-12
    assert floored[:10] == pytest.approx(finals[2.0, None][:10], abs=1e-12)   # equal until the floor is reached


def test_hypergradient_momentum_reacts_later_and_a_steady_signal_moves_l_by_the_gain():
    """Scalar dynamics of the smoothed signal, from the rule itself: with a gradient always along the last
    step, l rises by exactly the gain per update (the bias correction), momentum or not; after the signal
    turns, the smoothed l keeps rising for a few updates while the plain one falls at once."""
    params = {"w": torch.ones(4, 5, dtype=torch.float64)}
    traces = {}
    for mu in (0.0, 0.8):
        rule = rule_(hypergradient=0.1, hypergradient_momentum=mu, magnitude=False)
        state, p, trace = rule.init(params), params, []
        with torch.no_grad():
            for t in range(12):
                sign = 1.0 if t < 7 else -1.0          # the gradient points along w, then against it
                _, state = rule.update({"w": sign * torch.ones_like(p["w"])}, state, p)
                p = params   # stay put: only the signal matters
                trace.append(float(state["log_step"]["w"].flatten()[0]))
        traces[mu] = trace
    for trace in traces.values():   # step 0 has no last step; steps 1..6 are aligned (cosine 1, tanh(sqrt(20)))
        rise = math.tanh(math.sqrt(20)) * 0.1
        assert trace[6] == pytest.approx(6 * rise, rel=1e-6)
    assert traces[0.0][7] < traces[0.0][6] and traces[0.8][7] > traces[0.8][6]


def test_hypergradient_config_round_trip_and_errors(tmp_path):
    rule = make_learned_rule("celo", hypergradient=0.05, hypergradient_range=2.0)
    path = save_checkpoint(tmp_path / "hd.pt", rule, 0, {"optimizer": {"name": "celo"}})
    loaded = learned_opt.load(path)
    assert loaded.config() == rule.config() and loaded.hypergradient == 0.05
    assert "log_hyper_gain" not in dict(make_learned_rule("celo").named_parameters())
    assert "log_hyper_gain" in dict(make_learned_rule("celo", hypergradient=0.1, learn_scale=False).named_buffers())
    with pytest.raises(ValueError, match="hypergradient"):
        NormalizedMLPOptimizer(hypergradient=-0.1)
    with pytest.raises(ValueError, match="hypergradient_range"):
        NormalizedMLPOptimizer(hypergradient=0.1, hypergradient_range=0.0)
    with pytest.raises(ValueError, match="needs hypergradient > 0"):
        NormalizedMLPOptimizer(hypergradient_momentum=0.5)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="hypergradient_momentum"):
            NormalizedMLPOptimizer(hypergradient=0.1, hypergradient_momentum=bad)
    with pytest.raises(ValueError, match="hypergradient_shrink"):
        NormalizedMLPOptimizer(hypergradient=0.1, hypergradient_shrink=0.0)
    for bad in (0.5, -3.5):   # above 0, or below -hypergradient_range
        with pytest.raises(ValueError, match="hypergradient_floor"):
            NormalizedMLPOptimizer(hypergradient=0.1, hypergradient_floor=bad)
    with pytest.raises(ValueError, match="needs hypergradient > 0"):
        NormalizedMLPOptimizer(hypergradient_floor=-1.0)
    floored = make_learned_rule("celo", hypergradient=0.1, hypergradient_shrink=2.0, hypergradient_floor=-1.0)
    back = learned_opt.load(save_checkpoint(tmp_path / "floored.pt", floored, 0, {}))
    assert back.config() == floored.config() and back.hypergradient_floor == -1.0
    smooth = make_learned_rule("celo", hypergradient=0.1, hypergradient_momentum=0.5, hypergradient_shrink=2.0)
    again = learned_opt.load(save_checkpoint(tmp_path / "smooth.pt", smooth, 0, {}))
    assert again.config() == smooth.config() and again.hypergradient_shrink == 2.0


# --------------------------------------------------------------------------- snr_step

def test_snr_step_multiplies_each_step_by_the_rms_of_adams_ratio():
    """One update at step t = 4 from a crafted state: every MLP tensor's step is the plain rule's times
    sqrt(mean(m_hat^2) / mean(v_hat)) with m_hat, v_hat Adam's bias-corrected m_0.9 and v_0.999 after this
    update (numpy reference); the hypergradient's step size multiplies on top."""
    import numpy as np
    snr, plain = rule_(snr_step=True), rule_()
    params, grads = tree(0), tree(1)
    g0 = torch.Generator().manual_seed(5)
    state = {**plain.init(params), "step": 4}
    for key in state:
        if key.startswith(("momentum_", "rms_")):
            state[key] = {k: (torch.randn(v.shape, generator=g0, dtype=torch.float64) ** 2 if key.startswith("rms_")
                              else torch.randn(v.shape, generator=g0, dtype=torch.float64)) for k, v in params.items()}
    a, _ = plain.update(grads, state, params)
    b, _ = snr.update(grads, state, params)
    for k in params:
        m = 0.9 * state["momentum_0.9"][k].numpy() + 0.1 * grads[k].numpy()
        v = 0.999 * state["rms_0.999"][k].numpy() + 0.001 * grads[k].numpy() ** 2
        factor = np.sqrt(np.mean(m ** 2) / (1 - 0.9 ** 5) ** 2 / (np.mean(v) / (1 - 0.999 ** 5)))
        torch.testing.assert_close(params[k] - b[k], (params[k] - a[k]) * float(factor), rtol=1e-10, atol=1e-14)


def test_snr_step_is_one_for_a_steady_gradient_and_small_for_noise_and_scale_free():
    """A gradient that never changes gives m_hat = g and v_hat = g^2 (factor 1: the plain rule's step);
    pure noise gives about sqrt((1 - 0.9) / (1 + 0.9)) = 0.23 once the EMAs have warmed up; both whatever
    the gradient's scale."""
    snr, plain = rule_(snr_step=True, magnitude=False), rule_(magnitude=False)
    params = {"w": torch.ones(30, 40, dtype=torch.float64)}
    steady = [{"w": torch.full((30, 40), 0.3, dtype=torch.float64) + 0.01 * torch.arange(1200.).view(30, 40)}] * 5
    a, _ = run(snr, steady, params)
    b, _ = run(plain, steady, params)
    torch.testing.assert_close(a["w"], b["w"], rtol=1e-9, atol=1e-12)
    gen = torch.Generator().manual_seed(1)
    noise = [{"w": torch.randn(30, 40, generator=gen, dtype=torch.float64)} for _ in range(3000)]
    for scale in (1.0, 1e4):
        state = snr.init(params)
        with torch.no_grad():
            for g in noise[:-1]:
                _, state = snr.update({"w": scale * g["w"]}, state, params)
            new_snr, _ = snr.update({"w": scale * noise[-1]["w"]}, state, params)
            plain_state = {**state}
            new_plain, _ = plain.update({"w": scale * noise[-1]["w"]}, plain_state, params)
        factor = float((params["w"] - new_snr["w"]).norm() / (params["w"] - new_plain["w"]).norm())
        assert factor == pytest.approx(math.sqrt(0.1 / 1.9), rel=0.15), (scale, factor)


def test_snr_step_config_round_trip_and_errors(tmp_path):
    rule = make_learned_rule("celo", snr_step=True, hypergradient=0.1)
    back = learned_opt.load(save_checkpoint(tmp_path / "snr.pt", rule, 0, {}))
    assert back.config() == rule.config() and back.snr_step is True
    with pytest.raises(ValueError, match="snr_step"):
        NormalizedMLPOptimizer(snr_step=True, decays=(0.5, 0.99))
    with pytest.raises(ValueError, match="snr_step"):
        NormalizedMLPOptimizer(snr_step="yes")


# --------------------------------------------------------------------------- radial_gain

def _radial_reference(grads_seq, params, beta, radial_range, shrink):
    """numpy: each step is the plain rule's (radial_gain=0, same features) with its part along w scaled by
    exp(r), r <- clip(r + beta * k * tanh(cos(g, w) * sqrt(n)) * sign(c_last), -range, 0)."""
    import numpy as np
    plain = rule_(hypergradient_shrink=shrink)
    state = plain.init(params)
    r = {k: 0.0 for k in params}
    c_last = {k: 0.0 for k in params}
    out = []
    for g in grads_seq:
        with torch.no_grad():
            new, state = plain.update(g, state, params)
        nxt = {}
        for k in params:
            w, step, gk = params[k].numpy(), (params[k] - new[k]).numpy(), g[k].numpy()
            if w.ndim == 0:
                nxt[k] = new[k]
                continue
            w_hat = w / np.linalg.norm(w)
            z = (gk * w_hat).sum() * math.sqrt(w.size) / np.linalg.norm(gk)
            sig = math.tanh(z) * np.sign(c_last[k])
            sig = shrink * sig if sig < 0 else sig
            r[k] = min(max(r[k] + beta * sig, -radial_range), 0.0)
            c = (step * w_hat).sum()
            c_last[k] = c
            nxt[k] = torch.from_numpy(w - (step + (math.exp(r[k]) - 1) * c * w_hat))
        params = nxt
        out.append(params)
    return out, r


def test_radial_gain_scales_the_part_of_each_step_along_the_tensor_by_its_adapted_factor():
    """Six updates with random gradients, against the numpy reference built on the plain rule's steps;
    scalars (no direction to split off) take the plain step."""
    params = tree(0)
    grads_seq = [tree(20 + i) for i in range(6)]
    rule = rule_(radial_gain=0.4, radial_range=1.5, hypergradient_shrink=2.0)
    ref, r = _radial_reference(grads_seq, params, 0.4, 1.5, 2.0)
    state, p = rule.init(params), params
    with torch.no_grad():
        for g, expect in zip(grads_seq, ref):
            p, state = rule.update(g, state, p)
            for k in SHAPES:
                torch.testing.assert_close(p[k], expect[k], rtol=1e-10, atol=1e-13)
    assert any(v < 0 for v in r.values())   # the factor moved (the test would not see a no-op)
    for k in ("matrix", "bias", "conv"):
        assert torch.allclose(state["log_radial"][k], torch.full(SHAPES[k], r[k], dtype=torch.float64))


def _grower(**kw) -> NormalizedMLPOptimizer:
    """A rule whose direction is minus the normalised parameter feature: every step grows the tensor."""
    rule = rule_(magnitude=False, **kw)
    with torch.no_grad():
        rule.skip.zero_()
        rule.skip[rule.feature_names().index("w")] = -1.0
        rule.layers[-1].weight.zero_()
    return rule


def test_radial_gain_undoes_growth_the_gradient_opposes_and_keeps_growth_it_favours():
    """A rule that only grows the tensor: where the loss rises with |w| (g along w) r falls to -range and the
    step's radial part is exp(range) times smaller than the plain rule's; where the loss falls with |w| (g
    along -w) r stays at 0 and the steps are the plain rule's."""
    rule, plain = _grower(radial_gain=0.3, radial_range=2.0), _grower()
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    for sign, expect in ((1.0, -2.0), (-1.0, 0.0)):
        p, state = {"w": w0}, rule.init({"w": w0})
        with torch.no_grad():
            for _ in range(40):
                g = {"w": sign * p["w"] + 0.05 * torch.randn(6, 7, generator=gen, dtype=torch.float64)}
                before, before_state = p["w"], state
                p, state = rule.update(g, state, p)
            plain_new, _ = plain.update(g, before_state, {"w": before})
        assert float(state["log_radial"]["w"].max()) == pytest.approx(expect, abs=1e-12), sign
        assert float(state["log_radial"]["w"].min()) == pytest.approx(expect, abs=1e-12), sign
        w_hat = before / before.norm()
        radial, plain_radial = ((before - p["w"]) * w_hat).sum(), ((before - plain_new["w"]) * w_hat).sum()
        assert float(plain_radial) < 0   # the plain step grows the tensor
        assert float(radial / plain_radial) == pytest.approx(math.exp(expect), rel=1e-9), sign


def test_radial_gain_config_round_trip_and_errors(tmp_path):
    rule = make_learned_rule("celo", radial_gain=0.1, radial_range=3.0, hypergradient=0.1)
    back = learned_opt.load(save_checkpoint(tmp_path / "radial.pt", rule, 0, {}))
    assert back.config() == rule.config() and back.radial_gain == 0.1 and back.radial_range == 3.0
    assert "log_radial" in rule.init({"w": torch.ones(2, 2)}) and "log_radial" not in make_learned_rule("celo").init(
        {"w": torch.ones(2, 2)})
    for bad in ({"radial_gain": -0.1}, {"radial_range": 0.0}, {"radial_gain": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            NormalizedMLPOptimizer(**bad)
