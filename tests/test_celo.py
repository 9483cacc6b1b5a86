"""The celo core (``learned_opt/optimizers/celo.py``): the per-tensor normalisation, its invariances, weight
decay, horizon features, batched populations, ``torch.func.vmap`` over meta-parameters, the members' path,
meta-gradients, files and errors. Its controllers are tested in ``tests/test_controllers.py``.

The generic learned-rule tests (purity, shapes, adapter, config round trip, finite-difference
meta-gradients on a quadratic) run on it too, from ``tests/test_learned_rules.py``."""
from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

import learned_opt
from learned_opt.optimizers import LEARNED_RULES, Celo, make_learned_rule
from learned_opt.optimizers.files import save_checkpoint
from learned_opt.tasks import make_task
from learned_opt.unroll import unroll

SHAPES = {"matrix": (5, 4), "bias": (4,), "conv": (3, 2, 3, 3), "scalar": ()}


def rule_(**kw) -> Celo:
    torch.manual_seed(0)
    return Celo(**kw).double()


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


def test_registered_as_celo_with_at_most_a_dozen_options():
    assert LEARNED_RULES["celo"] is Celo
    assert len(inspect.signature(Celo.__init__).parameters) - 1 <= 12
    rule = make_learned_rule("celo")
    from learned_opt.optimizers.fused import kernel_available
    assert rule.hidden_sizes == [8, 8] and rule.hparam_names == ("lr",)
    assert rule.numeric_hparams() is kernel_available()[0]   # the adapter's in-place path: the fused step
    assert rule.num_inputs == len(rule.feature_names()) == 2 + 5 + 2 * 6 + 5 + 2
    assert rule.feature_names()[rule.init_feature_index()] == "m_0.9/sqrt(v_0.999)"
    assert {n for n, _ in rule.named_parameters()} == {
        "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "layers.2.weight",
        "layers.2.bias", "skip", "log_scale"}
    fixed = make_learned_rule("celo", learn_scale=False)
    assert "log_scale" in fixed.state_dict() and not any("scale" in n for n, _ in fixed.named_parameters())
    assert set(rule.init({"w": torch.zeros(3, 2)})) == {"step", *rule.momentum_keys, *rule.rms_keys}   # 7 floats


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


def test_weight_decay_is_decoupled_and_follows_the_formula():
    plain, decayed = rule_(step_mult=0.01, lr=0.5), rule_(step_mult=0.01, lr=0.5, weight_decay=0.1)
    decayed.load_state_dict(plain.state_dict())
    params, grads = tree(0), tree(1)
    a, _ = plain.update(grads, plain.init(params), params)
    b, _ = decayed.update(grads, decayed.init(params), params)
    for k in params:
        torch.testing.assert_close(b[k], a[k] - 0.01 * 0.5 * 0.1 * params[k], rtol=1e-12, atol=1e-15)


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
    rule = Celo(step_mult=3e-3)
    g = torch.Generator().manual_seed(0)
    params = task.init_params(g)
    with torch.no_grad():
        res = unroll(task, rule, params, rule.init(params, horizon=60), 60, g)
    assert not res.diverged and float(res.losses[-10:].mean()) < 0.5 * float(res.losses[:3].mean())



def test_step_does_not_depend_on_the_gradients_scale():
    """Features and output are normalised: scaling every gradient by c leaves the steps alone, up to the
    1e-20 in the normalisations (against the mean square ~1e-12 of the slowest momentum after one step at
    c = 1e-3: 1e-8 relative)."""
    rule = rule_()
    params = tree(0)
    seq = [tree(s) for s in (1, 2, 3)]
    ref, ref_state = run(rule, seq, params)
    for c in (1e-3, 1e3):
        out, state = run(rule, [{k: c * v for k, v in g.items()} for g in seq], params)
        for k in params:
            torch.testing.assert_close(out[k] - params[k], ref[k] - params[k], atol=1e-12, rtol=1e-6)
        torch.testing.assert_close(state["rms_0.95"]["matrix"], c * c * ref_state["rms_0.95"]["matrix"])


def test_steps_is_update_without_the_subtraction():
    rule = rule_(weight_decay=0.3)
    params, grads = tree(0), tree(1)
    steps, s1 = rule.steps(grads, rule.init(params, horizon=9), params)
    new, s2 = rule.update(grads, rule.init(params, horizon=9), params)
    for k in params:
        torch.testing.assert_close(params[k] - steps[k], new[k], rtol=0, atol=0)
    assert s1.keys() == s2.keys() and s1["horizon"] == 9


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


def test_population_dim_equals_independent_problems():
    rule = rule_(step_mult=0.1, weight_decay=0.2)
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




