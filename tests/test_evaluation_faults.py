"""Evaluation under faults: bad configs fail before any cell, damaged cells are named and recomputed, a learned
optimizer's file that changes is caught, a second process is refused."""
from __future__ import annotations

import copy
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from learned_opt.evaluation import evaluate as E
from learned_opt.evaluation import suite as S
from learned_opt.meta.checkpoint import CheckpointError, save_checkpoint
from learned_opt.optimizers import make_learned_rule
from learned_opt.runlock import RunLock, RunLocked
from learned_opt.schema import ConfigError

from test_kill9 import TINY, evaluation_outputs

torch.set_num_threads(1)

SMALL = {**copy.deepcopy(TINY), "suite": {"quad": {"name": "quadratic", "dim": 4}},
         "optimizers": {"adam": {"rule": "adam", "lr": 0.01, "tune": {"lr": [0.003, 0.03]}}}}


def learned_file(path: Path, lr: float) -> str:
    torch.manual_seed(0)
    save_checkpoint(path, make_learned_rule("learned_adam", lr=lr), 0, {})
    return str(path)


def no_figures(monkeypatch) -> None:
    monkeypatch.setattr(E, "make_figures", lambda *args, **kwargs: [])


@pytest.mark.parametrize("mutate,match", [
    (lambda c: c["tuning"].update(method="bayes"), "tuning.method='bayes'.*grid, random"),
    (lambda c: c["tuning"].update(objective="auc"), "tuning.objective='auc'.*final_val_loss"),
    (lambda c: c["optimizers"]["sgd"]["tune"].update(lr=[-0.1, 1.0]), "optimizers.sgd.tune.*lr=-0.1.*log scale"),
    (lambda c: c["optimizers"]["sgd"].update(tune={"momentum": [0.5, 1.5]}), "optimizers.sgd.tune.*momentum=1.5"),
    (lambda c: c["tuning"].update(budget=0), "tuning.budget=0"),
    (lambda c: c["tuning"].update(metod="grid"), "tuning.metod='grid': unknown key.*did you mean tuning.method"),
    (lambda c: c.update(stepz=3), "stepz=3: unknown key.*did you mean steps"),
    (lambda c: c.update(seeds="abc"), "seeds='abc'"),
    (lambda c: c.update(seeds=[100, 100]), "seeds=\\[100, 100\\].*distinct"),
    (lambda c: c.update(eval_every=-1), "eval_every=-1"),
    (lambda c: c.update(steps=2.5), "steps=2.5"),
    (lambda c: c["tuning"].update(val_fraction=1.0), "tuning.val_fraction=1.0"),
    (lambda c: c["optimizers"]["sgd"].update(lrr=0.1),
     "optimizers.sgd.lrr=0.1.*takes no option 'lrr'.*optimizers.sgd.lr"),
    (lambda c: c["optimizers"]["sgd"].update(lr="0.1"), "optimizers.sgd.*lr='0.1'"),
    (lambda c: c["suite"]["digits"].update(hiden_sizes=[4]),
     "suite.digits.hiden_sizes.*did you mean suite.digits.hidden_sizes"),
    (lambda c: c["suite"]["quad"].update(target_loss="low"), "suite.quad.target_loss='low'"),
    (lambda c: c["suite"]["quad"].update(device="cpu"), "suite.quad.device='cpu'.*takes no option 'device'"),
    (lambda c: c.update(wandb={"mode": "offline", "entity": 3}), "wandb.entity=3"),
])
def test_a_bad_evaluation_config_fails_before_the_run_directory_is_touched(tmp_path, mutate, match):
    cfg = copy.deepcopy(TINY)
    mutate(cfg)
    with pytest.raises(ConfigError, match=match):
        E.evaluate(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_learned_entry_takes_only_its_checkpoint(tmp_path):
    cfg = copy.deepcopy(SMALL)
    cfg["optimizers"]["lopt"] = {"checkpoint": learned_file(tmp_path / "l.pt", 0.01), "lr": 0.5}
    with pytest.raises(ConfigError, match="optimizers.lopt.lr=0.5: unknown key.*only `checkpoint`"):
        E.evaluate(cfg, tmp_path / "run")


def test_after_a_rejected_config_the_fixed_one_runs_in_the_same_directory(tmp_path, monkeypatch):
    """Today's failure mode: a bad tuning.method used to fail after the @default cells, and the half-made
    directory then refused both a rerun and resume=true."""
    no_figures(monkeypatch)
    bad = copy.deepcopy(SMALL)
    bad["tuning"]["method"] = "bayes"
    with pytest.raises(ConfigError):
        E.evaluate(bad, tmp_path / "run")
    E.evaluate(copy.deepcopy(SMALL), tmp_path / "run")
    assert len(list((tmp_path / "run" / "cells").glob("*.json"))) == 2 * 2


def test_damaged_cell_and_tuning_files_are_named_and_computed_again(tmp_path, monkeypatch):
    no_figures(monkeypatch)
    E.evaluate(copy.deepcopy(TINY), tmp_path / "ref")
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tmp_path / "ref", run)
    cells = sorted((run / "cells").glob("*.json"))
    cells[0].write_text(cells[0].read_text()[:40])                        # cut short
    text = cells[1].read_text()
    i = text.index('"train_loss": [') + len('"train_loss": [') + 3
    cells[1].write_text(text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1:])  # one digit changed
    cells[2].write_text("[]")                                             # not a record
    rec = json.loads(cells[3].read_text())
    rec.pop("sha256")
    rec["seed"] = 999                                                     # another cell's content (legacy, no hash)
    cells[3].write_text(json.dumps(rec))
    tuning = sorted((run / "tuning").glob("*.json"))[0]
    tuning.write_text("{")
    with pytest.warns(RuntimeWarning) as record:
        E.evaluate(copy.deepcopy(TINY), run, resume=True)
    messages = "\n".join(str(w.message) for w in record)
    for damaged in (*cells[:4], tuning):
        assert f"{damaged} is damaged" in messages
    assert evaluation_outputs(run) == evaluation_outputs(tmp_path / "ref")


