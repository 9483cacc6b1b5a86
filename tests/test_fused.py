"""The fused celo step against the rule's own differentiable ``update``, for every shipped celo file.

From the same (params, grads, state), one step of :func:`fused_celo_step` (the C kernel and the torch
formulation) gives the step, the state and the controllers' state of the rule's differentiable update (the
core and its controllers, run with grad enabled so that ``update`` does not take the fused step itself):
to 1e-5 relative in float32 (plus the rounding of ``w - step`` itself, a few ulps of ``w``) and 1e-10
in float64, on MLP, conv and transformer-shaped tensors (0-d and 1-d included), at the first step and at
later ones (controllers active). 200-step runs of both paths from the same start stay within 1e-3: the
digits MLP task in float32, a conv + attention net in float64. The members function against
``update_members``; the ``torch.optim`` optimizer against ``baselines.RuleOptimizer``.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import baselines as B
import learned_opt
from learned_opt.optimizers import Celo, Controlled
from learned_opt.optimizers.fused import (CeloOptions, FusedCeloOptimizer, Hyper, Radial, celo_inputs,
                                          fused_celo_members, fused_celo_step, kernel_available)

FILES = ("celo_general", "celo_hd", "celo_backoff", "celo_radial")
KERNEL, WHY = kernel_available()
BACKENDS = [pytest.param("c", marks=pytest.mark.skipif(not KERNEL, reason=f"C kernel unavailable: {WHY}")), "torch"]
RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
ULPS = 4   # w - step is rounded once in each path: allow a few ulps of |w| on top of the step's tolerance


def shapes() -> dict[str, tuple[int, ...]]:
    """MLP, conv and transformer-shaped tensors, and the odd ones (0-d, one coordinate)."""
    return {"mlp.weight": (24, 20), "mlp.bias": (24,), "conv.weight": (8, 3, 3, 3), "conv.bias": (8,),
            "embed": (50, 16), "qkv": (48, 16), "proj": (16, 16), "ln.gain": (16,), "ln.bias": (16,),
            "scalar": (), "one": (1,)}


def core(rule):
    return rule.core if isinstance(rule, Controlled) else rule


def reference_update(rule, grads, state, params):
    """The rule's differentiable update: with grad enabled ``update`` never takes the fused step."""
    with torch.enable_grad():
        new, new_state = rule.update(grads, state, params)
    return {k: v.detach() for k, v in new.items()}, new_state


def fused_args(rule, state: dict, names: list[str]):
    """The rule's state -> the fused step's lists (the same per-tensor layout)."""
    weights, options, ctl = celo_inputs(rule)
    momenta = [[state[k][n] for n in names] for k in core(rule).momentum_keys]
    rms = [[state[k][n] for n in names] for k in core(rule).rms_keys]
    hyper = radial = None
    if ctl["hyper"]:
        hyper = Hyper([state["hypergradient.log_step"][n] for n in names],
                      [state["hypergradient.last_dir"][n] for n in names], **ctl["hyper"])
    if ctl["radial"]:
        radial = Radial([state["radial.log_radial"][n] for n in names],
                        [state["radial.last_radial"][n] for n in names], **ctl["radial"])
    return momenta, rms, weights, options, hyper, radial


def assert_close(got, want, rtol, what, log=False):
    """``|got - want| <= rtol * max|want|`` (a tensor's values are compared at its own scale); a log step
    size (``log``) to ``rtol`` absolute: the relative error of the step size it gives."""
    scale = torch.ones_like(want.abs().max()) if log else want.abs().max().clamp_min(torch.finfo(want.dtype).tiny)
    err = ((got - want).abs().max() / scale).item()
    assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:.0e}"