@pytest.mark.parametrize("horizon", [None, 50])
def test_vmap_over_perturbed_meta_parameters_equals_separate_updates(horizon):
    """What an ES/PES estimator does: ``vmap`` of ``functional_call`` over stacked meta-parameter
    sets, with shared inner params (in_dims None) and with one inner trajectory per set (in_dims 0)."""
    rule = rule_(step_mult=0.05)
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

    batched = vmap(lambda m, g, t, p: one_step(m, g, t, p, 0), in_dims=(0, None, None, None))(
        stacked, grads, tensors, params)
    separate = [one_step(m, grads, tensors, params, 0) for m in metas]
    for i, (p_i, t_i) in enumerate(separate):
        for k in SHAPES:
            torch.testing.assert_close(batched[0][k][i], p_i[k], rtol=1e-12, atol=1e-15)
        assert not torch.equal(p_i["matrix"], separate[(i + 1) % 3][0]["matrix"])
    grads2 = {k: torch.stack([tree(10 + i)[k] for i in range(3)]) for k in SHAPES}
    batched2 = vmap(lambda m, g, t, p: one_step(m, g, t, p, 1))(stacked, grads2, batched[1], batched[0])
    for i, (p_i, t_i) in enumerate(separate):
        p2, t2 = one_step(metas[i], {k: v[i] for k, v in grads2.items()}, t_i, p_i, 1)
        for k in SHAPES:
            torch.testing.assert_close(batched2[0][k][i], p2[k], rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(batched2[1]["rms_0.999"][k][i], t2["rms_0.999"][k], rtol=1e-12, atol=0)


def test_members_path_equals_separate_updates():
    """update_members (the ES estimators' path under no_grad) against each member's own update."""
    rule = rule_(step_mult=0.05)
    base = {k: v.detach() for k, v in rule.named_parameters()}
    gen = torch.Generator().manual_seed(3)
    metas = [{k: v + 0.05 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in base.items()}
             for _ in range(3)]
    members = [tree(20 + i) for i in range(3)]
    grads = [tree(30 + i) for i in range(3)]
    stack = lambda trees: {k: torch.stack([t[k] for t in trees]) for k in trees[0]}  # noqa: E731
    with torch.no_grad():
        state = {k: stack([v] * 3) if isinstance(v, dict) else v for k, v in rule.init(members[0], horizon=20).items()}
        state = {k: ({n: torch.zeros_like(t) for n, t in v.items()} if isinstance(v, dict) else v)
                 for k, v in state.items()}
        out, _ = rule.update_members(stack(metas), stack(grads), state, stack(members))
        for i in range(3):
            one = copy.deepcopy(rule)
            one.load_state_dict({**one.state_dict(), **metas[i]})
            want, _ = one.update(grads[i], one.init(members[i], horizon=20), members[i])
            for k in SHAPES:
                torch.testing.assert_close(out[k][i], want[k], rtol=1e-10, atol=1e-13)


def test_meta_gradient_passes_gradcheck():
    """Finite differences (float64) of the params after two updates w.r.t. every meta-parameter."""
    torch.manual_seed(1)
    rule = Celo(hidden_sizes=[4], decays=[0.5, 0.9], rms_decays=[0.999], step_timescales=[3]).double()
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



# --------------------------------------------------------------------------- files and errors


def test_file_round_trip_rebuilds_the_rule(tmp_path):
    rule = make_learned_rule("celo", hidden_sizes=[16, 16], weight_decay=0.01, learn_scale=False, magnitude=False)
    with torch.no_grad():
        for p in rule.parameters():
            p.add_(0.01 * torch.randn_like(p))
        rule.log_scale.fill_(0.2)
    path = save_checkpoint(tmp_path / "celo.pt", rule, 3, {"optimizer": {"name": "celo"}})
    loaded = learned_opt.load(path)
    assert isinstance(loaded, Celo) and loaded.config() == rule.config()
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
    ({"magnitude": "yes"}, "magnitude"), ({"learn_scale": 1}, "learn_scale"), ({"output_norm": None}, "output_norm"),
])
def test_bad_constructor_values_name_the_argument(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Celo(**kwargs)


def test_removed_options_are_gone_and_a_file_that_used_one_names_the_commit(tmp_path):
    for removed in ("bias_rule", "orthogonalize", "relative_step", "magnitude_log_range", "hypergradient"):
        with pytest.raises(TypeError):
            Celo(**{removed: 1})
    rule = make_learned_rule("celo", hidden_sizes=[4])
    path = save_checkpoint(tmp_path / "old.pt", rule, 0, {})
    ck = torch.load(path, weights_only=True)
    ck["rule"]["config"]["orthogonalize"] = True     # as a candidate of an earlier round wrote it
    del ck["sha256"]
    torch.save(ck, tmp_path / "orth.pt")
    with pytest.raises(learned_opt.optimizers.files.CheckpointError, match=r"orthogonalize.*commit c6c1de9"):
        learned_opt.load(tmp_path / "orth.pt")


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
