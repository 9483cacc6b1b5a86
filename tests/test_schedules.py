"""Learning-rate schedules against torch.optim.lr_scheduler (the independent oracle).

Torch's value for step k is read from ``optimizer.param_groups[0]`` before the
k-th ``scheduler.step()``, with ``optimizer.step()`` then ``scheduler.step()``
called once per update, exactly as in a training loop.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch.optim import lr_scheduler as tls

import baselines as B
from baselines import schedules as S

STEPS = 500
RTOL = 1e-10


def torch_values(make_scheduler, num_steps: int = STEPS, lr: float = 0.1, momentum: float = 0.0,
                 metrics=None) -> tuple[list[float], list[float]]:
    """lr and momentum used by each of ``num_steps`` optimizer steps under a torch scheduler.

    With ``metrics``, ``scheduler.step(metric)`` is fed one metric per step and
    the lr is read *after* it (the lr in force from then on), as for ReduceOnPlateau.
    """
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=lr, momentum=momentum)
    sched = make_scheduler(opt)
    lrs, moms = [], []
    for k in range(num_steps):
        if metrics is None:
            lrs.append(opt.param_groups[0]["lr"])
            moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[k])
            lrs.append(opt.param_groups[0]["lr"])
    return lrs, moms


def assert_close(ours, theirs) -> None:
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64),
                               torch.tensor(theirs, dtype=torch.float64), rtol=RTOL, atol=0)


@pytest.mark.parametrize("step_size,gamma", [(1, 0.99), (7, 0.5), (100, 0.1)])
def test_step_decay_matches_steplr(step_size, gamma):
    ours = S.StepDecay(0.3, step_size=step_size, gamma=gamma)
    theirs, _ = torch_values(lambda o: tls.StepLR(o, step_size=step_size, gamma=gamma), lr=0.3)
    assert_close([ours(k) for k in range(STEPS)], theirs)


@pytest.mark.parametrize("gamma", [0.99, 0.9, 1.001])
def test_exponential_matches_exponentiallr(gamma):
    ours = S.Exponential(0.3, gamma=gamma)
    theirs, _ = torch_values(lambda o: tls.ExponentialLR(o, gamma=gamma), lr=0.3)
    assert_close([ours(k) for k in range(STEPS)], theirs)


def test_constant():
    assert [S.Constant(0.05)(k) for k in (0, 1, 10**6)] == [0.05] * 3


CYCLIC_CASES = [
    dict(mode="triangular", step_size_up=20),
    dict(mode="triangular", step_size_up=13, step_size_down=31),
    dict(mode="triangular2", step_size_up=25),
    dict(mode="triangular2", step_size_up=10, step_size_down=40),
    dict(mode="exp_range", step_size_up=30, gamma=0.995),
    dict(mode="exp_range", step_size_up=7, step_size_down=3, gamma=0.99),
]


@pytest.mark.parametrize("kw", CYCLIC_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_cyclic_matches_torch(kw):
    ours = S.CyclicLR(0.001, 0.1, **kw)
    theirs, _ = torch_values(lambda o: tls.CyclicLR(o, base_lr=0.001, max_lr=0.1, cycle_momentum=False, **kw))
    assert_close([ours(k) for k in range(STEPS)], theirs)


@pytest.mark.parametrize("kw", CYCLIC_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_cyclic_momentum_matches_torch(kw):
    ours = S.CyclicLR(0.001, 0.1, cycle_momentum=True, base_momentum=0.85, max_momentum=0.95, **kw)
    lrs, moms = torch_values(lambda o: tls.CyclicLR(o, base_lr=0.001, max_lr=0.1, cycle_momentum=True,
                                                    base_momentum=0.85, max_momentum=0.95, **kw), momentum=0.9)
    assert_close([ours(k) for k in range(STEPS)], lrs)
    assert_close([ours.momentum(k) for k in range(STEPS)], moms)


def test_cyclic_cycles_and_ends():
    s = S.CyclicLR(0.01, 0.1, step_size_up=3, step_size_down=5)
    lrs = [s(k) for k in range(41)]
    ends = s.cycle_ends(40)
    assert ends == [7, 15, 23, 31, 39]
    assert all(s.is_cycle_end(k) == (k in ends) for k in range(40))
    # The step after each cycle end starts the next cycle at base_lr, the lowest lr.
    assert all(lrs[k + 1] == pytest.approx(0.01) and s.cycle(k + 1) == s.cycle(k) + 1 for k in ends)
    assert [s.cycle(k) for k in (0, 7, 8, 39, 40)] == [1, 1, 2, 5, 6]


@pytest.mark.parametrize("T_0,T_mult,eta_min", [(10, 1, 0.0), (7, 1, 0.001), (5, 2, 0.0), (3, 2, 0.01), (4, 3, 0.0)])
def test_cosine_warm_restarts_matches_torch(T_0, T_mult, eta_min):
    ours = S.CosineWarmRestarts(0.1, T_0=T_0, T_mult=T_mult, eta_min=eta_min)
    theirs, _ = torch_values(lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=T_0, T_mult=T_mult, eta_min=eta_min))
    assert_close([ours(k) for k in range(STEPS)], theirs)


def plateau_metrics(n: int = 300, seed: int = 0) -> list[float]:
    """A validation loss that improves, plateaus with noise, improves again and plateaus."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, generator=g, dtype=torch.float64).tolist()
    return [1.0 / (1 + min(t, 60) / 10) - 0.1 * min(max(t - 150, 0), 30) / 30 + 0.01 * noise[t] for t in range(n)]


