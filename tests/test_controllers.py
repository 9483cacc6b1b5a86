"""Online controllers (``learned_opt/optimizers/controllers/``): each against a numpy reference of its
docstring formula, their behaviour on the problems they were made for, composition over any rule
(``baselines.Adam`` and the celo core) through ``unroll``, the evaluation and the ``torch.optim`` adapter,
per-tensor state, populations, ``vmap`` and the members' path, meta-gradients of learned gains, files, errors."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

import baselines as B
import learned_opt
from learned_opt.optimizers import Celo, Controlled, make_learned_rule
from learned_opt.optimizers.controllers import CONTROLLERS, HypergradientStepSize, RadialGain, SNRScale
from learned_opt.optimizers.files import save_checkpoint
from learned_opt.tasks import make_task
from learned_opt.unroll import init_state, unroll

SHAPES = {"matrix": (5, 4), "bias": (4,), "conv": (3, 2, 3, 3), "scalar": ()}
ALL = [{"name": "snr"}, {"name": "radial", "gain": 0.3, "range": 1.5, "shrink": 2.0},
       {"name": "hypergradient", "gain": 0.2, "momentum": 0.6, "shrink": 2.5, "floor": -1.0}]


def tree(seed: int, scale: float = 1.0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(s, generator=g, dtype=dtype) for k, s in SHAPES.items()}


def celo(controllers=(), **kw) -> Controlled:
    torch.manual_seed(0)
    return make_learned_rule("celo", controllers=list(controllers), **kw).double()


def run(rule, grads_seq, params, horizon=None):
    state = init_state(rule, params, horizon)
    with torch.no_grad():
        for g in grads_seq:
            params, state = rule.update(g, state, params)
    return params, state


def cos_sqrt_n(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    return float((a @ b) * np.sqrt(a.size) / np.sqrt((a @ a) * (b @ b) + 1e-20))


# --------------------------------------------------------------------------- each controller against its formula


@pytest.mark.parametrize("mu, shrink, floor", [(0.0, 1.0, None), (0.0, 3.0, None), (0.7, 2.0, None), (0.0, 3.0, -0.5)])
def test_hypergradient_follows_its_formula(mu, shrink, floor):
    """One update at t = 3 from a crafted state: l moves by the gain times the (bias-corrected, smoothed)
    tanh of cos(g, last) * sqrt(n), negatives times shrink, clipped to [floor or -R, R]; the step is the
    incoming one times exp(l); last_dir keeps the incoming step at unit RMS."""
    c = HypergradientStepSize(gain=0.3, range=2.0, momentum=mu, shrink=shrink, floor=floor).double().requires_grad_(False)
    steps, grads, params, last = tree(0, 1e-3), tree(1), tree(2), tree(3)
    last["bias"], last["conv"] = -grads["bias"], grads["conv"]    # one opposed, one aligned
    start = {"matrix": 0.1, "bias": -0.4, "conv": 0.4, "scalar": 0.0}
    velocity = {"matrix": -0.2, "bias": 0.3, "conv": 0.1, "scalar": 0.0}
    state = c.init(params)
    assert set(state) == set(c.keys) and state["log_step"]["matrix"].shape == (1, 1)
    state["last_dir"] = last
    state["log_step"] = {k: torch.full_like(v, start[k]) for k, v in state["log_step"].items()}
    if mu:
        state["velocity"] = {k: torch.full_like(v, velocity[k]) for k, v in state["velocity"].items()}
    out, new = c.apply(steps, grads, params, state, 3)
    gain = math.exp(float(c.log_gain.detach()))
    for k in SHAPES:
        signal = math.tanh(cos_sqrt_n(grads[k].numpy(), last[k].numpy()))
        if mu:
            v = mu * velocity[k] + (1 - mu) * signal
            assert float(new["velocity"][k]) == pytest.approx(v, abs=1e-14)
            signal = v / (1 - mu ** 3)
        want = float(np.clip(start[k] + gain * (shrink * signal if signal < 0 else signal),
                             -2.0 if floor is None else floor, 2.0))
        assert new["log_step"][k].numel() == 1 and float(new["log_step"][k]) == pytest.approx(want, abs=1e-13)
        torch.testing.assert_close(out[k], steps[k] * math.exp(want), rtol=1e-12, atol=0)
        s = steps[k].numpy()
        torch.testing.assert_close(new["last_dir"][k], torch.as_tensor(s / np.sqrt(np.mean(s * s))), rtol=1e-12,
                                   atol=0)
    if floor is not None:
        assert float(new["log_step"]["bias"]) == pytest.approx(floor, abs=1e-15)


def _radial_reference(steps, grads, params, state, gain, rng, shrink):
    out, r_new, c_new = {}, {}, {}
    for k in steps:
        s, g, w = steps[k].numpy(), grads[k].numpy(), params[k].numpy()
        r, last = float(state["log_radial"][k]), float(state["last_radial"][k])
        if s.ndim == 0:
            out[k], r_new[k], c_new[k] = s, r, last
            continue
        w_hat = w / np.sqrt((w * w).sum() + 1e-20)
        a = math.tanh(cos_sqrt_n(g, w)) * np.sign(last)
        a = shrink * a if a < 0 else a
        r = float(np.clip(r + gain * a, -rng, 0.0))
        c = float((s * w_hat).sum())
        out[k], r_new[k], c_new[k] = s + (math.exp(r) - 1) * c * w_hat, r, c
    return out, r_new, c_new


def test_radial_follows_its_formula():
    c = RadialGain(gain=0.4, range=1.5, shrink=2.0).double()
    steps, grads, params = tree(0, 1e-3), tree(1), tree(2)
    state = c.init(params)
    state["log_radial"] = {k: torch.full_like(v, -0.3) for k, v in state["log_radial"].items()}
    state["last_radial"] = {k: torch.full_like(v, x) for (k, v), x in zip(state["last_radial"].items(), (1, -1, 1, 1))}
    out, new = c.apply(steps, grads, params, state, 5)
    want, r, cc = _radial_reference(steps, grads, params, state, 0.4, 1.5, 2.0)
    for k in SHAPES:
        torch.testing.assert_close(out[k], torch.as_tensor(want[k]), rtol=1e-12, atol=1e-18)
        assert float(new["log_radial"][k]) == pytest.approx(r[k], abs=1e-14)
        assert float(new["last_radial"][k]) == pytest.approx(cc[k], rel=1e-12, abs=1e-20)
    assert len({round(v, 6) for v in r.values()}) > 1        # the factor moved, per tensor


def test_snr_follows_its_formula():
    c = SNRScale().double()
    steps, grads, params = tree(0, 1e-3), tree(1), tree(2)
    state = {"m": tree(5), "v": {k: v ** 2 for k, v in tree(6).items()}}
    out, new = c.apply(steps, grads, params, state, 4)
    for k in SHAPES:
        m = 0.9 * state["m"][k].numpy() + 0.1 * grads[k].numpy()
        v = 0.999 * state["v"][k].numpy() + 0.001 * grads[k].numpy() ** 2
        factor = np.sqrt(np.mean(m ** 2) / (1 - 0.9 ** 5) ** 2 / (np.mean(v) / (1 - 0.999 ** 5)))
        torch.testing.assert_close(out[k], steps[k] * float(factor), rtol=1e-10, atol=0)
        torch.testing.assert_close(new["m"][k], torch.as_tensor(m))


# --------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("step_mult, sign", [(1e-4, 1), (1.5, -1)])
def test_hypergradient_grows_a_too_small_step_and_shrinks_an_overshooting_one(step_mult, sign):
    """Full-batch quadratic 0.5 |A w|^2: steps far below the curvature's scale keep the gradient aligned with
    the last step (l rises, the loss falls faster than without); steps that overshoot turn it (l falls)."""
    A = torch.diag(torch.linspace(0.5, 2.0, 20, dtype=torch.float64))
    finals = {}
    for ctrl in ([], [{"name": "hypergradient", "gain": 0.2}]):
        rule = celo(ctrl, step_mult=step_mult, magnitude=False)
        params = {"w": torch.ones(20, 1, dtype=torch.float64)}
        state = rule.init(params)
        with torch.no_grad():
            for _ in range(40):
                params, state = rule.update({"w": A.T @ A @ params["w"]}, state, params)
        finals[bool(ctrl)] = float(0.5 * (A @ params["w"]).pow(2).sum())
        if ctrl:
            assert sign * float(state["hypergradient.log_step"]["w"]) > 1.0
    if sign > 0:
        assert finals[True] < 0.99 * finals[False]


def test_hypergradient_shrink_drifts_down_on_pure_noise_and_the_floor_stops_it():
    """Pure isotropic noise gradients: z is about N(0, 1), so the symmetric rule's l has no drift, while with
    shrink k it falls by about gain * (k - 1) / 2 * E|tanh Z| per update (E|tanh Z| by quadrature); a floor
    F holds l at F."""
    zs = np.linspace(-10, 10, 200001)
    e_abs_tanh = float(np.sum(np.abs(np.tanh(zs)) * np.exp(-zs ** 2 / 2)) * (zs[1] - zs[0]) / math.sqrt(2 * math.pi))
    params = {"w": torch.ones(30, 40, dtype=torch.float64)}
    gen = torch.Generator().manual_seed(0)
    noise = [torch.randn(30, 40, generator=gen, dtype=torch.float64) for _ in range(400)]
    finals = {}
    for shrink, floor, r in ((1.0, None, 100.0), (2.0, None, 100.0), (2.0, -1.0, 3.0)):
        rule = celo([{"name": "hypergradient", "gain": 0.05, "range": r, "shrink": shrink, "floor": floor}])
        state, trace = rule.init(params), []
        with torch.no_grad():
            for g in noise:
                _, state = rule.update({"w": g}, state, params)
                trace.append(float(state["hypergradient.log_step"]["w"]))
        finals[shrink, floor] = trace
    gain = math.exp(float(torch.tensor(math.log(0.05))))   # the learned gain is stored as a float32 log
    drift, n = -gain * (2.0 - 1) / 2 * e_abs_tanh, len(noise) - 1
    assert abs(finals[1.0, None][-1]) < 0.25 * abs(drift) * n
    assert finals[2.0, None][-1] == pytest.approx(drift * n, rel=0.15)
    floored = finals[2.0, -1.0]
    assert min(floored) == pytest.approx(-1.0, abs=1e-12)
    assert floored[:10] == pytest.approx(finals[2.0, None][:10], abs=1e-12)


def test_radial_undoes_growth_the_gradient_opposes_and_keeps_growth_it_favours():
    """A core whose steps only grow the tensor: where the loss rises with |w| (g along w) r falls to -range
    and the radial part is exp(range) times smaller; where it falls with |w| r stays at 0 (the core's step)."""
    def grower(ctrl):
        rule = celo(ctrl, magnitude=False)
        core = rule.core if isinstance(rule, Controlled) else rule
        with torch.no_grad():
            core.skip.zero_()
            core.skip[core.feature_names().index("w")] = -1.0
            core.layers[-1].weight.zero_()
        return rule
    rule, plain = grower([{"name": "radial", "gain": 0.3, "range": 2.0}]), grower([])
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    for sign, expect in ((1.0, -2.0), (-1.0, 0.0)):
        p, state = {"w": w0}, rule.init({"w": w0})
        with torch.no_grad():
            for _ in range(40):
                g = {"w": sign * p["w"] + 0.05 * torch.randn(6, 7, generator=gen, dtype=torch.float64)}
                before, before_state = p["w"], state
                p, state = rule.update(g, state, p)
            plain_new, _ = plain.update(g, {k: v for k, v in before_state.items() if not k.startswith(("snr.", "radial.", "hypergradient."))}, {"w": before})
        assert float(state["radial.log_radial"]["w"]) == pytest.approx(expect, abs=1e-12), sign
        w_hat = before / before.norm()
        radial, plain_radial = ((before - p["w"]) * w_hat).sum(), ((before - plain_new["w"]) * w_hat).sum()
        assert float(plain_radial) < 0
        assert float(radial / plain_radial) == pytest.approx(math.exp(expect), rel=1e-9), sign


def test_snr_is_one_for_a_steady_gradient_and_small_for_noise_and_scale_free():
    rule, plain = celo([{"name": "snr"}], magnitude=False), celo(magnitude=False)
    params = {"w": torch.ones(30, 40, dtype=torch.float64)}
    steady = [{"w": torch.full((30, 40), 0.3, dtype=torch.float64) + 0.01 * torch.arange(1200.).view(30, 40)}] * 5
    torch.testing.assert_close(run(rule, steady, params)[0]["w"], run(plain, steady, params)[0]["w"], rtol=1e-9,
                               atol=1e-12)
    gen = torch.Generator().manual_seed(1)
    noise = [torch.randn(30, 40, generator=gen, dtype=torch.float64) for _ in range(3000)]
    for scale in (1.0, 1e4):
        state = rule.init(params)
        with torch.no_grad():
            for g in noise[:-1]:
                _, state = rule.update({"w": scale * g}, state, params)
            a, _ = rule.update({"w": scale * noise[-1]}, state, params)
            b, _ = plain.update({"w": scale * noise[-1]}, {k: v for k, v in state.items() if not k.startswith(("snr.", "radial.", "hypergradient."))}, params)
        factor = float((params["w"] - a["w"]).norm() / (params["w"] - b["w"]).norm())
        assert factor == pytest.approx(math.sqrt(0.1 / 1.9), rel=0.15), (scale, factor)


# --------------------------------------------------------------------------- any rule: baselines.Adam


ADAM_CTRL = [{"name": "radial", "gain": 0.1, "shrink": 2.0}, {"name": "hypergradient", "gain": 0.1, "shrink": 2.0}]


def test_adam_with_controllers_steps_like_adam_then_adapts():
    """The first update has no last step (signal 0, l = 0) and, with radial's c_last = 0, no radial change:
    exactly Adam's step. Later updates are Adam's times exp(l) per tensor (radial off here)."""
    rule = Controlled(B.Adam(lr=1e-2), [{"name": "hypergradient", "gain": 0.3}]).double()
    adam = B.Adam(lr=1e-2)
    params, seq = tree(0), [tree(1 + i) for i in range(4)]
    s_rule, s_adam, p_rule, p_adam = rule.init(params), adam.init(params), params, params
    with torch.no_grad():
        for i, g in enumerate(seq):
            new_rule, s_rule = rule.update(g, s_rule, p_rule)
            new_adam, s_adam = adam.update(g, s_adam, p_rule)   # Adam's own step from the same point
            for k in SHAPES:
                factor = math.exp(float(s_rule["hypergradient.log_step"][k]))
                torch.testing.assert_close(p_rule[k] - new_rule[k], (p_rule[k] - new_adam[k]) * factor,
                                           rtol=1e-9, atol=1e-15)
                if i == 0:
                    assert factor == 1.0
            p_rule = new_rule
    assert any(float(v) != 0 for v in s_rule["hypergradient.log_step"].values())


def test_adam_with_controllers_trains_through_unroll_and_the_adapter():
    task = make_task("mlp", dataset="digits", hidden_sizes=[32], activation="relu", batch_size=64)
    rule = Controlled(B.Adam(lr=3e-3), ADAM_CTRL)
    g = torch.Generator().manual_seed(0)
    params = task.init_params(g)
    with torch.no_grad():
        res = unroll(task, rule, params, rule.init(params), 80, g)
    assert not res.diverged and float(res.losses[-10:].mean()) < 0.5 * float(res.losses[:3].mean())
    # the torch.optim adapter: the same steps as the pure rule on the same model and gradients
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = B.RuleOptimizer(model.parameters(), Controlled(B.Adam(lr=1e-2), ADAM_CTRL))
    names = [n for n, _ in model.named_parameters()]
    pure, p = Controlled(B.Adam(lr=1e-2), ADAM_CTRL), {n: v.detach().clone() for n, v in model.named_parameters()}
    state = pure.init(p)
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    for _ in range(5):
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        grads = {n: v.grad.clone() for n, v in zip(names, model.parameters())}
        opt.step()
        p, state = pure.update(grads, state, p)
        for n, v in zip(names, model.parameters()):
            torch.testing.assert_close(v.detach(), p[n], rtol=1e-6, atol=1e-7)
    per_tensor = opt.state[next(model.parameters())]
    assert per_tensor["hypergradient.log_step"].shape == (1, 1) and per_tensor["radial.last_radial"].shape == (1, 1)


def test_adam_with_controllers_in_an_evaluation_line_up():
    from learned_opt.evaluation.suite import parse_optimizers
    specs = parse_optimizers({"adam_ctrl": {"rule": "adam", "lr": 0.001, "controllers": ADAM_CTRL},
                              "adam": {"rule": "adam", "lr": 0.001}})
    rule = specs[0].build(torch.device("cpu"))
    assert isinstance(rule, Controlled) and isinstance(rule.core, B.Adam) and list(rule.controllers) == ["radial",
                                                                                                          "hypergradient"]
    assert rule.core.lr == 0.001 and not isinstance(specs[1].build(torch.device("cpu")), Controlled)
    with pytest.raises(ValueError, match="controllers"):
        parse_optimizers({"x": {"rule": "adam", "controllers": [{"name": "nope"}]}})


# --------------------------------------------------------------------------- state, populations, members


def test_state_is_per_tensor_and_the_shipped_default_holds_eight_floats_per_parameter():
    rule = learned_opt.load("celo")
    params = {"w": torch.zeros(20, 30), "b": torch.zeros(30), "s": torch.zeros(())}
    state = rule.init(params)
    floats = sum(v.numel() for entry in state.values() if isinstance(entry, dict) for v in entry.values())
    n = sum(p.numel() for p in params.values())
    per_tensor = 3 * 3   # log_step, log_radial, last_radial for each of the 3 tensors
    assert floats == 8 * n + per_tensor
    assert state["hypergradient.log_step"]["w"].shape == (1, 1) and state["radial.log_radial"]["b"].shape == (1,)


def test_population_dim_equals_independent_problems():
    rule = celo(ALL, step_mult=0.1)
    members = [tree(0), tree(1)]
    grads = [[tree(2), tree(3), tree(6)], [tree(4, 100.0), tree(5, 100.0), tree(7, 100.0)]]
    singles = [run(rule, grads[i], members[i], horizon=7)[0] for i in range(2)]
    pop = copy.deepcopy(rule)
    stack = lambda trees: {k: torch.stack([t[k] for t in trees]) for k in trees[0]}  # noqa: E731
    state = {k: (stack([v, v]) if isinstance(v, dict) else v) for k, v in pop.init(members[0], horizon=7).items()}
    state = {k: ({n: torch.zeros_like(t) for n, t in v.items()} if isinstance(v, dict) else v) for k, v in state.items()}
    pop.population_dim = 0
    assert pop.core.population_dim == 0 and all(c.population_dim == 0 for c in pop.controllers.values())
    p = stack(members)
    with torch.no_grad():
        for s in range(3):
            p, state = pop.update(stack([grads[0][s], grads[1][s]]), state, p)
    del pop.population_dim
    assert pop.core.population_dim is None
    for i in range(2):
        for k in SHAPES:
            torch.testing.assert_close(p[k][i], singles[i][k], rtol=1e-11, atol=1e-14)


class _UpdateCall(nn.Module):
    def __init__(self, rule):
        super().__init__()
        self.rule = rule

    def forward(self, grads, tensors, params, step: int):
        new, new_state = self.rule.update(grads, {"step": step, **tensors}, params)
        return new, {k: v for k, v in new_state.items() if isinstance(v, dict)}


def _learn_all(rule: Controlled) -> Controlled:
    for c in rule.controllers.values():   # learned gains, so the members differ in them too
        if hasattr(c, "gain_value") and not c.learn_gain:
            c.learn_gain = True
            c.log_gain = nn.Parameter(torch.tensor(math.log(c.gain_value), dtype=torch.float64))
    return rule


def test_vmap_and_the_members_path_equal_separate_updates():
    rule = _learn_all(celo(ALL, step_mult=0.05))
    call = _UpdateCall(rule)
    base = {k: v.detach() for k, v in call.named_parameters()}
    assert "rule.controllers.radial.log_gain" in base and "rule.controllers.hypergradient.log_gain" in base
    gen = torch.Generator().manual_seed(7)
    metas = [{k: v + 0.05 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in base.items()}
             for _ in range(3)]
    stacked = {k: torch.stack([m[k] for m in metas]) for k in base}
    params = [tree(20 + i) for i in range(3)]
    grads = [[tree(30 + i), tree(40 + i)] for i in range(3)]
    separate = []
    for i in range(3):
        p, state = params[i], rule.init(params[i])
        for s in range(2):
            p, tensors = functional_call(call, metas[i], (grads[i][s], {k: v for k, v in state.items() if k != "step"},
                                                          p, s))
            state = {"step": s + 1, **tensors}
        separate.append(p)
    stack = lambda trees: {k: torch.stack([t[k] for t in trees]) for k in trees[0]}  # noqa: E731
    p, tensors = stack(params), {k: stack([rule.init(params[i])[k] for i in range(3)])
                                 for k in rule.init(params[0]) if k != "step"}
    p_m, state_m = stack(params), {"step": 0, **tensors}
    with torch.no_grad():
        for s in range(2):
            g = stack([grads[i][s] for i in range(3)])
            p, tensors = vmap(lambda m, g_, t, p_: functional_call(call, m, (g_, t, p_, s)))(stacked, g, tensors, p)
            p_m, state_m = rule.update_members({k[len("rule."):]: v for k, v in stacked.items()}, g, state_m, p_m)
    for i in range(3):
        for k in SHAPES:
            torch.testing.assert_close(p[k][i], separate[i][k], rtol=1e-11, atol=1e-14)
            torch.testing.assert_close(p_m[k][i], separate[i][k], rtol=1e-10, atol=1e-13)
    assert not torch.equal(separate[0]["matrix"], separate[1]["matrix"])


def test_learned_gains_get_meta_gradients_that_pass_gradcheck():
    torch.manual_seed(1)
    rule = _learn_all(make_learned_rule("celo", hidden_sizes=[3], decays=[0.9], rms_decays=[0.999],
                                        step_timescales=[3], controllers=ALL).double())
    call = _UpdateCall(rule)
    names = [n for n, _ in call.named_parameters()]
    gen = torch.Generator().manual_seed(2)
    shapes = {"w": (3, 2), "b": (2,)}
    params = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    grads = [{k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()} for _ in range(3)]

    def f(*metas):
        p, state = params, rule.init(params)
        for s, g in enumerate(grads):
            p, tensors = functional_call(call, dict(zip(names, metas)),
                                         (g, {k: v for k, v in state.items() if k != "step"}, p, s))
            state = {"step": s + 1, **tensors}
        return tuple(p[k] for k in shapes)

    inputs = tuple(p.detach().clone().requires_grad_() for p in call.parameters())
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


# --------------------------------------------------------------------------- files and errors


def test_file_round_trip_of_a_controlled_rule_with_a_hand_crafted_core(tmp_path):
    for rule in (Controlled(B.Adam(lr=3e-3, betas=(0.8, 0.99)), ADAM_CTRL), celo(ALL).float()):
        path = save_checkpoint(tmp_path / "r.pt", rule, 0, {})
        loaded = learned_opt.load(path)
        assert loaded.config() == rule.config()
        params, grads = tree(0, dtype=torch.float32), tree(1, dtype=torch.float32)
        a, _ = rule.update(grads, rule.init(params), params)
        b, _ = loaded.update(grads, loaded.init(params), params)
        for k in params:
            assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("controllers, match", [
    ([{"name": "hypergradient"}, {"name": "hypergradient"}], "once"), ([{"name": "momentum"}], "unknown controller"),
    ([{"gain": 0.1}], "name"), ([{"name": "radial", "gain": 0.0}], "radial.gain"),
    ([{"name": "hypergradient", "floor": -5.0}], "hypergradient.floor"),
    ([{"name": "hypergradient", "momentum": 1.0}], "hypergradient.momentum"),
    ([{"name": "snr", "beta1": 1.5}], "snr.beta1"), ("radial", "controllers"),
    ({"radial": {"gain": 0.1}}, "enabled: true|false"),
])
def test_bad_controllers_are_clear_errors(controllers, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make_learned_rule("celo", controllers=controllers)


def test_the_config_groups_mapping_switches_controllers_on_in_order():
    rule = make_learned_rule("celo", controllers={"snr": {"enabled": False}, "radial": {"enabled": True, "gain": 0.2},
                                                  "hypergradient": {"enabled": True, "shrink": 2.0}})
    assert list(rule.controllers) == ["radial", "hypergradient"] and rule.controllers["radial"].gain_value == 0.2
    assert isinstance(make_learned_rule("celo", controllers={"radial": {"enabled": False}}), Celo)
    assert list(CONTROLLERS) == ["snr", "radial", "hypergradient"]


# --------------------------------------------------------------------------- meta-training with controllers in place


@pytest.mark.parametrize("estimator", ["bptt", "pes"])
def test_meta_training_learns_the_controllers_gains_and_resumes(tmp_path, estimator):
    """The config group's form through the trainer: the gains are meta-parameters (they move), the file loads
    back as the same Controlled rule, and a resumed run continues from the saved state."""
    from learned_opt.meta import meta_train
    from learned_opt.optimizers.files import load_checkpoint
    cfg = {"seed": 0, "device": "cpu", "progress": False, "checkpoint_every": 2, "distributed": False,
           "optimizer": {"name": "celo", "hidden_sizes": [4],
                         "controllers": {"snr": {"enabled": False},
                                         "radial": {"enabled": True, "gain": 0.1, "shrink": 2.0, "learn_gain": True},
                                         "hypergradient": {"enabled": True, "gain": 0.1, "shrink": 2.0}}},
           "family": {"name": "mlp_family", "datasets": ["digits"], "widths": [8], "depths": [1], "batch_size": 32},
           "meta": {"estimator": estimator, "steps": 3, "horizon": 12, "truncation": 4, "tasks_per_step": 2,
                    "optimizer": "adam", "lr": 0.05, "clip_grad_norm": None, "meta_loss": "log_mean"},
           "pes": {"std": 0.05, "pairs": 1}, "validation": {"every": 0}, "wandb": {"mode": "disabled"}}
    meta_train(copy.deepcopy(cfg), tmp_path / "run")
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ck["rule"]["name"] == "controlled"
    for name in ("controllers.radial.log_gain", "controllers.hypergradient.log_gain"):
        assert float(ck["meta_params"][name]) != pytest.approx(math.log(0.1), abs=1e-7), name
    rule = learned_opt.load(tmp_path / "run" / "checkpoint.pt")
    assert list(rule.controllers) == ["radial", "hypergradient"] and rule.controllers["radial"].learn_gain
    meta_train({**copy.deepcopy(cfg), "meta": {**cfg["meta"], "steps": 5}}, tmp_path / "run", resume=True)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["meta_step"] == 5
