"""Meta-gradient estimators (truncated BPTT, truncated ES, PES) against independent references.

The reference problem is the noise-free noisy quadratic: SGD with lr = exp(x) on
L = 1/2 sum_i h_i theta_i^2 from theta_0 ~ N(0, I) has the expected loss after k steps
1/2 sum_i h_i (1 - lr h_i)^(2k) in closed form, so the gradient of the meta-objective with
respect to x, and its Gaussian smoothing (by Gauss-Hermite quadrature), are known exactly.
"""
from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch

from learned_opt.meta import ESTIMATORS, PES, TruncatedBPTT, TruncatedES, meta_train
from learned_opt.meta.checkpoint import load_checkpoint
from learned_opt.optimizers import LearnedSGD, make_learned_rule
from learned_opt.optimizers.batched import MemberRule, meta_vector, unflatten_meta
from learned_opt.tasks.population import PopulationTask
from learned_opt.tasks import make_family
from learned_opt.unroll import unroll

CPU = torch.device("cpu")
FAMILY = make_family("single_task", task="noisy_quadratic", dim=5, decay=1.0, noise=0.0)
X0 = math.log(0.3)


def objective(x: torch.Tensor, steps: int) -> torch.Tensor:
    """Expected mean loss over ``steps`` SGD steps with lr = exp(x) (closed form)."""
    return FAMILY.task.expected_losses(torch.exp(x), steps).mean(-1)