PLATEAU_CASES = [
    dict(mode="min", threshold_mode="rel", patience=10, factor=0.5, cooldown=0, min_lr=0.0),
    dict(mode="min", threshold_mode="abs", threshold=1e-3, patience=5, factor=0.3, cooldown=4, min_lr=1e-3),
    dict(mode="max", threshold_mode="rel", threshold=1e-2, patience=3, factor=0.5, cooldown=2, min_lr=0.01),
    dict(mode="max", threshold_mode="abs", threshold=1e-3, patience=0, factor=0.9, cooldown=0, min_lr=0.02,
         eps=1e-3),
]


@pytest.mark.parametrize("kw", PLATEAU_CASES, ids=lambda kw: f"{kw['mode']}-{kw['threshold_mode']}")
def test_reduce_on_plateau_matches_torch(kw):
    metrics = plateau_metrics()
    if kw["mode"] == "max":
        metrics = [2.0 - m for m in metrics]  # an accuracy-like metric
    ours = S.ReduceOnPlateau(0.1, **kw)
    theirs, _ = torch_values(lambda o: tls.ReduceLROnPlateau(o, **kw), num_steps=len(metrics), metrics=metrics)
    lrs = []
    for k, m in enumerate(metrics):
        assert ours.step(m) == ours(k)
        lrs.append(ours(k))
    assert_close(lrs, theirs)
    reductions = sum(a != b for a, b in zip([0.1] + theirs, theirs))
    assert ours.num_reductions == reductions >= 2
    assert ours.lr >= kw["min_lr"]


def test_reduce_on_plateau_accepts_tensor_metric_and_reaches_min_lr():
    s = S.ReduceOnPlateau(1.0, factor=0.5, patience=0, min_lr=0.2)
    for _ in range(10):
        s.step(torch.tensor(3.0))
    assert s.lr == 0.2 and s.num_reductions == 3  # 1 -> 0.5 -> 0.25 -> 0.2, then no change


