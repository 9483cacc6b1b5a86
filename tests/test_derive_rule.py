"""derive_checkpoint / experiments/derive_rule.py: a learned optimizer with changed options (the core's or a
controller's), shifted scalar meta-parameters and reset ones, every other weight copied, its origin recorded."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import learned_opt
from learned_opt.optimizers import Celo, Controlled, make_learned_rule
from learned_opt.optimizers.files import CheckpointError, derive_checkpoint, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"w": (6, 5), "v": (3, 4, 2), "b": (5,)}
HD = {"hypergradient": {"enabled": True, "gain": 0.1}}


@pytest.fixture
def source(tmp_path):
    torch.manual_seed(0)
    rule = make_learned_rule("celo", hidden_sizes=[4], controllers=HD)
    with torch.no_grad():   # meta-parameters away from their initial values, so a copy is visible
        for p in rule.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return save_checkpoint(tmp_path / "src.pt", rule, 7, {"optimizer": {"name": "celo"}, "seed": 3})


def tree(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in SHAPES.items()}


def first_steps(rule) -> dict[str, torch.Tensor]:
    """The first update's step, in float64 (steps of ~1e-3 on weights of ~1)."""
    rule, params, grads = rule.double(), tree(0), tree(1)
    with torch.no_grad():
        new, _ = rule.update(grads, rule.init(params), params)
    return {k: params[k] - new[k] for k in params}


def test_a_shift_of_log_scale_by_one_makes_every_step_e_times_larger(source, tmp_path):
    out = derive_checkpoint(source, tmp_path / "d.pt", shift={"core.log_scale": 1.0})
    a, b = learned_opt.load(source), learned_opt.load(out)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if k == "core.log_scale":
            assert float(sb[k]) == pytest.approx(float(sa[k]) + 1.0, abs=1e-6)
        else:
            assert torch.equal(sa[k], sb[k]), k
    factor = math.exp(float(sb["core.log_scale"].double() - sa["core.log_scale"].double()))   # e, up to rounding
    assert factor == pytest.approx(math.e, rel=1e-6)
    steps_a, steps_b = first_steps(a), first_steps(b)
    for k in SHAPES:
        torch.testing.assert_close(steps_b[k], steps_a[k] * factor, rtol=1e-9, atol=1e-12)
    ck, src = load_checkpoint(out), load_checkpoint(source)
    assert ck["meta_step"] == 7 and ck["config"] == src["config"]
    assert ck["derived_from"] == {"source": str(source), "source_sha256": src["sha256"], "set": {},
                                  "shift": {"core.log_scale": 1.0}}


def test_set_changes_a_controller_option_and_keeps_the_weights(source, tmp_path):
    out = derive_checkpoint(source, tmp_path / "d.pt", set_config={"hypergradient.shrink": 2.0})
    a, b = learned_opt.load(source), learned_opt.load(out)
    assert b.controllers["hypergradient"].shrink == 2.0 and a.controllers["hypergradient"].shrink == 1.0
    want = a.config()
    want["controllers"][0]["shrink"] = 2.0
    assert want == b.config()
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_set_on_the_core_and_on_the_outer_multiplier(source, tmp_path):
    out = derive_checkpoint(source, tmp_path / "d.pt", set_config={"core.step_mult": 0.002, "lr": 0.5})
    b = learned_opt.load(out)
    assert b.core.step_mult == 0.002 and b.lr == 0.5 and b.core.lr == 1.0


def test_a_new_controller_is_added_in_the_canonical_order_with_its_initial_values(tmp_path, source):
    torch.manual_seed(1)
    plain = make_learned_rule("celo", hidden_sizes=[4])
    src = save_checkpoint(tmp_path / "plain.pt", plain, 0, {})
    out = derive_checkpoint(src, tmp_path / "hd.pt", set_config={"hypergradient.gain": 0.2})
    rule = learned_opt.load(out)
    assert isinstance(rule, Controlled) and isinstance(rule.core, Celo)
    assert float(rule.controllers["hypergradient"].log_gain) == pytest.approx(math.log(0.2))
    for k, v in plain.state_dict().items():
        assert torch.equal(rule.state_dict()[f"core.{k}"], v), k
    both = learned_opt.load(derive_checkpoint(source, tmp_path / "both.pt", set_config={"radial.gain": 0.3}))
    assert list(both.controllers) == ["radial", "hypergradient"]   # radial acts before the step size


def test_reset_gives_the_core_its_initial_weights_and_keeps_the_rest(source, tmp_path):
    out = derive_checkpoint(source, tmp_path / "init.pt", reset=["core.layers", "core.skip"], seed=5)
    a, b = learned_opt.load(source), learned_opt.load(out)
    torch.manual_seed(5)
    fresh = make_learned_rule("celo", hidden_sizes=[4], controllers=HD)
    for k, v in b.state_dict().items():
        want = fresh.state_dict()[k] if k.startswith(("core.layers", "core.skip")) else a.state_dict()[k]
        assert torch.equal(v, want), k
    assert not torch.equal(a.state_dict()["core.skip"], b.state_dict()["core.skip"])
    assert load_checkpoint(out)["derived_from"]["reset"] == ["core.layers", "core.skip"]
    with pytest.raises(ValueError, match="no meta-parameter.*starts with 'core.lay'"):
        derive_checkpoint(source, tmp_path / "x.pt", reset=["core.lay"])


def test_bad_requests_are_clear_errors_and_write_nothing(source, tmp_path):
    dest = tmp_path / "d.pt"
    with pytest.raises(CheckpointError, match="cannot rebuild"):
        derive_checkpoint(source, dest, set_config={"core.no_such_option": 1})
    with pytest.raises(CheckpointError, match="hypergradient.shrink"):
        derive_checkpoint(source, dest, set_config={"hypergradient.shrink": -1.0})
    with pytest.raises(CheckpointError, match="do not fit"):
        derive_checkpoint(source, dest, set_config={"core.hidden_sizes": [3]})
    with pytest.raises(ValueError, match="not a meta-parameter.*core.log_scale"):
        derive_checkpoint(source, dest, shift={"core.log_scal": 1.0})
    with pytest.raises(ValueError, match="only scalars"):
        derive_checkpoint(source, dest, shift={"core.skip": 1.0})
    with pytest.raises(CheckpointError, match="not found"):
        derive_checkpoint(tmp_path / "missing.pt", dest)
    assert not dest.exists()


def test_the_command_line(source, tmp_path):
    script = str(ROOT / "experiments" / "derive_rule.py")
    dest = tmp_path / "cli.pt"
    ok = subprocess.run([sys.executable, script, str(source), str(dest), "--set", "hypergradient.shrink=2",
                         "--shift", "core.log_scale=-0.5"], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    rule = learned_opt.load(dest)
    assert rule.controllers["hypergradient"].shrink == 2.0
    assert float(rule.core.log_scale) == pytest.approx(float(learned_opt.load(source).core.log_scale) - 0.5, abs=1e-6)
    before = dest.read_bytes()
    bad = subprocess.run([sys.executable, script, str(source), str(dest), "--shift", "core.log_scale=big"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0 and "must be a number" in bad.stderr
    bad = subprocess.run([sys.executable, script, str(source), str(dest), "--set", "core.hidden_sizes=[3]"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "error:" in bad.stderr and "do not fit" in bad.stderr
    assert dest.read_bytes() == before   # the existing file is untouched