def smoothed_gradient(x: float, sigma: float, steps: int, nodes: int = 40) -> float:
    """d/dx E_z[objective(x + sigma z)], z ~ N(0, 1), by Gauss-Hermite quadrature."""
    t, w = np.polynomial.hermite.hermgauss(nodes)
    xs = torch.tensor(x + math.sqrt(2) * sigma * t, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(objective(xs, steps).sum(), xs)
    return float((torch.tensor(w) * g).sum() / math.sqrt(math.pi))


def sgd_rule() -> LearnedSGD:
    return LearnedSGD(lr=math.exp(X0), momentum=0.0, steps=1)


def make(cls, horizon, truncation, seed=0, **kw):
    return cls(FAMILY, horizon=horizon, truncation=truncation, num_tasks=16, population=16, device=CPU,
               generator=torch.Generator().manual_seed(seed), **{"meta_loss": "mean", **kw})


def test_es_estimates_the_gradient_of_the_gaussian_smoothed_meta_loss():
    K, sigma = 5, 0.3
    est = make(TruncatedES, K, K, std=sigma, pairs=2)
    rule = sgd_rule()
    g = np.array([float(est.estimate(rule).grads[0]) for _ in range(256)])
    reference = smoothed_gradient(X0, sigma, K)
    se = g.std(ddof=1) / math.sqrt(len(g))
    assert abs(g.mean() - reference) < 3 * se, (g.mean(), reference, se)
    # the error of a mean of n estimates shrinks like 1/sqrt(n): RMS error of means of 2 vs of 32
    rms = {n: math.sqrt(np.mean((g.reshape(-1, n).mean(1) - reference) ** 2)) for n in (2, 32)}
    assert 2.0 < rms[2] / rms[32] < 8.0, rms  # sqrt(32 / 2) = 4


def test_pes_agrees_with_the_full_horizon_gradient_while_truncated_es_and_bptt_do_not():
    T, K = 20, 5
    full = smoothed_gradient(X0, 1e-9, T)  # d/dx of the mean loss over the whole horizon
    rule = sgd_rule()
    means = {}
    for name, cls, kw in (("pes", PES, dict(std=0.01, pairs=2)), ("es", TruncatedES, dict(std=0.01, pairs=2)),
                          ("bptt", TruncatedBPTT, {})):
        est = make(cls, T, K, seed=1, **kw)
        # all slots in lockstep: the mean of the T / K estimates of one horizon is one full-horizon sample
        per_horizon = np.array([np.mean([float(est.estimate(rule).grads[0]) for _ in range(T // K)])
                                for _ in range(40)])
        means[name] = (per_horizon.mean(), per_horizon.std(ddof=1) / math.sqrt(len(per_horizon)))
    mean, se = means["pes"]
    assert abs(mean - full) < 3 * se, (means, full)
    for name in ("es", "bptt"):  # short-horizon bias: they see only the lr's effect within a truncation
        mean, se = means[name]
        assert abs(mean - full) > 5 * se and abs(mean - full) > 0.3 * abs(full), (name, means, full)
    truncated = smoothed_gradient(X0, 1e-9, K)  # sanity: the bias is large on this problem
    assert abs(truncated - full) > 0.1


def _roundtrip(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("cls", [TruncatedES, PES])
def test_resume_from_state_dict_continues_bitwise(cls):
    rule = make_learned_rule("mlp", hidden_sizes=[8])
    family = make_family("mlp_family", datasets=["digits"], widths=[8], depths=[1], activations=["tanh"],
                         batch_size=16)
    kw = dict(horizon=6, truncation=2, num_tasks=2, device=CPU, std=0.01, pairs=2, stagger=True)
    a = cls(family, generator=torch.Generator().manual_seed(4), **kw)
    for _ in range(4):
        a.estimate(rule)
    saved = _roundtrip(a.state_dict())
    b = cls(family, generator=torch.Generator().manual_seed(99), **kw)
    b.load_state_dict(saved, rule)
    for _ in range(5):  # crosses resets of the inner problems
        ea, eb = a.estimate(rule), b.estimate(rule)
        assert ea.meta_loss == eb.meta_loss
        for x, y in zip(ea.grads, eb.grads):
            assert torch.equal(x, y)


@pytest.mark.parametrize("cls", [TruncatedES, PES])
def test_a_diverging_particle_is_clipped_and_counted_and_nothing_is_nan(cls):
    # lr 1.5 with perturbations of std 1 in log lr: the particles with lr > 2 blow up on h_1 = 1
    rule = LearnedSGD(lr=1.5, momentum=0.0, steps=1)
    fam = make_family("single_task", task="noisy_quadratic", dim=5, decay=1.0, noise=0.0)
    est = cls(fam, horizon=40, truncation=20, num_tasks=4, population=4, device=CPU,
              generator=torch.Generator().manual_seed(0), std=1.0, pairs=4, divergence_factor=10.0)
    clipped = 0
    for _ in range(4):
        e = est.estimate(rule)
        clipped += e.diverged
        assert e.grads is not None and all(torch.isfinite(g).all() for g in e.grads)
        assert math.isfinite(e.meta_loss) and math.isfinite(e.inner_loss)
        assert e.counted == 4  # clipped particles still count
    assert clipped > 0


def test_meta_parameters_stay_finite_when_particles_diverge(tmp_path):
    cfg = {"seed": 0, "device": "cpu", "progress": False, "checkpoint_every": 0, "distributed": False,
           "optimizer": {"name": "learned_sgd", "lr": 1.5, "momentum": 0.0, "steps": 1},
           "family": {"name": "single_task", "task": "noisy_quadratic", "dim": 5, "noise": 0.0},
           "meta": {"estimator": "pes", "steps": 6, "horizon": 20, "truncation": 5, "tasks_per_step": 2,
                    "optimizer": "adam", "lr": 0.1, "clip_grad_norm": None, "meta_loss": "mean",
                    "divergence_factor": 10.0},
           "pes": {"std": 1.0, "pairs": 4}, "validation": {"every": 0}, "wandb": {"mode": "disabled"}}
    summary = meta_train(cfg, tmp_path / "run")
    assert summary["diverged_truncations"] > 0 and summary["skipped_steps"] == 0
    params = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["meta_params"]
    assert all(torch.isfinite(v).all() for v in params.values())


def run_members(rule, thetas, params, grads):
    """``grads`` applied to the stacked ``params`` by MemberRule under no_grad: (params, state, the MemberRule)."""
    member = MemberRule(rule, thetas)
    with torch.no_grad():
        p, s = params, member.init(params)
        for g in grads:
            p, s = member.update(g, s, p)
    return p, s, member


def run_alone(own, rule, theta, params, grads, i):
    """Member ``i`` updated by ``own`` (a fresh rule of ``rule``'s kind) loaded with ``theta``: (params, state)."""
    own.load_state_dict({**rule.state_dict(), **unflatten_meta(rule, theta)})
    q = {k: v[i] for k, v in params.items()}
    with torch.no_grad():
        st = own.init(q)
        for g in grads:
            q, st = own.update({k: v[i] for k, v in g.items()}, st, q)
    return q, st


CELO_VARIANTS = {"celo": {}, "celo_wide_decay": {"weight_decay": 0.1, "hidden_sizes": [16]},
                 "celo_fixed_scale": {"learn_scale": False, "magnitude": False},
                 "celo_hypergradient": {"controllers": [{"name": "hypergradient", "gain": 0.2}]},
                 "celo_hypergradient_smooth": {"controllers": [{"name": "hypergradient", "gain": 0.2, "momentum": 0.6,
                                                                "shrink": 2.0}]},
                 "celo_floor_snr": {"controllers": [{"name": "snr"}, {"name": "hypergradient", "gain": 0.2,
                                                                      "shrink": 2.0, "floor": -0.5}]},
                 "celo_radial": {"controllers": [{"name": "radial", "gain": 0.3, "shrink": 2.0, "learn_gain": True},
                                                 {"name": "hypergradient", "gain": 0.2, "shrink": 2.0}]},
                 "adam_controlled": {}}


def _variant(name: str):
    if name == "adam_controlled":   # a hand-crafted core: only the controllers' gains are meta-parameters
        from learned_opt.optimizers import Controlled
        import baselines as B
        return Controlled(B.Adam(lr=1e-2), [{"name": "radial", "learn_gain": True}, {"name": "hypergradient"}])
    kind, kwargs = ("celo", CELO_VARIANTS[name]) if name in CELO_VARIANTS else (name, {})
    return make_learned_rule(kind, **kwargs)


@pytest.mark.parametrize("name", ["lstm", "mlp", "learned_adam", *CELO_VARIANTS])
def test_member_rule_equals_each_member_updated_by_its_own_copy_of_the_rule(name):
    """Under no_grad the MLP and celo rules take their native member paths, the others vmap."""
    torch.manual_seed(0)
    rule = _variant(name)
    thetas = meta_vector(rule) + 0.05 * torch.randn(3, meta_vector(rule).numel())
    params = {"w": torch.randn(3, 4, 5), "b": torch.randn(3, 5), "c": torch.randn(3, 2, 3, 2, 2), "s": torch.randn(3)}
    grads = [{k: torch.randn_like(v) for k, v in params.items()} for _ in range(3)]
    p, _, _ = run_members(rule, thetas, params, grads)
    assert vars(rule).get("population_dim") is None and vars(rule).get("_members") is None
    for i in range(3):
        q, _ = run_alone(_variant(name), rule, thetas[i], params, grads, i)
        for k in q:
            torch.testing.assert_close(p[k][i], q[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("block_size,step_scale,dtype", [(8192, "none", torch.float32), (7, "grad_rms", torch.float32),
                                                        (30, "none", torch.float64)])
def test_mlp_native_member_path_equals_each_member_updated_alone(block_size, step_scale, dtype):
    """MLPOptimizer.update_members (what MemberRule runs under no_grad): blocks that split members
    and columns, the grad_rms step scale and float64 params, against each member's own rule."""
    torch.manual_seed(1)
    rule = make_learned_rule("mlp", step_scale=step_scale)
    rule.block_size = block_size
    P = 5
    thetas = meta_vector(rule) + 0.05 * torch.randn(P, meta_vector(rule).numel())
    shapes = {"w": (6, 4), "b": (4,), "v": (3, 2, 2), "s": ()}
    params = {k: torch.randn(P, *s, dtype=dtype) for k, s in shapes.items()}
    grads = [{k: torch.randn(P, *s, dtype=dtype) for k, s in shapes.items()} for _ in range(3)]
    p, s, member = run_members(rule, thetas, params, grads)
    assert member._workspace, "the native path (with its reused buffers) was not taken"
    for i in range(P):
        q, st = run_alone(make_learned_rule("mlp", step_scale=step_scale), rule, thetas[i], params, grads, i)
        for k in q:
            assert p[k].dtype == dtype
            torch.testing.assert_close(p[k][i], q[k], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(s["momentum_0.9"][k][i], st["momentum_0.9"][k], rtol=1e-6, atol=1e-7)


def test_mlp_native_path_sees_meta_parameters_changed_between_steps():
    """The native path keeps the members' prepared weights while the meta-parameters are unchanged: a
    meta-parameter changed in place, or replaced, between two steps must be used at the next step."""
    torch.manual_seed(2)
    rule = make_learned_rule("mlp")
    thetas = meta_vector(rule) + 0.05 * torch.randn(2, meta_vector(rule).numel())
    params = {"w": torch.randn(2, 6, 4)}
    grads = {"w": torch.randn(2, 6, 4)}
    member = MemberRule(rule, thetas.clone())
    with torch.no_grad():
        state = member.init(params)
        member.update(grads, state, params)                          # fills the workspace
        w0 = member.named["layers.0.weight"]
        w0.mul_(1.5)                                                 # in place
        changed, _ = member.update(grads, state, params)
        member.named["layers.1.bias"] = member.named["layers.1.bias"] + 0.1   # replaced
        replaced, _ = member.update(grads, state, params)
        fresh = MemberRule(rule, thetas.clone())
        fresh.named["layers.0.weight"].mul_(1.5)
        expect_changed, _ = fresh.update(grads, state, params)
        fresh.named["layers.1.bias"] = fresh.named["layers.1.bias"] + 0.1
        fresh._workspace.clear()
        expect_replaced, _ = fresh.update(grads, state, params)
    torch.testing.assert_close(changed["w"], expect_changed["w"], rtol=0, atol=0)
    torch.testing.assert_close(replaced["w"], expect_replaced["w"], rtol=0, atol=0)
    assert not torch.equal(changed["w"], replaced["w"])


@pytest.mark.parametrize("name", ["mlp", "lstm"])   # the native path and the vmap path
def test_member_rule_names_a_missing_member_dim(name):
    rule = make_learned_rule(name)
    member = MemberRule(rule, meta_vector(rule).expand(3, -1).clone())
    good = {"w": torch.randn(3, 4)}
    with torch.no_grad():
        state = member.init(good)
        with pytest.raises(ValueError, match="leading population dim of 3, got shape \\(2, 4\\)"):
            member.update({"w": torch.randn(2, 4)}, state, good)


def test_member_rule_keeps_the_graph_when_grad_is_enabled():
    """With grad enabled MemberRule runs the rule under vmap (differentiable), not the native path."""
    torch.manual_seed(0)
    rule = make_learned_rule("mlp")
    thetas = (meta_vector(rule) + 0.05 * torch.randn(2, meta_vector(rule).numel())).requires_grad_()
    params = {"w": torch.randn(2, 3, 4)}
    member = MemberRule(rule, thetas)
    new, _ = member.update({"w": torch.randn(2, 3, 4)}, member.init(params), params)
    (grad,) = torch.autograd.grad(new["w"].sum(), thetas)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0 and not member._workspace


def test_unroll_freeze_stops_only_the_diverging_member():
    task = FAMILY.task
    pop = PopulationTask([task, task])
    rule = LearnedSGD(lr=0.3, momentum=0.0, steps=1)
    thetas = torch.tensor([[math.log(0.3)], [math.log(3.0)]])   # member 1: lr 3 > 2 / h_1, diverges
    gens = [torch.Generator().manual_seed(0) for _ in range(2)]
    params = pop.init_params(gens)
    member = MemberRule(rule, thetas)
    with torch.no_grad():
        res = unroll(pop, member, params, member.init(params), 12, gens, divergence_factor=10.0,
                     on_divergence="freeze")
    assert res.diverged and res.diverged_members == [1] and res.losses.shape == (12, 2)
    ref = float(res.losses[0, 1])
    clipped = res.losses[res.diverged_at:, 1]
    torch.testing.assert_close(clipped, torch.full_like(clipped, 10.0 * ref))
    alone = unroll(task, rule, {"theta": params["theta"][0]}, rule.init({"theta": params["theta"][0]}), 12,
                   torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.losses[:, 0], alone.losses)
    torch.testing.assert_close(res.params["theta"][0], alone.params["theta"])
    assert torch.isfinite(res.params["theta"]).all()


def test_unknown_estimator_lists_the_choices_and_bad_options_are_named(tmp_path):
    from learned_opt.meta.trainer import check_config
    base = {"seed": 0, "optimizer": {"name": "mlp"}, "family": {"name": "quadratic_family"},
            "meta": {"steps": 1, "horizon": 4, "truncation": 2, "tasks_per_step": 1, "lr": 0.01},
            "wandb": {"mode": "disabled"}}
    bad = copy.deepcopy(base)
    bad["meta"]["estimator"] = "reinforce"
    with pytest.raises(ValueError, match="bptt, es, pes"):
        check_config(bad)
    bad = copy.deepcopy(base)
    bad["meta"]["estimator"] = "pes"
    bad["pes"] = {"std": -1.0, "pairs": 2}
    with pytest.raises(ValueError, match=r"pes\.std"):
        check_config(bad)
    assert set(ESTIMATORS) == {"bptt", "es", "pes"}


def test_lr_sweep_matches_the_closed_form_expectation_of_the_noisy_quadratic():
    from learned_opt.lecture.sweep import lr_sweep
    from learned_opt.tasks import make_task
    task = make_task("noisy_quadratic", dim=20, decay=1.0, noise=1.0)
    lrs = [0.03, 0.3, 1.0, 2.5]                  # 2.5 > 2 / h_1: diverges
    measured = lr_sweep(task, "sgd", lrs, steps=200, seeds=list(range(64)))
    exact = task.expected_losses(torch.tensor(lrs[:3], dtype=torch.float64), 200).mean(-1).numpy()
    np.testing.assert_allclose(measured[:3].mean(1), exact, rtol=0.06)
    assert np.isnan(measured[3]).all()


def _meta_cfg(estimator: str, steps: int) -> dict:
    return {"seed": 1, "device": "cpu", "progress": False, "checkpoint_every": 2, "distributed": False,
            "optimizer": {"name": "mlp", "hidden_sizes": [8]},
            "family": {"name": "mlp_family", "datasets": ["digits"], "widths": [8], "depths": [1],
                       "activations": ["tanh"], "batch_size": 16},
            "meta": {"estimator": estimator, "steps": steps, "horizon": 6, "truncation": 2, "tasks_per_step": 2,
                     "optimizer": "adam", "lr": 0.01, "clip_grad_norm": 1.0, "meta_loss": "log_ratio",
                     "divergence_factor": 1000.0, "stagger": True},
            "es": {"std": 0.01, "pairs": 2}, "pes": {"std": 0.01, "pairs": 2},
            "validation": {"every": 0}, "wandb": {"mode": "disabled"}}


@pytest.mark.parametrize("estimator", ["es", "pes"])
def test_meta_training_resumes_bitwise_for_every_estimator(tmp_path, estimator, monkeypatch):
    cfg = _meta_cfg(estimator, 5)
    meta_train(copy.deepcopy(cfg), tmp_path / "full")
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["meta_params"]
    cls = ESTIMATORS[estimator]
    real, calls = cls.estimate, {"n": 0}

    def interrupted(self, rule):
        calls["n"] += 1
        if calls["n"] == 4:  # dies in meta-step 4; the last checkpoint is at step 2
            raise KeyboardInterrupt
        return real(self, rule)

    monkeypatch.setattr(cls, "estimate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        meta_train(copy.deepcopy(cfg), tmp_path / "cut")
    monkeypatch.setattr(cls, "estimate", real)
    meta_train(copy.deepcopy(cfg), tmp_path / "cut", resume=True)
    resumed = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["meta_params"]
    assert any(not torch.equal(full[k], make_learned_rule("mlp", hidden_sizes=[8]).state_dict()[k]) for k in full)
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def test_short_horizon_bias_experiment_end_to_end(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    run_dir = tmp_path / "shb"
    proc = subprocess.run([sys.executable, str(root / "experiments" / "short_horizon_bias.py"),
                           f"hydra.run.dir={run_dir}", "horizon=40", "meta.steps=6", "meta.truncation=10",
                           "meta.tasks_per_step=2", "grid.lrs=3", "grid.seeds=2", "task.dim=10"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (run_dir / "table.md").read_text()
    for name in ("bptt", "es", "pes", "grid (measured)"):
        assert f"| {name} |" in table
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["results"]) == {"bptt", "es", "pes"}
    assert (run_dir / "lr.png").stat().st_size > 20_000
    for name in ("bptt", "es", "pes"):  # each estimator moved the lr from where it started
        assert results["results"][name]["final_lr"] != pytest.approx(0.05, rel=1e-6)


def test_learned_opt_load_finds_shipped_optimizers_by_short_name(tmp_path):
    import learned_opt
    from learned_opt.optimizers.files import CheckpointError, resolve_pretrained
    assert resolve_pretrained("lstm_l2l_mnist").name == "lstm_l2l_mnist.pt"
    by_name = learned_opt.load("lstm_l2l_mnist")
    by_path = learned_opt.load(resolve_pretrained("lstm_l2l_mnist"))
    for (k, a), (_, b) in zip(by_name.state_dict().items(), by_path.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(CheckpointError, match="short names: .*lstm_l2l_mnist"):
        learned_opt.load("no_such_optimizer")
    with pytest.raises(CheckpointError, match="not found"):
        learned_opt.load(tmp_path / "missing.pt")


# ---------------------------------------------------------------- meta.log_ratio_floor
def test_log_ratio_floor_clips_each_steps_log_ratio_from_below():
    from learned_opt.meta.inner import InnerProblems
    losses = torch.tensor([[2.0, 1.0], [0.5, 1e-13], [1e-3, 0.9]], dtype=torch.float64)   # (K, N)
    ref = torch.tensor([2.0, 1.0], dtype=torch.float64)
    logs = np.log(losses.numpy() / ref.numpy())
    for floor in (None, -4.6):
        inner = InnerProblems(FAMILY, horizon=5, truncation=5, num_tasks=1, device=CPU,
                              generator=torch.Generator().manual_seed(0), meta_loss="log_ratio",
                              log_ratio_floor=floor)
        expected = logs.mean(0) if floor is None else np.maximum(logs, floor).mean(0)
        np.testing.assert_allclose(inner.loss(losses, ref).numpy(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="needs meta_loss='log_ratio'"):
        InnerProblems(FAMILY, horizon=5, truncation=5, num_tasks=1, device=CPU,
                      generator=torch.Generator(), meta_loss="log_mean", log_ratio_floor=-1.0)
    with pytest.raises(ValueError, match="finite negative number"):
        InnerProblems(FAMILY, horizon=5, truncation=5, num_tasks=1, device=CPU,
                      generator=torch.Generator(), meta_loss="log_ratio", log_ratio_floor=0.5)


def test_a_floor_every_step_is_below_leaves_es_no_meta_gradient():
    """SGD on the quadratic lowers the loss at every step: with a floor just below 0 every step after the
    first is clipped, so all particles have the same meta-loss and the ES estimate is exactly 0 (not so
    without the floor)."""
    rule = sgd_rule()
    free = make(TruncatedES, 5, 5, std=0.3, pairs=2, meta_loss="log_ratio").estimate(rule).grads[0]
    floored = make(TruncatedES, 5, 5, std=0.3, pairs=2, meta_loss="log_ratio",
                   log_ratio_floor=-1e-9).estimate(rule).grads[0]
    assert float(free.abs()) > 1e-3 and float(floored.abs()) == 0.0


def test_validation_scores_use_the_meta_losss_floor():
    from learned_opt.meta.trainer import held_out_scores, validation_loss
    family = make_family("mlp_family", datasets=["digits"], widths=[8], depths=[1], activations=["tanh"],
                         batch_size=16)
    rule = make_learned_rule("mlp", hidden_sizes=[8])
    cfg = {"meta": {"horizon": 30, "log_ratio_floor": -0.002},
           "validation": {"tasks": 2, "steps": 30, "metric": "log_ratio"}}
    floored = validation_loss(rule, family, cfg, CPU)
    # independent: the same held-out unrolls' losses, clipped here
    from learned_opt.meta.trainer import VALIDATION_SEED, generator
    from learned_opt.unroll import init_state
    expected = []
    for i in range(2):
        task = family.sample(torch.Generator().manual_seed(VALIDATION_SEED + i))
        g = generator(VALIDATION_SEED + i, CPU)
        params = task.init_params(g)
        with torch.no_grad():
            res = unroll(task, rule, params, init_state(rule, params, 30), 30, g)
        expected.append(float(np.maximum(np.log(res.losses.numpy() / float(res.losses[0])), -0.002).mean()))
    assert floored == pytest.approx(float(np.mean(expected)), rel=1e-4)
    free = np.mean(held_out_scores(rule, family, 2, 30, "log_ratio", CPU))
    assert floored > free   # the rule lowers the loss below the floor on these tasks


def test_snapshots_hold_the_meta_parameters_of_their_meta_step(tmp_path):
    """snapshot_every=2 over 5 PES meta-steps keeps steps 2 and 4; each equals the final checkpoint of a
    separate run stopped at that step, and loads as a rule."""
    import learned_opt
    cfg = {**_meta_cfg("pes", 5), "snapshot_every": 2}
    meta_train(copy.deepcopy(cfg), tmp_path / "long")
    snaps = sorted(p.name for p in (tmp_path / "long" / "snapshots").iterdir())
    assert snaps == ["step_000002.pt", "step_000004.pt"]
    short = {**_meta_cfg("pes", 4), "snapshot_every": 0}
    meta_train(copy.deepcopy(short), tmp_path / "short")
    assert not (tmp_path / "short" / "snapshots").exists()
    snap = load_checkpoint(tmp_path / "long" / "snapshots" / "step_000004.pt")
    ref = load_checkpoint(tmp_path / "short" / "checkpoint.pt")
    assert snap["meta_step"] == 4
    for k in ref["meta_params"]:
        assert torch.equal(snap["meta_params"][k], ref["meta_params"][k]), k
    rule = learned_opt.load(tmp_path / "long" / "snapshots" / "step_000002.pt")
    assert not torch.equal(rule.state_dict()[k], ref["meta_params"][k])


def test_ratio_meta_loss_and_validation_metric_are_the_mean_loss_over_the_first():
    from learned_opt.meta.inner import InnerProblems
    from learned_opt.meta.trainer import held_out_scores
    losses = torch.tensor([[2.0, 1.0], [0.5, 1e-13], [1e-3, 0.9]], dtype=torch.float64)
    inner = InnerProblems(FAMILY, horizon=5, truncation=5, num_tasks=1, device=CPU,
                          generator=torch.Generator().manual_seed(0), meta_loss="ratio")
    ref = torch.tensor([4.0, 0.5], dtype=torch.float64)
    np.testing.assert_allclose(inner.loss(losses, ref).numpy(), (losses.numpy() / ref.numpy()).mean(0), rtol=1e-12)
    np.testing.assert_allclose(inner.loss(losses).numpy(), (losses.numpy() / losses[0].numpy()).mean(0), rtol=1e-12)
    family = make_family("mlp_family", datasets=["digits"], widths=[8], depths=[1], activations=["tanh"],
                         batch_size=16)
    rule = LearnedSGD(lr=0.5, momentum=0.0, steps=1)
    ratio = held_out_scores(rule, family, 2, 20, "ratio", CPU)
    mean = held_out_scores(rule, family, 2, 20, "mean_loss", CPU)
    logr = held_out_scores(rule, family, 2, 20, "log_ratio", CPU)
    for r, m, lr_ in zip(ratio, mean, logr):
        assert 0 < r < 1 and r > math.exp(lr_)   # AM >= GM of the ratios; SGD lowers the loss
    assert ratio != mean
