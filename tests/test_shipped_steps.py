"""Every shipped learned optimizer still gives the steps it gave when it was shipped: its trajectory on a fixed
problem (``tests/shipped_steps.py``) against the one recorded before the learned rules were split into a core
and controllers (``tests/data/shipped_steps.pt``)."""
from __future__ import annotations

import pytest
import torch

import learned_opt
from shipped_steps import RECORD, shipped_names, trajectory

RECORDED = torch.load(RECORD, weights_only=True)


def test_every_shipped_file_was_recorded():
    assert sorted(RECORDED) == shipped_names()


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_shipped_file_gives_its_recorded_steps(name):
    now = torch.stack(trajectory(learned_opt.load(name)))
    then = RECORDED[name]
    assert now.shape == then.shape
    # float64 throughout: only the order of float operations may differ
    torch.testing.assert_close(now, then, rtol=1e-10, atol=1e-12)
    assert not torch.equal(then[0], then[-1])   # the rule moved the parameters