def check_step(rule, params, grads, state, backend, rtol):
    """One step of both paths from the same (params, grads, state): steps, momenta, second moments and
    the controllers' state agree."""
    names = list(params)
    new_params, new_state = reference_update(rule, grads, state, params)
    momenta, rms, weights, options, hyper, radial = fused_args(rule, state, names)
    out = fused_celo_step([params[n] for n in names], [grads[n] for n in names], momenta, rms, state["step"],
                          state.get("horizon"), weights, options, hyper, radial, backend=backend)
    for i, n in enumerate(names):
        want, got = params[n] - new_params[n], params[n] - out.params[i]
        ulp = ULPS * torch.finfo(params[n].dtype).eps * params[n].abs()
        excess = ((got - want).abs() - ulp).clamp_min(0)
        assert_close(want + excess, want, rtol, f"step of {n}")
        for j, key in enumerate(core(rule).momentum_keys):
            assert_close(out.momenta[j][i], new_state[key][n], rtol, f"{key} of {n}")
        for j, key in enumerate(core(rule).rms_keys):
            assert_close(out.rms[j][i], new_state[key][n], rtol, f"{key} of {n}")
        if hyper is not None:
            assert out.hyper.log_step[i].shape == (1,) * params[n].dim()
            assert_close(out.hyper.log_step[i], new_state["hypergradient.log_step"][n], rtol, f"log_step of {n}",
                         log=True)
            assert_close(out.hyper.last_dir[i], new_state["hypergradient.last_dir"][n], rtol, f"last_dir of {n}")
        if radial is not None:
            assert_close(out.radial.log_radial[i], new_state["radial.log_radial"][n], rtol,
                         f"log_radial of {n}", log=True)
            # c = <s, w_hat>, s of RMS about the step size: compared at the scale of |s|, as it moves the step
            c_want = new_state["radial.last_radial"][n]
            step_rms = float((params[n] - new_params[n]).pow(2).mean().sqrt()) if params[n].dim() else 1.0
            err = (out.radial.last_radial[i] - c_want).abs().max().item() / (step_rms * max(params[n].numel(), 1) ** 0.5)
            assert err <= rtol, f"last_radial of {n}: error {err:.2e} > {rtol:.0e} of |u|"
    return new_params, new_state


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("horizon", [40, None])
def test_one_step_matches_update_for_every_shipped_file(name, dtype, backend, horizon):
    rule = learned_opt.load(name).to(dtype)
    g = torch.Generator().manual_seed(0)
    params = {n: torch.randn(s, generator=g, dtype=dtype) for n, s in shapes().items()}
    state = rule.init(params, horizon=horizon) if horizon else rule.init(params)
    for _ in range(6):   # step 0 (no last step yet) and steps with the controllers active
        # a gradient with a part along w and a part along the last gradient: every controller signal moves
        noise = {n: torch.randn(p.shape, generator=g, dtype=dtype) for n, p in params.items()}
        grads = {n: 1e-2 * noise[n] + 3e-3 * params[n] for n in params}
        params, state = check_step(rule, params, grads, state, backend, RTOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_writes_the_same_numbers_into_the_given_tensors(backend):
    rule = learned_opt.load("celo")
    g = torch.Generator().manual_seed(1)
    params = {n: torch.randn(s, generator=g) for n, s in shapes().items()}
    names = list(params)
    state = rule.init(params, horizon=20)
    grads = {n: torch.randn(p.shape, generator=g) for n, p in params.items()}
    for _ in range(2):
        params, state = reference_update(rule, grads, state, params)
    args = fused_args(rule, state, names)
    before = [t.clone() for t in [*params.values(), *args[0][0], *args[4].last_dir]]
    pure = fused_celo_step([params[n] for n in names], [grads[n] for n in names], *args[:2], state["step"], 20,
                           *args[2:], backend=backend)
    copies = {n: p.clone() for n, p in params.items()}
    momenta, rms, weights, options, hyper, radial = fused_args(rule, {k: ({n: t.clone() for n, t in v.items()}
                                                                          if isinstance(v, dict) else v)
                                                                      for k, v in state.items()}, names)
    given = [copies[n] for n in names]
    out = fused_celo_step(given, [grads[n] for n in names], momenta, rms, state["step"], 20, weights, options,
                          hyper, radial, inplace=True, backend=backend)
    assert all(a is b for a, b in zip(out.params, given)) and out.momenta[0][0] is momenta[0][0]
    assert out.hyper.log_step[0] is hyper.log_step[0] and out.radial.last_radial[0] is radial.last_radial[0]
    for a, b in zip([*out.params, *out.hyper.last_dir, *out.radial.log_radial],
                    [*pure.params, *pure.hyper.last_dir, *pure.radial.log_radial]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(before, [*params.values(), *args[0][0], *args[4].last_dir]):   # the pure call left them alone
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class Net(nn.Module):
    """A small conv + attention-shaped model: conv, embedding, qkv, LayerNorm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.embed = nn.Linear(36, 16)
        self.qkv = nn.Linear(16, 48)
        self.ln = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(2)                          # (B, 4, 36) tokens
        h = self.embed(h)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / 4, dim=-1)
        return self.head(self.ln(h + att @ v).mean(1))


def run_both(rule, names, start, grads_at, steps, backend):
    """``steps`` steps of ``update`` and of the fused step (in place, on its own state) from ``start``."""
    ref = {n: t.clone() for n, t in start.items()}
    state = rule.init(ref, horizon=steps)
    fused = [start[n].clone() for n in names]
    momenta, rms, weights, options, hyper, radial = fused_args(rule, state, names)
    for t in range(steps):
        gr = grads_at([ref[n] for n in names], t)
        ref, state = reference_update(rule, dict(zip(names, gr)), state, ref)
        out = fused_celo_step(fused, grads_at(fused, t), momenta, rms, t, steps, weights, options, hyper, radial,
                              inplace=True, backend=backend)
        momenta, rms, hyper, radial = out.momenta, out.rms, out.hyper, out.radial
    moved = max((ref[n] - start[n]).abs().max().item() for n in names)
    assert moved > 0.05   # the run went somewhere
    return ref, dict(zip(names, fused))


@pytest.mark.parametrize("backend", BACKENDS)
def test_200_steps_on_the_digits_mlp_stay_within_1e_3(backend):
    task = learned_opt.make_task("mlp", dataset="digits")
    start = task.init_params(torch.Generator().manual_seed(0))
    names = list(start)
    batches = [task.sample_batch(torch.Generator().manual_seed(t)) for t in range(200)]

    def grads_at(values, t):
        ps = [v.clone().requires_grad_() for v in values]
        return list(torch.autograd.grad(task.loss(dict(zip(names, ps)), batches[t]), ps))

    ref, fused = run_both(learned_opt.load("celo").double(), names, start, grads_at, 200, backend)
    for n in names:
        torch.testing.assert_close(fused[n], ref[n], rtol=1e-3, atol=1e-3, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_200_steps_on_a_conv_attention_net_stay_within_1e_3(backend):
    """float64, on minibatches of a data set the net cannot memorise in 200 steps. In float32 both fused
    paths end 0.01-0.1 from today's update on this net although every single step agrees (the one-step
    test): a scale-free rule on a small net amplifies rounding (on a loss driven to ~0 the gradients are
    rounding noise, which it follows). No 0-d tensor here: normalised over one coordinate its features are
    signs and its step is a sign, which one rounding-made flip changes (the one-step test covers it)."""
    torch.manual_seed(0)
    net = Net().double()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2048, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (2048,), generator=g)
    picks = [torch.randint(0, 2048, (32,), generator=g) for _ in range(200)]
    names = [n for n, _ in net.named_parameters()]
    start = {n: p.detach().clone() for n, p in net.named_parameters()}

    def grads_at(values, t):
        ps = [v.clone().requires_grad_() for v in values]
        out = torch.func.functional_call(net, dict(zip(names, ps)), (x[picks[t]],))
        return list(torch.autograd.grad(nn.functional.cross_entropy(out, y[picks[t]]), ps))

    ref, fused = run_both(learned_opt.load("celo"), names, start, grads_at, 200, backend)
    for n in names:
        torch.testing.assert_close(fused[n], ref[n], rtol=1e-3, atol=1e-3, msg=lambda m: f"{n}: {m}")


@pytest.mark.skipif(not KERNEL, reason=f"C kernel unavailable: {WHY}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["celo_general", "celo_radial"])
def test_members_match_update_members(name, dtype, monkeypatch):
    """P members, each with its own perturbed meta-parameters, in one call: update_members' numbers (its own
    path, with the fused step turned off), and update_members itself takes the fused step."""
    P = 5
    rule = learned_opt.load(name).to(dtype)
    g = torch.Generator().manual_seed(3)
    base = {n: s for n, s in shapes().items() if n != "scalar"}
    meta = {k: v.detach()[None] + 0.05 * torch.randn((P, *v.shape), generator=g, dtype=dtype)
            for k, v in rule.named_parameters()}
    params = {n: torch.randn((P, *s), generator=g, dtype=dtype) for n, s in base.items()}
    from learned_opt.tasks.population import stack_trees   # each member's own state, stacked (as ES/PES do)
    state = stack_trees([rule.init({n: p[i] for n, p in params.items()}, horizon=30) for i in range(P)])
    names = list(params)
    for t in range(4):
        grads = {n: 1e-2 * torch.randn(p.shape, generator=g, dtype=dtype) + 3e-3 * p for n, p in params.items()}
        with torch.no_grad():
            monkeypatch.setenv("LEARNED_OPT_FUSED", "off")
            new_params, new_state = rule.update_members(meta, grads, state, params)
            monkeypatch.delenv("LEARNED_OPT_FUSED")
            fast_params, fast_state = rule.update_members(meta, grads, state, params)
        for n in params:
            torch.testing.assert_close(fast_params[n], new_params[n], rtol=RTOL[dtype], atol=RTOL[dtype])
        assert fast_state.keys() == new_state.keys()
        prefix = "core." if isinstance(rule, Controlled) else ""
        weights = {k: v.expand(P, *v.shape) for k, v in core(rule).state_dict().items()}
        weights.update({k[len(prefix):]: v for k, v in meta.items() if k.startswith(prefix)})
        _, options, ctl = celo_inputs(rule)
        hyper = radial = None
        if ctl["hyper"]:
            hyper = Hyper([state["hypergradient.log_step"][n] for n in names],
                          [state["hypergradient.last_dir"][n] for n in names],
                          meta["controllers.hypergradient.log_gain"], ctl["hyper"]["range"], ctl["hyper"]["shrink"],
                          ctl["hyper"]["floor"])
        if ctl["radial"]:
            radial = Radial([state["radial.log_radial"][n] for n in names],
                            [state["radial.last_radial"][n] for n in names], **ctl["radial"])
        out = fused_celo_members([params[n] for n in names], [grads[n] for n in names],
                                 [[state[k][n] for n in names] for k in core(rule).momentum_keys],
                                 [[state[k][n] for n in names] for k in core(rule).rms_keys], t, 30, weights, options,
                                 hyper, radial)
        for i, n in enumerate(names):
            for member in range(P):
                want, got = params[n][member] - new_params[n][member], params[n][member] - out.params[i][member]
                ulp = ULPS * torch.finfo(dtype).eps * params[n][member].abs()
                assert_close(want + ((got - want).abs() - ulp).clamp_min(0), want, RTOL[dtype],
                             f"step of {n}, member {member}")
            if hyper is not None:
                assert_close(out.hyper.log_step[i], new_state["hypergradient.log_step"][n], RTOL[dtype],
                             f"log_step of {n}", log=True)
                assert_close(out.hyper.last_dir[i], new_state["hypergradient.last_dir"][n], RTOL[dtype],
                             f"last_dir of {n}")
            if radial is not None:
                assert_close(out.radial.log_radial[i], new_state["radial.log_radial"][n], RTOL[dtype],
                             f"log_radial of {n}", log=True)
        params, state = new_params, new_state


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_optimizer_steps_like_the_rule_optimizer(backend):
    """FusedCeloOptimizer on an nn.Module takes the steps of baselines.RuleOptimizer over the same rule;
    its state is 8 floats per parameter (plus one value per tensor for each of 3 controller scalars).
    (A plain MLP: in attention's key bias the gradient is zero but for rounding, and a scale-free rule
    turns that rounding into O(1) features, so two roundings of the same step differ there by a step.)"""
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [B.RuleOptimizer(nets[0].parameters(), learned_opt.load("celo")),
            FusedCeloOptimizer(nets[1].parameters(), learned_opt.load("celo"), backend=backend)]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 20, generator=g), torch.randint(0, 3, (64,), generator=g)
    for _ in range(5):
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    floats = sum(t.numel() for st in opts[1].state.values() for v in st.values()
                 for t in (v if isinstance(v, list) else [v]) if isinstance(t, torch.Tensor))
    params = list(nets[1].parameters())
    assert floats == 8 * sum(p.numel() for p in params) + 3 * len(params)


def test_bad_input_is_rejected_with_the_field_named():
    rule = learned_opt.load("celo")
    params = {"w": torch.randn(4, 3)}
    state = rule.init(params)
    momenta, rms, weights, options, hyper, radial = fused_args(rule, state, ["w"])
    with pytest.raises(ValueError, match="grads\\[0\\] has shape"):
        fused_celo_step([params["w"]], [torch.randn(3, 4)], momenta, rms, 0, None, weights, options, hyper, radial)
    bad = Hyper([torch.zeros(4, 3)], hyper.last_dir, hyper.log_gain, hyper.range, hyper.shrink)
    with pytest.raises(ValueError, match="hyper.log_step\\[0\\] has shape"):
        fused_celo_step([params["w"]], [torch.randn(4, 3)], momenta, rms, 0, None, weights, options, bad, radial)
    with pytest.raises(ValueError, match="momenta has 4 lists"):
        fused_celo_step([params["w"]], [torch.randn(4, 3)], momenta[:4], rms, 0, None, weights, options)
    with pytest.raises(ValueError, match="backend="):
        fused_celo_step([params["w"]], [torch.randn(4, 3)], momenta, rms, 0, None, weights, options, backend="cuda")
    half = [[t.half() for t in group] for group in momenta]
    with pytest.raises(ValueError, match="backend='c' cannot serve"):
        fused_celo_step([params["w"].half()], [torch.randn(4, 3).half()], half, [[t.half() for t in group] for group in rms],
                        0, None, weights, options, backend="c")
    empty = fused_celo_step([], [], [[]] * 5, [[]] * 2, 0, None, weights, options, Hyper([], [], 0.0), None)
    assert empty.params == [] and empty.hyper.log_step == [] and empty.radial is None
    with pytest.raises(ValueError, match="controllers \\['snr'"):
        celo_inputs(Controlled(Celo(), [{"name": "snr"}]))
    with pytest.raises(ValueError, match="momentum"):
        celo_inputs(Controlled(Celo(), [{"name": "hypergradient", "momentum": 0.5}]))


def test_other_architectures_take_the_torch_formulation():
    """Options the C kernel is not built for (3 decays, one hidden layer) still give update's numbers."""
    torch.manual_seed(0)
    rule = Celo(hidden_sizes=(6,), decays=(0.5, 0.9, 0.99), rms_decays=(0.999,), step_timescales=(10, 100),
                weight_decay=0.1).double()
    g = torch.Generator().manual_seed(0)
    params = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes().items()}
    state = rule.init(params, horizon=10)
    for _ in range(3):
        grads = {n: torch.randn(p.shape, generator=g, dtype=torch.float64) for n, p in params.items()}
        params, state = check_step(rule, params, grads, state, "auto", 1e-10)
    assert isinstance(celo_inputs(rule)[1], CeloOptions)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", FILES)