def test_reduce_on_plateau_state_dict_roundtrip():
    metrics = plateau_metrics()
    kw = PLATEAU_CASES[1]
    full = S.ReduceOnPlateau(0.1, **kw)
    expected = [full.step(m) for m in metrics]

    first = S.ReduceOnPlateau(0.1, **kw)
    fresh_state = json.loads(json.dumps(first.state_dict(), allow_nan=False))  # best is still inf
    assert float(fresh_state["best"]) == math.inf
    got = [first.step(m) for m in metrics[:100]]
    saved = json.dumps(first.state_dict(), allow_nan=False)
    resumed = S.ReduceOnPlateau(0.1, **kw)
    resumed.load_state_dict(json.loads(saved))
    got += [resumed.step(m) for m in metrics[100:]]
    assert got == expected and resumed.num_reductions == full.num_reductions
    with pytest.raises(KeyError, match="best"):
        resumed.load_state_dict({"lr": 0.1})


def torch_restart_ends(T_0: int, T_mult: int, num_steps: int) -> list[int]:
    """Steps k < num_steps after which torch's CosineAnnealingWarmRestarts lr jumps back up.

    Within a cycle the lr strictly decreases, so a restart is where it does not
    (a one-step cycle restarts at the same lr).
    """
    lrs, _ = torch_values(lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=T_0, T_mult=T_mult), num_steps + 1)
    return [k for k in range(num_steps) if lrs[k + 1] >= lrs[k]]


@pytest.mark.parametrize("T_0,T_mult", [(10, 1), (5, 2), (1, 2), (2, 3)])
def test_cosine_cycle_ends_match_torch_restarts(T_0, T_mult):
    s = S.CosineWarmRestarts(0.1, T_0=T_0, T_mult=T_mult)
    ends = torch_restart_ends(T_0, T_mult, STEPS)
    assert len(ends) >= 3
    assert s.cycle_ends(STEPS) == ends
    assert [k for k in range(STEPS) if s.is_cycle_end(k)] == ends
    assert all(s.cycle(k + 1) == s.cycle(k) + 1 == i + 2 for i, k in enumerate(ends))


def test_snapshot_collector_takes_independent_snapshots_at_restarts():
    sched = S.CosineWarmRestarts(0.1, T_0=5, T_mult=2)
    seen = []
    collector = S.SnapshotCollector(sched, callback=lambda step, params: seen.append(step))
    w = torch.zeros(3, requires_grad=True)
    params = {"w": w}
    for step in range(100):
        with torch.no_grad():
            w.add_(1.0)  # the update at this step, written in place into the live tensor
        assert collector.maybe_snapshot(step, params) == sched.is_cycle_end(step)
    ends = torch_restart_ends(5, 2, 100)
    assert [s for s, _ in collector.snapshots] == ends == seen == [4, 14, 34, 74]
    for step, snap in collector.snapshots:
        assert torch.equal(snap["w"], torch.full((3,), step + 1.0))  # unaffected by later updates
        assert not snap["w"].requires_grad and snap["w"].data_ptr() != w.data_ptr()


def test_snapshot_collector_with_cyclic():
    sched = S.CyclicLR(0.01, 0.1, step_size_up=4, step_size_down=6)
    collector = S.SnapshotCollector(sched)
    for step in range(35):
        collector.maybe_snapshot(step, {"w": torch.tensor([float(step)])})
    assert [s for s, _ in collector.snapshots] == [9, 19, 29]


def quadratic_train_step(a: float, w0: float = 1.0):
    """One SGD step on f(w) = 0.5 * a * w**2; returns the loss after the step."""
    w = [w0]

    def train_step(lr: float) -> float:
        w[0] -= lr * a * w[0]
        return 0.5 * a * w[0] ** 2
    return train_step


