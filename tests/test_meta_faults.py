"""Meta-training under faults: bad configs, finished and rejected resumes, replayed metrics, a full disk,
SIGTERM/SIGINT, corrupt checkpoints, a second process on the run directory."""
from __future__ import annotations

import copy
import errno
import json
import multiprocessing
import os
import signal
import time
import zipfile
from pathlib import Path

import pytest
import torch

import learned_opt
from learned_opt import runlog
from learned_opt.meta import CheckpointError, meta_train
from learned_opt.meta import trainer as T
from learned_opt.meta.bptt import TruncatedBPTT
from learned_opt.meta.checkpoint import content_hash, load_checkpoint, save_checkpoint
from learned_opt.meta.config import check_meta_train_config
from learned_opt.optimizers import make_learned_rule
from learned_opt.runlock import RunLock, RunLocked
from learned_opt.schema import ConfigError
from test_meta import changed

torch.set_num_threads(1)

CFG = {
    "seed": 0, "device": "cpu", "progress": False, "checkpoint_every": 2,
    "optimizer": {"name": "learned_adam", "lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8},
    "family": {"name": "quadratic_family", "dim": 6},
    "meta": {"steps": 6, "horizon": 10, "truncation": 5, "tasks_per_step": 2, "optimizer": "adam", "lr": 0.05,
             "clip_grad_norm": 1.0, "first_order": False, "meta_loss": "log_mean", "divergence_factor": 1000.0},
    "validation": {"every": 3, "tasks": 1, "steps": 10},
    "wandb": {"mode": "disabled"},
}


def cfg_with(**changes) -> dict:
    return changed(CFG, **changes)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_time(obj):
    """Everything but wall-clock seconds (which no two runs share)."""
    if isinstance(obj, dict):
        return {k: without_time(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [without_time(v) for v in obj]
    return obj


def training_state(run_dir: Path) -> dict:
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    return {k: ckpt[k] for k in ("meta_params", "meta_opt", "estimator", "torch_rng", "counters", "meta_step")}


def assert_same_tree(a, b, path="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def assert_same_run(ref: Path, other: Path) -> None:
    """Bitwise the same meta-training (CPU): training state, metrics rows and summary, wall time aside."""
    assert_same_tree(training_state(ref), training_state(other))
    assert without_time(rows(other)) == without_time(rows(ref))
    s_ref, s_other = (json.loads((d / "summary.json").read_text()) for d in (ref, other))
    for s in (s_ref, s_other):
        for k in ("checkpoint", "best_checkpoint"):
            s.pop(k, None)
    assert without_time(s_other) == without_time(s_ref)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must equal."""
    run = tmp_path_factory.mktemp("reference") / "run"
    meta_train(copy.deepcopy(CFG), run)
    return run


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("change,match", [
    ({"meta__lr": float("inf")}, "meta.lr=inf"),
    ({"meta__lr": float("nan")}, "meta.lr=nan"),
    ({"meta__lr": "0.01"}, "meta.lr='0.01'"),
    ({"seed": "abc"}, "seed='abc'"),
    ({"checkpoint_every": "abc"}, "checkpoint_every='abc'"),
    ({"checkpoint_every": 2.5}, "checkpoint_every=2.5"),
    ({"validation__every": -5}, "validation.every=-5"),
    ({"validation__tasks": -1}, "validation.tasks=-1"),
    ({"validation__tasks": 0}, "validation.tasks=0"),
    ({"meta__stpes": 10}, "meta.stpes=10: unknown key.*did you mean meta.steps"),
    ({"extra": 1}, "extra=1: unknown key"),
    ({"meta__first_order": "yes"}, "meta.first_order='yes'"),
    ({"meta__clip_grad_norm": -1.0}, "meta.clip_grad_norm=-1.0"),
    ({"meta__divergence_factor": 0}, "meta.divergence_factor=0"),
    ({"meta__estimator": "reinforce"}, "meta.estimator='reinforce'.*bptt, es, pes"),
    ({"meta__meta_loss": "median"}, "meta.meta_loss='median'"),
    ({"es": {"std": 0.0, "pairs": 1}}, "es.std=0.0"),
    ({"pes": {"std": 0.1, "pairs": 0}}, "pes.pairs=0"),
    ({"pes": {"std": 0.1}}, "pes.pairs is missing"),
    ({"pes": {"std": 0.1, "pairs": 1, "clip_loss": 1.0}}, "pes.clip_loss=1.0: unknown key"),
    ({"meta__stagger": "yes"}, "meta.stagger='yes'"),
    ({"validation": {"every": 1, "tasks": 1, "steps": 2, "metric": "median"}}, "validation.metric='median'"),
    ({"device": "gpu"}, "device='gpu'"),
    ({"wandb": {"mode": "disabled", "projet": "x"}}, "wandb.projet='x': unknown key.*did you mean wandb.project"),
    ({"optimizer": {"name": "learned_adam", "lrr": 0.1}}, "optimizer.lrr=0.1.*takes no option 'lrr'.*optimizer.lr"),
    ({"optimizer": {"name": "learned_adam", "lr": -1.0}}, "optimizer.*lr=-1.0"),
    ({"optimizer": {"name": "lstm", "hidden_size": 0}}, "optimizer.*hidden_size=0"),
    ({"family": {"name": "quadratic_family", "dims": 6}}, "family.dims=6.*takes no option 'dims'.*family.dim"),
    ({"family": {"name": "quadratic_family", "dim": 0}}, "family.*dim"),
    ({"family": {"name": "mlp_family", "device": "cpu"}}, "family.device='cpu'.*takes no option 'device'"),
])
def test_a_bad_field_or_unread_key_is_rejected_before_any_work(tmp_path, change, match):
    with pytest.raises(ConfigError, match=match):
        meta_train(cfg_with(**change), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_family_whose_dataset_files_are_absent_fails_before_any_meta_step(tmp_path):
    cfg = cfg_with(family={"name": "mlp_family", "datasets": ["digits", "mnist"], "root": str(tmp_path / "none")})
    with pytest.raises(FileNotFoundError, match="dataset 'mnist': idx files not found"):
        meta_train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_estimator_keys_of_the_config_are_known_and_range_checked():
    """meta.estimator, meta.meta_loss=log_ratio and the es/pes blocks are read by the estimators."""
    block = {"std": 0.01, "pairs": 4}
    check_meta_train_config(cfg_with(meta__estimator="pes", meta__meta_loss="log_ratio", pes=block, es=block))
    check_meta_train_config(cfg_with(meta__estimator="bptt"))
    with pytest.raises(ConfigError, match="needs the block es"):
        check_meta_train_config(cfg_with(meta__estimator="es"))
    check_meta_train_config(cfg_with(meta__meta_loss="log_ratio", meta__log_ratio_floor=-6.9))
    with pytest.raises(ConfigError, match="log_ratio_floor=-6.9 is not allowed with meta.meta_loss='mean'"):
        check_meta_train_config(cfg_with(meta__meta_loss="mean", meta__log_ratio_floor=-6.9))
    with pytest.raises(ConfigError, match="log_ratio_floor"):
        check_meta_train_config(cfg_with(meta__meta_loss="log_ratio", meta__log_ratio_floor=1.0))


class _PoisonedSGD(torch.optim.SGD):
    """SGD whose second step writes NaN into a meta-parameter (any source of a non-finite update)."""
    calls = 0

    def step(self, closure=None):
        super().step(closure)
        type(self).calls += 1
        if type(self).calls == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))


def test_a_non_finite_meta_update_is_undone_and_counted(tmp_path, monkeypatch):
    cfg = cfg_with(meta__optimizer="sgd", meta__steps=2, validation={"every": 0}, checkpoint_every=0)
    meta_train(cfg_with(meta__optimizer="sgd", meta__steps=1, validation={"every": 0}), tmp_path / "one")
    monkeypatch.setitem(T.META_OPTIMIZERS, "sgd", _PoisonedSGD)
    _PoisonedSGD.calls = 0
    summary = meta_train(cfg, tmp_path / "two")
    assert summary["skipped_steps"] == 1 and [r.get("nonfinite_update") for r in rows(tmp_path / "two")] == [None, True]
    one, two = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("one", "two"))
    assert_same_tree(one["meta_params"], two["meta_params"])  # step 2 left no trace in the meta-parameters
    assert_same_tree(one["meta_opt"], two["meta_opt"])        # nor in the meta-optimizer's state


# --------------------------------------------------------------------------- resume
def test_resuming_a_finished_run_rewrites_nothing(tmp_path, reference):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for rewritten in (True, False):
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        summary = meta_train(copy.deepcopy(CFG), run, resume=True)
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
        assert {"meta_loss", "inner_loss", "val_loss"} <= set(summary)
        assert summary == json.loads((run / "summary.json").read_text())
    # stopped between the last checkpoint and summary.json (SIGINT at the end): the summary comes back whole
    original = (run / "summary.json").read_text()
    (run / "summary.json").unlink()
    summary = meta_train(copy.deepcopy(CFG), run, resume=True)
    expected = {**json.loads(original), "checkpoint": str(run / "checkpoint.pt"),
                "best_checkpoint": str(run / "best.pt")}
    assert json.loads((run / "summary.json").read_text()) == expected == summary
    original = (run / "summary.json").read_text()
    # a shorter meta.steps than the checkpoint's is a finished run too
    assert meta_train(cfg_with(meta__steps=2), run, resume=True)["meta_steps"] == CFG["meta"]["steps"]
    assert (run / "summary.json").read_text() == original


def test_resuming_from_a_best_checkpoint_names_what_is_missing(tmp_path, reference):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.copy(run / "best.pt", run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="cannot be resumed.*meta-parameters only.*lacks meta_opt"):
        meta_train(cfg_with(meta__steps=8), run, resume=True)


def test_replayed_meta_steps_are_not_logged_twice(tmp_path, reference, monkeypatch):
    real = TruncatedBPTT.estimate
    calls = {"n": 0}

    def dies_in_step_6(self, rule):
        calls["n"] += 1
        if calls["n"] == 6:  # steps 1-5 logged, checkpoint at 4
            raise KeyboardInterrupt
        return real(self, rule)

    monkeypatch.setattr(TruncatedBPTT, "estimate", dies_in_step_6)
    with pytest.raises(KeyboardInterrupt):
        meta_train(copy.deepcopy(CFG), tmp_path)
    assert [r["step"] for r in rows(tmp_path)] == [1, 2, 3, 4, 5]
    monkeypatch.setattr(TruncatedBPTT, "estimate", real)
    meta_train(copy.deepcopy(CFG), tmp_path, resume=True)
    assert [r["step"] for r in rows(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert_same_run(reference, tmp_path)


def test_a_run_killed_before_its_first_checkpoint_starts_again_on_resume(tmp_path, reference, monkeypatch):
    real = TruncatedBPTT.estimate
    calls = {"n": 0}

    def dies_in_step_2(self, rule):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, rule)

    monkeypatch.setattr(TruncatedBPTT, "estimate", dies_in_step_2)
    with pytest.raises(KeyboardInterrupt):
        meta_train(copy.deepcopy(CFG), tmp_path)
    monkeypatch.setattr(TruncatedBPTT, "estimate", real)
    with pytest.raises(CheckpointError, match="stopped before its first checkpoint.*resume=true"):
        meta_train(copy.deepcopy(CFG), tmp_path)  # a fresh start would append to its metrics
    with pytest.raises(CheckpointError, match="different configuration"):
        meta_train(cfg_with(meta__lr=0.01), tmp_path, resume=True)
    meta_train(copy.deepcopy(CFG), tmp_path, resume=True)
    assert_same_run(reference, tmp_path)


def test_a_full_disk_while_appending_metrics_leaves_no_half_row_and_the_run_resumes(tmp_path, reference,
                                                                                    monkeypatch):
    real_write = runlog._write
    state = {"rows": 0}

    def disk_fills_at_row_4(fd, data):
        state["rows"] += 1
        if state["rows"] == 4:
            real_write(fd, data[: len(data) // 2])  # half the row reaches the disk, then it is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(runlog, "_write", disk_fills_at_row_4)
    with pytest.raises(OSError, match="No space left on device.*left as it was"):
        meta_train(copy.deepcopy(CFG), tmp_path)
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text.endswith("\n") and [r["step"] for r in rows(tmp_path)] == [1, 2, 3]
    monkeypatch.setattr(runlog, "_write", real_write)
    meta_train(copy.deepcopy(CFG), tmp_path, resume=True)
    assert_same_run(reference, tmp_path)


def test_a_half_row_left_by_older_code_is_repaired_on_resume(tmp_path, reference, monkeypatch):
    # the run as it was at its step-4 checkpoint, with a half-written row 5 at the end of its metrics
    ckpt_4 = tmp_path / "ckpt4"
    real = TruncatedBPTT.estimate
    calls = {"n": 0}

    def stop_in_step_5(self, rule):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, rule)

    monkeypatch.setattr(TruncatedBPTT, "estimate", stop_in_step_5)
    with pytest.raises(KeyboardInterrupt):
        meta_train(copy.deepcopy(CFG), ckpt_4)
    monkeypatch.setattr(TruncatedBPTT, "estimate", real)
    full = (ckpt_4 / "metrics.jsonl").read_text()
    (ckpt_4 / "metrics.jsonl").write_text(full + '{"step": 5, "diverged_trunc')
    with pytest.warns(RuntimeWarning, match="damaged line"):
        meta_train(copy.deepcopy(CFG), ckpt_4, resume=True)
    assert_same_run(reference, ckpt_4)
    from learned_opt.evaluation.plots import plot_meta_loss
    assert plot_meta_loss(ckpt_4) is not None


def test_runlogger_repairs_a_partial_last_line_and_read_jsonl_skips_damage(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "x"')
    with pytest.warns(RuntimeWarning, match="partial last line"):
        log = runlog.RunLogger(tmp_path, {"mode": "disabled"})
    log.log({"a": 1.0}, step=2)
    log.finish()
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"step": 1}, {"step": 2, "a": 1.0}]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.warns(RuntimeWarning, match="line 2"):
        assert runlog.read_jsonl(path) == [{"step": 1}, {"step": 3}]


# --------------------------------------------------------------------------- signals (forked workers)
def _fork(target, *args) -> multiprocessing.Process:
    proc = multiprocessing.get_context("fork").Process(target=target, args=args)
    proc.start()
    return proc


def _train_in_child(cfg: dict, run_dir: str, resume: bool, step_delay: float = 0.0) -> None:
    if step_delay:  # slower meta-steps (same numbers), so that the parent acts while the run is in flight
        real = TruncatedBPTT.estimate

        def slow(self, rule):
            time.sleep(step_delay)
            return real(self, rule)
        TruncatedBPTT.estimate = slow
    try:
        meta_train(cfg, run_dir, resume=resume)
    except T.MetaTrainingInterrupted as e:
        Path(run_dir, "interrupted.txt").write_text(str(e))
        os._exit(128 + e.signum)


def _wait_for_rows(run_dir: Path, n: int, proc, timeout: float = 60.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout and proc.is_alive():
        path = run_dir / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.005)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_a_checkpoint_at_the_next_meta_step_and_exit_clearly(tmp_path, sig):
    cfg = cfg_with(checkpoint_every=0, meta__steps=12)  # no periodic checkpoints: only the signal makes one
    ref = tmp_path / "ref"
    meta_train(copy.deepcopy(cfg), ref)
    run = tmp_path / "run"
    proc = _fork(_train_in_child, cfg, str(run), False, 0.3)  # seconds of margin before it would finish
    _wait_for_rows(run, 2, proc)
    os.kill(proc.pid, sig)
    proc.join(60)
    assert proc.exitcode == 128 + sig
    message = (run / "interrupted.txt").read_text()
    step = load_checkpoint(run / "checkpoint.pt")["meta_step"]
    assert f"{signal.Signals(sig).name} received" in message and f"after meta-step {step}" in message
    assert "resume" in message
    assert 2 <= step < cfg["meta"]["steps"]
    assert [r["step"] for r in rows(run)][-1] == step  # the checkpoint holds every logged meta-step
    assert not (run / ".lock").exists()
    meta_train(copy.deepcopy(cfg), run, resume=True)
    assert_same_run(ref, run)


# --------------------------------------------------------------------------- checkpoint integrity
def _flip_in_largest_tensor(path: Path) -> None:
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_tensor_data_is_reported_as_corruption(tmp_path):
    torch.manual_seed(0)
    rule = make_learned_rule("mlp", hidden_sizes=[8])
    good = save_checkpoint(tmp_path / "c.pt", rule, 3, {"a": 1})
    _flip_in_largest_tensor(good)
    raw = torch.load(good, weights_only=True)  # torch alone does not notice
    assert raw["meta_step"] == 3
    with pytest.raises(CheckpointError, match="corrupt.*does not match the hash"):
        learned_opt.load(good)


def test_legacy_checkpoints_without_a_hash_still_load(tmp_path):
    legacy = []
    for path in sorted(Path(__file__).resolve().parents[1].glob("learned_opt/pretrained/*.pt")):
        if "sha256" not in torch.load(path, weights_only=True):  # shipped before checkpoints carried a hash
            legacy.append(path.name)
        learned_opt.load(path)
    assert "lstm_l2l_mnist.pt" in legacy and "celo_general.pt" not in legacy  # the newest carries one
    rule = make_learned_rule("lstm", hidden_size=4)
    ckpt = torch.load(save_checkpoint(tmp_path / "c.pt", rule, 1, {}), weights_only=True)
    del ckpt["sha256"]
    torch.save(ckpt, tmp_path / "legacy.pt")
    learned_opt.load(tmp_path / "legacy.pt")


@pytest.mark.parametrize("key,value,match", [
    ("rule", "mlp", "entry 'rule' is a str.*expected a mapping"),
    ("rule", {"name": 3, "config": {}}, "entry 'rule' is a dict"),
    ("meta_params", [1, 2], "entry 'meta_params' is a list"),
    ("meta_step", "7", "entry 'meta_step' is a str"),
    ("config", "{not json", "entry 'config' is a str"),
])
def test_a_checkpoint_entry_of_the_wrong_type_is_named(tmp_path, key, value, match):
    rule = make_learned_rule("mlp", hidden_sizes=[4])
    ckpt = torch.load(save_checkpoint(tmp_path / "c.pt", rule, 1, {}), weights_only=True)
    ckpt[key] = value
    ckpt["sha256"] = content_hash(ckpt)  # consistent, but wrong
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=match):
        learned_opt.load(tmp_path / "bad.pt")


# --------------------------------------------------------------------------- one process per run directory
def _hold_lock(run_dir: str, seconds: float) -> None:
    with RunLock(run_dir, "meta_train"):
        time.sleep(seconds)


def test_a_second_process_on_the_run_directory_is_refused_and_a_stale_lock_is_taken_over(tmp_path, reference):
    run = tmp_path / "run"
    holder = _fork(_hold_lock, str(run), 60.0)
    t0 = time.time()
    while not (run / ".lock").exists() or not (run / ".lock").read_text():
        assert time.time() - t0 < 30
        time.sleep(0.01)
    with pytest.raises(RunLocked, match=f"in use by another process: meta_train \\(pid {holder.pid}"):
        meta_train(copy.deepcopy(CFG), run)
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written by the refused process
    os.kill(holder.pid, signal.SIGKILL)  # dies holding it: the lock file stays behind, stale
    holder.join(30)
    assert json.loads((run / ".lock").read_text())["pid"] == holder.pid
    with pytest.warns(RuntimeWarning, match=f"stale lock of pid {holder.pid}"):
        meta_train(copy.deepcopy(CFG), run)
    assert not (run / ".lock").exists()
    assert_same_run(reference, run)


def test_two_meta_training_processes_on_one_run_directory_one_runs(tmp_path, reference):
    run = tmp_path / "run"
    first = _fork(_train_in_child, copy.deepcopy(CFG), str(run), False, 0.1)
    t0 = time.time()
    while not (run / ".lock").exists() or not (run / ".lock").read_text():  # held: its holder is recorded
        assert time.time() - t0 < 30
        time.sleep(0.002)
    with pytest.raises(RunLocked):
        meta_train(copy.deepcopy(CFG), run)
    first.join(120)
    assert first.exitcode == 0
    assert_same_run(reference, run)
