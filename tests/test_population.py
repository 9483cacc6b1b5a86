"""Batched populations and gradient checkpointing: the same numbers as one task at a time, and as no checkpointing."""
from __future__ import annotations

import copy

import pytest
import torch

import baselines as B
from learned_opt.meta import TruncatedBPTT, meta_train
from learned_opt.optimizers import LearnedAdam, LSTMOptimizer, MLPOptimizer
from learned_opt.tasks.population import PopulationTask, population_rule, stack_trees, unstack_tree
from learned_opt.tasks import make_family, make_task
from learned_opt.unroll import unroll

CPU = torch.device("cpu")


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def mlp_tasks(n, dtype="float64", **kw):
    return [make_task("mlp", dataset="digits", hidden_sizes=[8], batch_size=32, dtype=dtype, **kw) for _ in range(n)]


def quadratics(n, dim=5, dtype="float64"):
    family = make_family("quadratic_family", dim=dim, dtype=dtype)
    return [family.sample(torch.Generator().manual_seed(100 + i)) for i in range(n)]


# --------------------------------------------------------------------------- the task


def test_shapes_of_params_batches_losses_and_unroll():
    n = 4
    pop = PopulationTask(mlp_tasks(n, dtype="float32"))
    assert pop.mode == "mlp" and pop.population_size == n
    params = pop.init_params(gens(range(n)))
    single = mlp_tasks(1, dtype="float32")[0].init_params(torch.Generator().manual_seed(0))
    for k, v in single.items():
        assert params[k].shape == (n, *v.shape)
        torch.testing.assert_close(params[k][0], v, rtol=0, atol=0)  # member 0 drew what it draws alone
    x, y = pop.sample_batch(gens(range(n)))
    assert x.shape == (n, 32, 64) and y.shape == (n, 32)
    assert pop.loss(params, (x, y)).shape == (n,)
    rule = B.SGD(lr=0.1)
    res = unroll(pop, rule, params, rule.init(params), 7, gens(range(n)))
    assert res.losses.shape == (7, n) and not res.diverged
    assert unroll(pop, rule, params, rule.init(params), 0, gens(range(n))).losses.shape == (0, n)
    assert pop.metrics(params)["accuracy"] >= 0 and len(pop.member_metrics(params)) == n
    members = unstack_tree(res.state, n)
    assert members[0]["step"] == 7 and stack_trees(members)["step"] == 7