def test_fused_step_on_cuda_matches_update(name):
    rule = learned_opt.load(name, "cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    params = {n: torch.randn(s, generator=g, device="cuda") for n, s in shapes().items()}
    state = rule.init(params, horizon=30)
    for _ in range(4):
        grads = {n: 1e-2 * torch.randn(p.shape, generator=g, device="cuda") + 3e-3 * p for n, p in params.items()}
        params, state = check_step(rule, params, grads, state, "auto", 1e-5)


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_update_under_no_grad_takes_the_fused_step_and_gives_the_same_numbers(name, dtype, monkeypatch):
    """What evaluation and the torch.optim adapter run: ``rule.update`` under ``no_grad`` goes through the
    fused step (where the C kernel serves it) and agrees with the differentiable path; ``LEARNED_OPT_FUSED=off``
    turns it off."""
    import learned_opt.optimizers.fused as F
    rule = learned_opt.load(name).to(dtype)
    g = torch.Generator().manual_seed(2)
    params = {n: torch.randn(s, generator=g, dtype=dtype) for n, s in shapes().items()}
    state = rule.init(params, horizon=30)
    calls = []
    real = F.fused_celo_step
    monkeypatch.setattr(F, "fused_celo_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(4):
        grads = {n: 1e-2 * torch.randn(p.shape, generator=g, dtype=dtype) + 3e-3 * p for n, p in params.items()}
        want, want_state = reference_update(rule, grads, state, params)
        with torch.no_grad():
            got, got_state = rule.update(grads, state, params)
        for n in params:
            assert_close(params[n] - got[n] + (params[n] - want[n]) * 0, params[n] - want[n],
                         RTOL[dtype] + ULPS * torch.finfo(dtype).eps * float(params[n].abs().max() /
                                                                               (params[n] - want[n]).abs().max()),
                         f"step of {n}")
        assert got_state.keys() == want_state.keys()
        params, state = want, want_state
    assert len(calls) == (4 if KERNEL else 0)
    monkeypatch.setenv("LEARNED_OPT_FUSED", "off")
    with torch.no_grad():
        rule.update(grads, state, params)
    assert len(calls) == (4 if KERNEL else 0)


@pytest.mark.skipif(not KERNEL, reason=f"C kernel unavailable: {WHY}")
@pytest.mark.parametrize("name", FILES)
def test_the_adapter_takes_the_fused_step_in_place_with_the_rules_numbers(name, monkeypatch):
    """baselines.RuleOptimizer over a shipped file calls its update_ (the fused step in place) and follows the
    differentiable update's trajectory; with an lr scheduler's multiplier too (folded into the step, the radial
    coefficient kept in the step's own units)."""
    import learned_opt.optimizers.fused as F
    calls = []
    real = F.fused_celo_step
    monkeypatch.setattr(F, "fused_celo_step", lambda *a, **k: calls.append(k.get("inplace")) or real(*a, **k))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 3)).double()
    rule = learned_opt.load(name).double()
    opt = B.RuleOptimizer(net.parameters(), rule, lr=0.7)
    names = [n for n, _ in net.named_parameters()]
    ref_rule = learned_opt.load(name).double()
    ref_rule.lr = 0.7   # the adapter's lr is the rule's outer multiplier
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    state = ref_rule.init(params)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 20, generator=g, dtype=torch.float64), torch.randint(0, 3, (64,), generator=g)
    for _ in range(6):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        grads = {n: p.grad.clone() for n, p in zip(names, net.parameters())}
        opt.step()
        params, state = reference_update(ref_rule, grads, state, params)
        for n, p in zip(names, net.parameters()):
            torch.testing.assert_close(p.detach(), params[n], rtol=1e-10, atol=1e-12)
    assert calls and all(calls)   # every step went through the fused step, in place
    first = next(net.parameters())
    assert opt.state[first].keys() == {"step", *(k for k in state if k not in ("step",))}