@pytest.mark.parametrize("a", [1.0, 3.0, 50.0])
def test_lr_range_test_finds_quadratic_stability_limit(a):
    # A noise-free loss needs no smoothing; smoothing only delays the minimum (see the next test).
    r = S.lr_range_test(quadratic_train_step(a), min_lr=1e-5, max_lr=10.0, num_steps=100, smooth=1.0)
    limit = 2.0 / a  # SGD on this quadratic converges iff lr < 2/a
    assert r.diverged_at is not None and r.diverged_at > limit
    assert r.suggested_min_lr < r.suggested_max_lr < limit
    assert len(r.lrs) == len(r.losses) == len(r.smoothed) < 100 and r.lrs[-1] == r.diverged_at
    i_min = r.lrs.index(r.suggested_max_lr)
    assert all(x >= y for x, y in zip(r.losses[:i_min], r.losses[1:i_min + 1]))  # decreasing, then
    assert r.losses[-1] > 4 * min(r.losses)                                       # diverged
    ratios = [y / x for x, y in zip(r.lrs, r.lrs[1:])]
    assert ratios == pytest.approx([(10.0 / 1e-5) ** (1 / 99)] * len(ratios), rel=1e-12)


def test_lr_range_test_smoothing_is_a_bias_corrected_ema():
    a, smooth = 3.0, 0.05
    r = S.lr_range_test(quadratic_train_step(a), smooth=smooth)
    avg, expected = 0.0, []
    for i, loss in enumerate(r.losses):
        avg = smooth * loss + (1 - smooth) * avg
        expected.append(avg / (1 - (1 - smooth) ** (i + 1)))
    assert r.smoothed == pytest.approx(expected, rel=1e-12)
    assert r.diverged_at > 2 / a and r.smoothed[-1] > 4 * min(r.smoothed[:-1])
    assert r.suggested_min_lr < r.suggested_max_lr
    # Constant losses stay constant under the bias correction, and nothing diverges.
    flat = S.lr_range_test(lambda lr: 2.5, num_steps=20, smooth=0.1)
    assert flat.smoothed == pytest.approx([2.5] * 20, rel=1e-12) and flat.diverged_at is None
    assert flat.lrs[0] == 1e-7 and flat.lrs[-1] == pytest.approx(10.0, rel=1e-12)


def test_lr_range_test_linear_mode_and_nan():
    a = 1.0
    r = S.lr_range_test(quadratic_train_step(a), min_lr=0.01, max_lr=5.0, num_steps=60, mode="linear", smooth=1.0)
    steps = [y - x for x, y in zip(r.lrs, r.lrs[1:])]
    assert steps == pytest.approx([(5.0 - 0.01) / 59] * len(steps), rel=1e-9)
    assert r.suggested_min_lr < r.suggested_max_lr < 2 / a < r.diverged_at

    def nan_above_1(lr: float) -> float:
        return float("nan") if lr > 1.0 else 1.0 / (1 + lr)
    r = S.lr_range_test(nan_above_1, min_lr=0.1, max_lr=2.0, num_steps=20, mode="linear", smooth=0.5)
    assert r.diverged_at == r.lrs[-1] > 1.0 and math.isnan(r.losses[-1])
    assert r.suggested_max_lr == max(lr for lr in r.lrs if lr <= 1.0)
    with pytest.raises(ValueError, match="min_lr"):
        S.lr_range_test(lambda lr: float("inf"))


def test_schedule_drives_a_rule_like_torch_scheduler():
    """A rule calls sched(state["step"]); over a run this equals torch SGD + StepLR."""
    sched = S.StepDecay(0.2, step_size=3, gamma=0.5)
    rule = B.SGD(lr=sched, momentum=0.9)
    w_ours = torch.tensor([1.0, -2.0], dtype=torch.float64)
    params, state = {"w": w_ours}, rule.init({"w": w_ours})
    w_torch = w_ours.clone().requires_grad_()
    opt = torch.optim.SGD([w_torch], lr=0.2, momentum=0.9)
    torch_sched = tls.StepLR(opt, step_size=3, gamma=0.5)
    for _ in range(12):
        params, state = rule.update({"w": 2 * params["w"]}, state, params)
        opt.zero_grad()
        (w_torch ** 2).sum().backward()
        opt.step()
        torch_sched.step()
    torch.testing.assert_close(params["w"], w_torch.detach(), rtol=RTOL, atol=0)