@pytest.mark.parametrize("kind", ["mlp", "quadratic"])
def test_batched_unroll_with_adam_equals_separate_unrolls(kind):
    n, steps = 3, 25
    tasks = mlp_tasks(n) if kind == "mlp" else quadratics(n)
    pop = PopulationTask(tasks)
    assert pop.mode == kind
    rule = B.Adam(lr=0.02)
    params = pop.init_params(gens(range(n)))
    res = unroll(pop, rule, params, rule.init(params), steps, gens(range(10, 10 + n)))
    for i, task in enumerate(tasks):
        p = task.init_params(torch.Generator().manual_seed(i))
        one = unroll(task, rule, p, rule.init(p), steps, torch.Generator().manual_seed(10 + i))
        torch.testing.assert_close(res.losses[:, i], one.losses, rtol=1e-10, atol=1e-12)
        for k in p:
            torch.testing.assert_close(res.params[k][i], one.params[k], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(res.state["exp_avg_sq"][k][i], one.state["exp_avg_sq"][k],
                                       rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("mode", ["vmap", "loop"])
def test_every_batching_mode_gives_the_same_losses_and_gradients(mode):
    n = 3
    tasks = mlp_tasks(n, dropout=0.25)  # dropout masks travel in the batch too
    fast, other = PopulationTask(tasks), PopulationTask(tasks, mode=mode)
    params = {k: v.requires_grad_() for k, v in fast.init_params(gens(range(n))).items()}
    batch = fast.sample_batch(gens(range(n)))
    torch.testing.assert_close(other.sample_batch(gens(range(n))), batch, rtol=0, atol=0)
    a, b = fast.loss(params, batch), other.loss(params, batch)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    ga = torch.autograd.grad(a.sum(), list(params.values()))
    gb = torch.autograd.grad(b.sum(), list(params.values()))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-14)


def _groups(kind: str) -> list:
    """2 tasks, each repeated 3 times in a row (what the ES/PES particles of two inner problems are)."""
    from learned_opt.tasks import ReparamTask
    if kind == "mlp":
        base = mlp_tasks(2)
    elif kind == "dropout":
        base = mlp_tasks(2, dropout=0.25)
    elif kind == "conv":
        base = [make_task("conv", dataset="digits", channels=[3], batch_size=8, dtype="float64") for _ in range(2)]
    else:
        base = [ReparamTask.random(t, torch.Generator().manual_seed(i)) for i, t in enumerate(mlp_tasks(2))]
    return [t for t in base for _ in range(3)]


@pytest.mark.parametrize("kind", ["mlp", "dropout", "conv", "reparam"])
def test_same_batches_gives_every_member_its_own_draws_losses_and_gradients(kind):
    """same_batches=3 against the plain population, where each member draws from its own copy of
    its group's generator: the same losses and per-member gradients; the groups' first generators end
    in the same state (the only ones the estimators keep)."""
    tasks = _groups(kind)
    plain, grouped = PopulationTask(tasks), PopulationTask(tasks, same_batches=3)
    assert grouped.mode == plain.mode
    params = {k: v.requires_grad_() for k, v in plain.init_params(gens(range(6))).items()}
    copies = lambda: gens([7, 7, 7, 9, 9, 9])   # noqa: E731  members of a group: generators in one state
    g_plain, g_grouped = copies(), copies()
    a = plain.loss(params, plain.sample_batch(g_plain))
    b = grouped.loss(params, grouped.sample_batch(g_grouped))
    torch.testing.assert_close(b, a, rtol=1e-12, atol=0)
    ga = torch.autograd.grad(a.sum(), list(params.values()))
    gb = torch.autograd.grad(b.sum(), list(params.values()))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(y, x, rtol=1e-10, atol=1e-14)
    for i in (0, 3):
        assert torch.equal(g_grouped[i].get_state(), g_plain[i].get_state())
    if kind == "mlp":   # no copy of the batch per member
        x = grouped.sample_batch(copies())[0]
        assert x.shape == (2, 3, 32, 64) and x.stride(1) == 0
    with pytest.raises(ValueError, match="same_batches=3 needs"):
        PopulationTask(tasks[:4], same_batches=3)
    with pytest.raises(ValueError, match="same_batches=2 needs"):
        PopulationTask(tasks, same_batches=2)   # groups 3..4 mix two tasks


def test_conv_members_are_batched_with_vmap():
    tasks = [make_task("conv", dataset="digits", channels=[4], batch_size=8, dtype="float64") for _ in range(2)]
    pop = PopulationTask(tasks)
    assert pop.mode == "vmap"
    params = pop.init_params(gens([0, 1]))
    batch = pop.sample_batch(gens([2, 3]))
    expected = torch.stack([t.loss(p, tuple(b[i] for b in batch))
                            for i, (t, p) in enumerate(zip(tasks, pop.unstack(params)))])
    torch.testing.assert_close(pop.loss(params, batch), expected, rtol=1e-12, atol=0)


def test_bad_populations_are_rejected():
    with pytest.raises(ValueError, match="at least one"):
        PopulationTask([])
    with pytest.raises(ValueError, match="mode"):
        PopulationTask(quadratics(2), mode="fast")
    with pytest.raises(ValueError, match="quadratic"):
        PopulationTask(mlp_tasks(2), mode="quadratic")
    with pytest.raises(ValueError, match="device and dtype"):
        PopulationTask([*quadratics(1), *quadratics(1, dtype="float32")])
    mixed = PopulationTask([*quadratics(1, dim=3), *quadratics(1, dim=4)])
    assert mixed.mode == "loop"
    with pytest.raises(RuntimeError):
        mixed.init_params(gens([0, 1]))  # shapes differ: they cannot be stacked
    with pytest.raises(ValueError, match="generators"):
        PopulationTask(quadratics(2)).init_params(gens([0]))


def test_divergence_of_one_member_stops_the_population_and_is_reported():
    tasks = quadratics(3)
    tasks[1].W = tasks[1].W * 30  # member 1 is 900x stiffer: SGD with this lr blows up on it alone
    pop = PopulationTask(tasks)
    params = pop.init_params(gens(range(3)))
    rule = B.SGD(lr=0.01)
    res = unroll(pop, rule, params, rule.init(params), 50, None)
    assert res.diverged and res.diverged_members == [1] and "member 1" in res.reason
    assert res.losses.shape == (res.diverged_at, 3) and torch.isfinite(res.losses).all()
    assert all(torch.isfinite(v).all() for v in res.params.values())
    fine = unroll(PopulationTask([tasks[0], tasks[2]]), rule, {k: v[[0, 2]] for k, v in params.items()},
                  rule.init(params), 50, None)
    assert not fine.diverged  # the others alone are fine


def test_population_rule_sets_and_restores_population_dim():
    rule = MLPOptimizer()
    with population_rule(rule):
        assert rule.population_dim == 0
    assert rule.population_dim is None and "population_dim" not in vars(rule)
    with population_rule(B.Adam()) as r:  # no such attribute: left alone
        assert not hasattr(r, "population_dim")


# --------------------------------------------------------------------------- meta-gradients


def rules():
    torch.manual_seed(0)
    return {"learned_adam": LearnedAdam(lr=0.01, eps=1e-8).double(),
            "lstm": LSTMOptimizer(hidden_size=6).double(),
            "mlp": MLPOptimizer(hidden_sizes=[8]).double(),
            "lstm_rms": LSTMOptimizer(hidden_size=6, step_scale="grad_rms", input_scale="grad_rms",
                                      output_scale=1.0).double(),
            "mlp_rms": MLPOptimizer(hidden_sizes=[8], step_scale="grad_rms", step_mult=1.0).double()}


def estimator(family, *, population=1, segments=1, n=3, truncation=4, horizon=8):
    return TruncatedBPTT(family, horizon=horizon, truncation=truncation, num_tasks=n, device=CPU,
                         generator=torch.Generator().manual_seed(7), meta_loss="log_mean",
                         population=population, checkpoint_segments=segments)


@pytest.mark.parametrize("name", ["learned_adam", "lstm", "mlp", "lstm_rms", "mlp_rms"])
def test_population_meta_gradient_equals_mean_of_per_task_meta_gradients(name):
    family = make_family("mlp_family", widths=[8], batch_size=32, dtype="float64")
    rule = rules()[name]
    one, pop = estimator(family), estimator(family, population=3)
    for _ in range(2):  # the second truncation starts from carried inner state
        a, b = one.estimate(rule), pop.estimate(rule)
        assert a.counted == b.counted == 3
        assert b.meta_loss == pytest.approx(a.meta_loss, rel=1e-12)
        for ga, gb in zip(a.grads, b.grads):
            torch.testing.assert_close(gb, ga, rtol=1e-8, atol=1e-14)
        assert any(g.abs().max() > 0 for g in a.grads)
    # the per-member normalisation matters: the MLP optimizer without it gives another gradient
    if name == "mlp":
        tasks = [s.task for s in pop.slots]
        p = PopulationTask(tasks)
        params = stack_trees([s.params for s in pop.slots])
        res_pop = unroll(p, rule, params, stack_trees([s.state for s in pop.slots]), 2,
                         [torch.Generator().manual_seed(1) for _ in tasks])
        with population_rule(rule):
            res_ok = unroll(p, rule, params, stack_trees([s.state for s in pop.slots]), 2,
                            [torch.Generator().manual_seed(1) for _ in tasks])
        assert not torch.allclose(res_pop.losses[-1], res_ok.losses[-1], rtol=1e-9, atol=0)


def test_population_of_quadratics_in_truncated_bptt_and_group_divergence():
    family = make_family("quadratic_family", dim=4, dtype="float64")
    rule = LearnedAdam(lr=0.05).double()
    one, pop = estimator(family, n=4), estimator(family, n=4, population=2)
    a, b = one.estimate(rule), pop.estimate(rule)
    for ga, gb in zip(a.grads, b.grads):
        torch.testing.assert_close(gb, ga, rtol=1e-8, atol=1e-14)
    # a diverged member cuts its whole group: both members count as cut and are reset together
    rule_bad = LearnedAdam(lr=50.0).double()
    pop.divergence_factor = 1.5
    est = pop.estimate(rule_bad)
    assert est.diverged % 2 == 0 and est.diverged > 0
    assert all((s is None) == (pop.slots[i ^ 1] is None) for i, s in enumerate(pop.slots))


def test_population_groups_draw_members_of_one_shape_from_mixed_families():
    family = make_family("mlp_family", widths=[4, 8], depths=[1, 2], batch_size=16)
    est = estimator(family, n=4, population=4)
    est.estimate(LearnedAdam())
    shapes = [{k: v.shape for k, v in s.params.items()} for s in est.slots]
    assert all(s == shapes[0] for s in shapes)
    state = est.state_dict()
    again = estimator(family, n=4, population=4)
    again.load_state_dict(copy.deepcopy(state), LearnedAdam())
    assert [s.task_seed for s in again.slots] == [s.task_seed for s in est.slots]


# --------------------------------------------------------------------------- gradient checkpointing


@pytest.mark.parametrize("name,population", [("lstm", 1), ("mlp", 1), ("lstm", 3)])
def test_checkpointed_meta_gradient_equals_plain_one(name, population):
    family = make_family("mlp_family", widths=[8], batch_size=32, dtype="float64")
    rule = rules()[name]
    plain = estimator(family, population=population, truncation=7, horizon=14)
    ckpt = estimator(family, population=population, segments=3, truncation=7, horizon=14)
    for _ in range(2):
        a, b = plain.estimate(rule), ckpt.estimate(rule)
        assert a.counted == b.counted == 3
        assert b.meta_loss == pytest.approx(a.meta_loss, rel=1e-12)
        for ga, gb in zip(a.grads, b.grads):
            torch.testing.assert_close(gb, ga, rtol=1e-10, atol=1e-15)
    # the inner problems carried on identically, batch generators included
    for s, t in zip(plain.slots, ckpt.slots):
        assert torch.equal(s.batches.get_state(), t.batches.get_state())
        for k in s.params:
            torch.testing.assert_close(s.params[k], t.params[k], rtol=1e-12, atol=1e-15)


def test_checkpointed_truncation_that_diverges_is_cut():
    family = make_family("quadratic_family", dim=4, dtype="float64")
    est = estimator(family, segments=2, truncation=6, horizon=6)
    est.divergence_factor = 1.5
    out = est.estimate(LearnedAdam(lr=50.0).double())
    assert out.diverged == 3 and out.counted == 0 and all(s is None for s in est.slots)


def test_meta_train_with_population_and_checkpointing(tmp_path):
    cfg = {"seed": 0, "device": "cpu", "progress": False, "checkpoint_every": 0,
           "optimizer": {"name": "lstm", "hidden_size": 4},
           "family": {"name": "mlp_family", "widths": [8], "batch_size": 32},
           "meta": {"steps": 2, "horizon": 6, "truncation": 3, "tasks_per_step": 4, "optimizer": "adam",
                    "lr": 0.01, "clip_grad_norm": 1.0, "meta_loss": "log_mean", "population": 2,
                    "checkpoint_segments": 2},
           "validation": {"every": 0, "tasks": 0}, "wandb": {"mode": "disabled"}}
    summary = meta_train(copy.deepcopy(cfg), tmp_path / "a")
    assert summary["skipped_steps"] == 0 and summary["meta_loss"] is not None
    for bad, match in [({"population": 3}, "population"), ({"checkpoint_segments": 4}, "checkpoint_segments")]:
        c = copy.deepcopy(cfg)
        c["meta"].update(bad)
        with pytest.raises(ValueError, match=match):
            meta_train(c, tmp_path / "b")