def test_resuming_a_finished_evaluation_rewrites_nothing(tmp_path):
    run = tmp_path / "run"
    summary = E.evaluate(copy.deepcopy(SMALL), run)
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert (run / "scores.png") in files
    again = E.evaluate(copy.deepcopy(SMALL), run, resume=True)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files
    assert again == json.loads(json.dumps(summary))
    # summary.json is written last: without it (stopped while drawing), the outputs are made again
    (run / "summary.json").unlink()
    (run / "scores.png").unlink()
    E.evaluate(copy.deepcopy(SMALL), run, resume=True)
    assert (run / "scores.png").exists() and (run / "summary.json").exists()


def test_a_learned_optimizer_file_replaced_before_the_resume_is_refused(tmp_path, monkeypatch):
    no_figures(monkeypatch)
    cfg = copy.deepcopy(SMALL)
    cfg["optimizers"]["lopt"] = {"checkpoint": learned_file(tmp_path / "lopt.pt", 0.01)}
    real = E.run_cell
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(E, "run_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        E.evaluate(copy.deepcopy(cfg), tmp_path / "run")
    monkeypatch.setattr(E, "run_cell", real)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["checkpoint_sha256"]
    assert recorded == {"lopt": S.file_sha256(tmp_path / "lopt.pt")}
    learned_file(tmp_path / "lopt.pt", 0.05)  # another optimizer under the same name
    with pytest.raises(ValueError, match="the file of optimizers.lopt changed since this evaluation started"):
        E.evaluate(copy.deepcopy(cfg), tmp_path / "run", resume=True)
    learned_file(tmp_path / "lopt.pt", 0.01)  # the original back: the resume goes on
    E.evaluate(copy.deepcopy(cfg), tmp_path / "run", resume=True)


def test_a_learned_optimizer_file_replaced_during_the_evaluation_stops_it(tmp_path, monkeypatch):
    no_figures(monkeypatch)
    cfg = copy.deepcopy(SMALL)
    cfg["optimizers"]["lopt"] = {"checkpoint": learned_file(tmp_path / "lopt.pt", 0.01)}
    real = E.run_cell
    calls = {"n": 0}

    def replaces_the_file_after_the_first_cell(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:  # the first cell's rule is built already; the second one's is not
            learned_file(tmp_path / "lopt.pt", 0.05)
        return real(*args, **kwargs)

    cfg["optimizers"] = {"lopt": cfg["optimizers"]["lopt"], "adam": cfg["optimizers"]["adam"]}
    monkeypatch.setattr(E, "run_cell", replaces_the_file_after_the_first_cell)
    with pytest.raises(CheckpointError, match="optimizers.lopt.checkpoint.*changed since this evaluation started"):
        E.evaluate(cfg, tmp_path / "run")


def _hold(run_dir: str) -> None:
    with RunLock(run_dir, "evaluate"):
        time.sleep(60)


def test_a_second_evaluation_process_on_the_run_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    holder = multiprocessing.get_context("fork").Process(target=_hold, args=(str(run),))
    holder.start()
    try:
        t0 = time.time()
        while not (run / ".lock").exists() or not (run / ".lock").read_text():
            assert time.time() - t0 < 30
            time.sleep(0.01)
        with pytest.raises(RunLocked, match=f"evaluate \\(pid {holder.pid}"):
            E.evaluate(copy.deepcopy(SMALL), run, resume=True)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(30)