def test_make_schedule_and_repr():
    s = S.make_schedule("cyclic", base_lr=0.001, max_lr=0.1, step_size_up=10, mode="exp_range", gamma=0.99)
    assert isinstance(s, S.CyclicLR) and set(S.SCHEDULES) >= {"constant", "cyclic", "cosine_warm_restarts"}
    for sched in [s, S.CosineWarmRestarts(0.1, T_0=5, T_mult=2, eta_min=0.001), S.StepDecay(0.1, 3),
                  S.Exponential(0.1, 0.9), S.Constant(0.1), S.ReduceOnPlateau(0.1, mode="max", cooldown=2)]:
        rebuilt = eval(repr(sched), vars(S))
        assert repr(rebuilt) == repr(sched) and [rebuilt(k) for k in range(50)] == [sched(k) for k in range(50)]
    with pytest.raises(ValueError, match="schedule='bogus' is not allowed; allowed: constant, cosine_warm_restarts, cyclic"):
        S.make_schedule("bogus")


@pytest.mark.parametrize("build,name", [
    (lambda: S.Constant(-0.1), "lr"),
    (lambda: S.StepDecay(0.1, step_size=0), "step_size"),
    (lambda: S.Exponential(0.1, gamma=0.0), "gamma"),
    (lambda: S.CyclicLR(-0.1, 0.1), "base_lr"),
    (lambda: S.CyclicLR(0.1, 0.01), "max_lr"),
    (lambda: S.CyclicLR(0.01, 0.1, step_size_down=0), "step_size_down"),
    (lambda: S.CyclicLR(0.01, 0.1, mode="sawtooth"), "mode"),
    (lambda: S.CyclicLR(0.01, 0.1, cycle_momentum=True, base_momentum=0.9, max_momentum=0.8), "max_momentum"),
    (lambda: S.CyclicLR(0.01, 0.1).momentum(0), "cycle_momentum"),
    (lambda: S.CosineWarmRestarts(0.1, T_0=0), "T_0"),
    (lambda: S.CosineWarmRestarts(0.1, T_0=2.5), "T_0"),
    (lambda: S.CosineWarmRestarts(0.1, T_0=10, T_mult=0), "T_mult"),
    (lambda: S.CosineWarmRestarts(0.1, T_0=10, eta_min=-1.0), "eta_min"),
    (lambda: S.ReduceOnPlateau(-1.0), "lr"),
    (lambda: S.ReduceOnPlateau(0.1, factor=1.0), "factor"),
    (lambda: S.ReduceOnPlateau(0.1, factor=1.5), "factor"),
    (lambda: S.ReduceOnPlateau(0.1, patience=-1), "patience"),
    (lambda: S.ReduceOnPlateau(0.1, mode="avg"), "mode"),
    (lambda: S.ReduceOnPlateau(0.1, threshold_mode="pct"), "threshold_mode"),
    (lambda: S.ReduceOnPlateau(0.1, cooldown=-2), "cooldown"),
    (lambda: S.lr_range_test(lambda lr: 1.0, min_lr=0.0), "min_lr"),
    (lambda: S.lr_range_test(lambda lr: 1.0, min_lr=1.0, max_lr=0.5), "max_lr"),
    (lambda: S.lr_range_test(lambda lr: 1.0, num_steps=1), "num_steps"),
    (lambda: S.lr_range_test(lambda lr: 1.0, mode="cubic"), "mode"),
    (lambda: S.lr_range_test(lambda lr: 1.0, smooth=0.0), "smooth"),
])
def test_bad_input_names_the_argument(build, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        build()


def test_unknown_mode_lists_allowed_modes():
    with pytest.raises(ValueError, match="triangular, triangular2, exp_range"):
        S.CyclicLR(0.01, 0.1, mode="sawtooth")
    with pytest.raises(ValueError, match="min, max"):
        S.ReduceOnPlateau(0.1, mode="avg")
    with pytest.raises(TypeError, match="is_cycle_end"):
        S.SnapshotCollector(S.Constant(0.1))
