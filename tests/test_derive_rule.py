"""derive_checkpoint / experiments/derive_rule.py: a learned optimizer with changed options and shifted
scalar meta-parameters, every other weight copied, its origin recorded."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import learned_opt
from learned_opt.meta.checkpoint import CheckpointError, derive_checkpoint, load_checkpoint, save_checkpoint
from learned_opt.optimizers import make_learned_rule

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"w": (6, 5), "v": (3, 4, 2), "b": (5,)}


@pytest.fixture
def source(tmp_path):
    torch.manual_seed(0)
    rule = make_learned_rule("celo", hypergradient=0.1, hidden_sizes=[4])
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
    out = derive_checkpoint(source, tmp_path / "d.pt", shift={"log_scale": 1.0})
    a, b = learned_opt.load(source), learned_opt.load(out)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if k == "log_scale":
            assert float(sb[k]) == pytest.approx(float(sa[k]) + 1.0, abs=1e-6)
        else:
            assert torch.equal(sa[k], sb[k]), k
    factor = math.exp(float(sb["log_scale"].double() - sa["log_scale"].double()))   # e, up to float32 rounding
    assert factor == pytest.approx(math.e, rel=1e-6)
    steps_a, steps_b = first_steps(a), first_steps(b)
    for k in SHAPES:
        torch.testing.assert_close(steps_b[k], steps_a[k] * factor, rtol=1e-9, atol=1e-12)
    ck, src = load_checkpoint(out), load_checkpoint(source)
    assert ck["meta_step"] == 7 and ck["config"] == src["config"]
    assert ck["derived_from"] == {"source": str(source), "source_sha256": src["sha256"], "set": {},
                                  "shift": {"log_scale": 1.0}}


def test_set_changes_an_option_and_keeps_the_weights(source, tmp_path):
    out = derive_checkpoint(source, tmp_path / "d.pt", set_config={"hypergradient_shrink": 2.0})
    a, b = learned_opt.load(source), learned_opt.load(out)
    assert b.hypergradient_shrink == 2.0 and a.hypergradient_shrink == 1.0
    assert {**a.config(), "hypergradient_shrink": 2.0} == b.config()
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_an_option_that_adds_a_meta_parameter_starts_it_at_its_initial_value(tmp_path):
    torch.manual_seed(1)
    plain = make_learned_rule("celo", hidden_sizes=[4])
    src = save_checkpoint(tmp_path / "plain.pt", plain, 0, {})
    out = derive_checkpoint(src, tmp_path / "hd.pt", set_config={"hypergradient": 0.2})
    rule = learned_opt.load(out)
    assert float(rule.log_hyper_gain) == pytest.approx(math.log(0.2))
    for k, v in plain.state_dict().items():
        assert torch.equal(rule.state_dict()[k], v), k


def test_bad_requests_are_clear_errors_and_write_nothing(source, tmp_path):
    dest = tmp_path / "d.pt"
    with pytest.raises(CheckpointError, match="cannot rebuild"):
        derive_checkpoint(source, dest, set_config={"no_such_option": 1})
    with pytest.raises(CheckpointError, match="hypergradient_shrink"):
        derive_checkpoint(source, dest, set_config={"hypergradient_shrink": -1.0})
    with pytest.raises(CheckpointError, match="do not fit"):
        derive_checkpoint(source, dest, set_config={"hidden_sizes": [3]})
    with pytest.raises(ValueError, match="not a meta-parameter.*log_scale"):
        derive_checkpoint(source, dest, shift={"log_scal": 1.0})
    with pytest.raises(ValueError, match="only scalars"):
        derive_checkpoint(source, dest, shift={"skip": 1.0})
    with pytest.raises(CheckpointError, match="not found"):
        derive_checkpoint(tmp_path / "missing.pt", dest)
    assert not dest.exists()


def test_the_command_line(source, tmp_path):
    script = str(ROOT / "experiments" / "derive_rule.py")
    dest = tmp_path / "cli.pt"
    ok = subprocess.run([sys.executable, script, str(source), str(dest), "--set", "hypergradient_shrink=2",
                         "--shift", "log_scale=-0.5"], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    rule = learned_opt.load(dest)
    assert rule.hypergradient_shrink == 2.0
    assert float(rule.log_scale) == pytest.approx(float(learned_opt.load(source).log_scale) - 0.5, abs=1e-6)
    before = dest.read_bytes()
    bad = subprocess.run([sys.executable, script, str(source), str(dest), "--shift", "log_scale=big"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0 and "must be a number" in bad.stderr
    bad = subprocess.run([sys.executable, script, str(source), str(dest), "--set", "hidden_sizes=[3]"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "error:" in bad.stderr and "do not fit" in bad.stderr
    assert dest.read_bytes() == before   # the existing file is untouched
