"""Typed results: one evaluation cell (an optimizer on a task from one seed).

A :class:`CellResult` is what :func:`learned_opt.evaluation.suite.run_cell` returns, what the
evaluation stores in ``cells/<optimizer>__<task>__<seed>.json`` (:meth:`CellResult.to_json` /
:meth:`CellResult.from_json`; the file format is unchanged), and what experiments read back with
:func:`read_cells` instead of opening cell files themselves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .metrics import padded
from .sealed import read_sealed

_REQUIRED = ("seed", "train_loss", "diverged", "seconds", "evals")


@dataclass
class CellResult:
    """One run of an optimizer on a task from one seed.

    Attributes:
        seed: the seed of the initialisation and the minibatches.
        train_loss: the minibatch loss before each update (shorter than the budget when the run diverged).
        diverged: whether the loss became non-finite; ``diverged_at`` is the step where it did.
        seconds: wall time of the run.
        evals: periodic test metrics, ``{"step": s, "test_loss": ..., "test_accuracy": ...}``.
        final_train_loss: the loss on the whole training split after the run (None when it diverged).
        final_test: the test metrics after the run (``{"loss": ..., "accuracy": ...}``; empty when it diverged).
        hparams: the hyperparameters the optimizer ran with (set by the evaluation).
    """
    seed: int
    train_loss: np.ndarray
    diverged: bool
    seconds: float
    evals: list[dict[str, float]] = field(default_factory=list)
    diverged_at: int | None = None
    final_train_loss: float | None = None
    final_test: dict[str, float] = field(default_factory=dict)
    hparams: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.train_loss = np.asarray(self.train_loss, dtype=float)

    def final(self, metric: str, missing: float = math.nan) -> float:
        """A metric after the run: ``train_loss`` (whole training split) or ``test_<name>`` (e.g.
        ``test_accuracy``); ``missing`` when the run diverged or the task has no such metric."""
        if metric == "train_loss":
            value = self.final_train_loss
        elif metric.startswith("test_"):
            value = self.final_test.get(metric[len("test_"):])
        else:
            raise ValueError(f"metric={metric!r} is not allowed; allowed: train_loss, test_<name>")
        return missing if value is None else float(value)

    def eval_series(self, key: str) -> tuple[list[int], np.ndarray]:
        """The steps of the periodic evaluations that have ``key`` and its values there."""
        points = [(e["step"], e[key]) for e in self.evals if key in e]
        return [s for s, _ in points], np.asarray([v for _, v in points], dtype=float)

    # ------------------------------------------------------------------ the cell file
    def to_json(self) -> dict[str, Any]:
        """The record stored in a cell file (plain JSON values)."""
        out: dict[str, Any] = {"seed": self.seed, "train_loss": [float(v) for v in self.train_loss],
                               "diverged": bool(self.diverged), "diverged_at": self.diverged_at,
                               "seconds": float(self.seconds), "evals": list(self.evals)}
        out.update({f"final_test_{k}": v for k, v in self.final_test.items()})
        if self.final_train_loss is not None:
            out["final_train_loss_full"] = self.final_train_loss
        if self.hparams is not None:
            out["hparams"] = self.hparams
        return out

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> "CellResult":
        """The cell a record describes; ``ValueError`` naming what is missing or malformed."""
        missing = [k for k in _REQUIRED if k not in record]
        if missing:
            raise ValueError(f"a cell record needs {', '.join(_REQUIRED)}; missing: {', '.join(missing)}")
        if not isinstance(record["train_loss"], list) or not isinstance(record["evals"], list):
            raise ValueError("a cell record's train_loss and evals must be lists")
        final_test = {k[len("final_test_"):]: v for k, v in record.items() if k.startswith("final_test_")}
        return cls(seed=record["seed"], train_loss=np.asarray(record["train_loss"], dtype=float),
                   diverged=bool(record["diverged"]), seconds=float(record["seconds"]), evals=record["evals"],
                   diverged_at=record.get("diverged_at"), final_train_loss=record.get("final_train_loss_full"),
                   final_test=final_test, hparams=record.get("hparams"))


def loss_curves(cells: Sequence[CellResult], length: int) -> np.ndarray:
    """The cells' training-loss curves as one ``(cells, length)`` array, NaN after a run stopped."""
    return padded([c.train_loss for c in cells], length)


def read_cells(run_dir: str | Path, entry: str, task: str, seeds: Sequence[int]) -> list[CellResult]:
    """The cells an evaluation in ``run_dir`` stored for optimizer ``entry`` on ``task``, one per seed;
    ``FileNotFoundError`` or ``ValueError`` naming the file when one is absent or damaged."""
    out = []
    for seed in seeds:
        path = Path(run_dir) / "cells" / f"{entry}__{task}__{seed}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such cell; did the evaluation in {run_dir} finish?")
        record = read_sealed(path, expect={"seed": seed})
        if record is None:
            raise ValueError(f"{path} is damaged; run the evaluation again with resume=true to recompute it")
        try:
            out.append(CellResult.from_json(record))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
    return out
