"""kill -9 at random moments, then resume: the same run, bitwise (CPU), as one never interrupted.

Each attempt is a forked process (the imports are paid once) killed with SIGKILL after a random
delay drawn from a seeded generator: it dies wherever it is (inside a meta-step, validation, a
checkpoint or a metrics write, a cell, a tuning search, while starting or while finishing). The
next attempt resumes; after the last kill one attempt runs to the end.
"""
from __future__ import annotations

import copy
import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import torch

from learned_opt.evaluation import evaluate as E
from learned_opt.meta import meta_train

from test_meta_faults import CFG, assert_same_run, without_time

torch.set_num_threads(1)


def _quiet(target, *args) -> None:
    import warnings

    from tqdm import std
    warnings.simplefilter("ignore")  # stale-lock and resume notes are expected here
    # tqdm's write lock holds a multiprocessing semaphore that forked attempts share with each other: an
    # attempt SIGKILLed while holding it would leave every later attempt waiting for it forever. Each
    # attempt takes its own (separate processes, as real runs are, share none).
    std.TqdmDefaultWriteLock.mp_lock = multiprocessing.RLock()
    std.tqdm.set_lock(std.TqdmDefaultWriteLock())
    target(*args)


def run_forked(target, *args) -> float:
    """``target(*args)`` in a forked process, as the attempts run; returns its wall time."""
    proc = multiprocessing.get_context("fork").Process(target=_quiet, args=(target, *args))
    t0 = time.perf_counter()
    proc.start()
    proc.join(300)
    assert proc.exitcode == 0
    return time.perf_counter() - t0


def kill_and_resume(target, make_args, full_seconds: float, kills: int, seed: int) -> int:
    """Run ``target(*make_args(attempt))`` in forked processes, SIGKILLing the first ``kills`` attempts at random
    moments; returns how many were killed while running. The last attempt must finish cleanly.

    Each delay is uniform in (0, full_seconds / kills): the killed attempts together last about half a whole
    run, so on a slow or a fast machine alike the run is still unfinished when most of them die (longer
    delays let the first resumes finish the run, after which nothing is left to kill)."""
    rng = random.Random(seed)
    ctx = multiprocessing.get_context("fork")
    killed = 0
    for attempt in range(kills + 1):
        proc = ctx.Process(target=_quiet, args=(target, *make_args(attempt)))
        proc.start()
        if attempt < kills:
            proc.join(rng.uniform(0.0, full_seconds / kills))
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
                killed += 1
            proc.join(30)
        else:
            proc.join(300)
            assert proc.exitcode == 0, f"the final attempt failed (exit code {proc.exitcode})"
    return killed


def test_meta_training_killed_at_random_moments_resumes_to_the_uninterrupted_run(tmp_path):
    cfg = copy.deepcopy(CFG)
    cfg["meta"]["steps"] = 12
    cfg["checkpoint_every"] = 3
    full = run_forked(meta_train, copy.deepcopy(cfg), tmp_path / "reference")
    run = tmp_path / "killed"
    killed = kill_and_resume(meta_train, lambda attempt: (copy.deepcopy(cfg), run, attempt > 0), full, kills=6, seed=0)
    assert killed >= 3  # most attempts really died mid-run
    assert_same_run(tmp_path / "reference", run)
    assert not (run / ".lock").exists()


TINY = {
    "device": "cpu", "steps": 10, "seeds": [100, 101], "eval_every": 5, "eval_examples": 100, "progress": False,
    "tuning": {"method": "grid", "budget": 2, "seeds": [0], "objective": "final_val_loss", "val_fraction": 0.2,
               "split_seed": 0, "seed": 0},
    "suite": {"digits": {"name": "mlp", "dataset": "digits", "hidden_sizes": [4], "batch_size": 16},
              "quad": {"name": "quadratic", "dim": 4}},
    "optimizers": {"sgd": {"rule": "sgd", "lr": 0.05, "tune": {"lr": [0.01, 0.1]}},
                   "adam": {"rule": "adam", "lr": 0.01, "tune": {"lr": [0.003, 0.03]}}},
    "wandb": {"mode": "disabled"},
}


def evaluation_outputs(run_dir: Path) -> dict:
    cells = {p.name: without_time({k: v for k, v in json.loads(p.read_text()).items() if k != "sha256"})
             for p in (run_dir / "cells").glob("*.json")}  # (the hash covers the wall time too)
    tuning = {p.name: json.loads(p.read_text()) for p in (run_dir / "tuning").glob("*.json")}
    return {"results.csv": (run_dir / "results.csv").read_text(), "summary.md": (run_dir / "summary.md").read_text(),
            "summary.json": without_time(json.loads((run_dir / "summary.json").read_text())),
            "config.json": (run_dir / "config.json").read_text(), "cells": cells, "tuning": tuning}


def test_an_evaluation_killed_at_random_moments_resumes_to_the_uninterrupted_one(tmp_path, monkeypatch):
    # figures are drawn from the results at the end and take most of the time: without them, the kills
    # land among the cells and tuning searches
    monkeypatch.setattr(E, "make_figures", lambda *args, **kwargs: [])
    full = run_forked(E.evaluate, copy.deepcopy(TINY), tmp_path / "reference")
    run = tmp_path / "killed"
    killed = kill_and_resume(E.evaluate, lambda attempt: (copy.deepcopy(TINY), run, attempt > 0), full, kills=6,
                             seed=1)
    assert killed >= 3
    assert evaluation_outputs(run) == evaluation_outputs(tmp_path / "reference")
    assert not (run / ".lock").exists()
