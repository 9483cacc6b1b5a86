"""Atomic writes: all or nothing, no stray temporary files, an ordinary file mode."""
from __future__ import annotations

import os
import stat

import pytest
import torch

from learned_opt import utils


def test_atomic_save_round_trip_and_mode(tmp_path):
    path = utils.atomic_save({"w": torch.arange(3.0)}, tmp_path / "sub" / "ckpt.pt")
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3.0))
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~utils._UMASK  # readable like any file the user writes
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = utils.atomic_write_text("old", tmp_path / "a.json")

    class Boom:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        utils._atomic_write(path, lambda f: (f.write("half"), str(Boom())), "w")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.json"]
