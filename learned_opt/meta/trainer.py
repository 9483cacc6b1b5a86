"""The meta-training loop: sample tasks, unroll, back-propagate, clip, update, checkpoint.

    summary = meta_train(cfg, run_dir)            # cfg: the plain dict of configs/meta_train.yaml
    summary = meta_train(cfg, run_dir, resume=True)

Per meta-step: the estimator chosen by ``meta.estimator`` (``bptt``:
:class:`~learned_opt.meta.bptt.TruncatedBPTT`, ``es``: :class:`~learned_opt.meta.es.TruncatedES`,
``pes``: :class:`~learned_opt.meta.pes.PES`; their options in the ``es:``/``pes:`` blocks)
advances ``meta.tasks_per_step`` inner problems by one truncation and returns the mean
meta-gradient estimate of those that counted; the gradient is clipped by norm and
applied by the meta-optimizer (Adam by default). A step in which no task
counted is skipped (and counted): NaN or Inf never reaches the meta-parameters.

Checkpoints (``checkpoint.pt`` in the run directory) every
``checkpoint_every`` meta-steps and at the end hold the meta-parameters, the
meta-optimizer state, the step, the config, every RNG state and the inner
problems in flight, so ``resume=True`` continues exactly where the run stopped
(bit-for-bit on CPU). Metrics go to ``metrics.jsonl`` and to W&B. ``snapshot_every`` keeps the
meta-parameters every that many meta-steps in ``snapshots/step_NNNNNN.pt`` (loadable like ``best.pt``),
to choose a checkpoint afterwards on tasks of one's own (e.g. ``configs/selection.yaml``).

Failure and recovery: the config is checked whole before anything is built or written
(:mod:`~learned_opt.meta.config`); one process at a time holds the run directory
(:class:`~learned_opt.runlock.RunLock`); SIGTERM or SIGINT stops the run at the end of the
meta-step in flight, after a checkpoint (:class:`MetaTrainingInterrupted`; a second signal stops
at once). A resume drops the metrics rows after the checkpoint's step before replaying them; a
resume of a finished run changes nothing; a run killed before its first checkpoint restarts from
meta-step 0 on ``resume=True`` (its ``config.json`` must match). A meta-update that would make a
meta-parameter non-finite is undone and counted as a skipped step.

Scaling options: ``meta.population`` (unroll that many tasks at once as one batched
population), ``meta.checkpoint_segments`` (gradient checkpointing over segments of a
truncation; bptt only, see :mod:`~learned_opt.meta.bptt`) and ``distributed`` (data-parallel
workers started by ``torchrun``; see :mod:`~learned_opt.meta.distributed`: the
meta-gradient is averaged over all workers' tasks before clipping, rank 0 validates,
logs and writes the checkpoints).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..optimizers import make_learned_rule
from ..runlock import RunLock
from ..runlog import RunLogger, _jsonable, read_jsonl, truncate_jsonl
from ..tasks import make_family
from ..unroll import init_state, unroll
from ..utils import atomic_write_text, generator, resolve_device
from .checkpoint import CheckpointError, check_resumable, load_checkpoint, rule_from_checkpoint, save_checkpoint
from .config import DEFAULT_ESTIMATOR, ESTIMATORS, META_OPTIMIZERS, check_meta_train_config
from .distributed import (DistContext, all_gather_objects, all_reduce_estimate, all_reduce_max,
                          broadcast_parameters, init_distributed, shutdown, synchronize)
from .inner import DEFAULT_META_LOSS, truncation_loss

# Config entries that may differ between a checkpoint and the run that resumes it.
RESUMABLE_CHANGES = ("meta.steps", "meta.checkpoint_segments", "checkpoint_every", "snapshot_every", "wandb",
                     "progress", "device", "resume")
SUMMARY_METRICS = ("meta_loss", "inner_loss", "val_loss")  # taken into summary.json from the last row


class MetaTrainingInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT stopped the run at a meta-step boundary, after a checkpoint was written."""

    def __init__(self, signum: int, meta_step: int, checkpoint: Path):
        self.signum, self.meta_step, self.checkpoint = signum, meta_step, checkpoint
        super().__init__(f"{signal.Signals(signum).name} received: meta-training stopped after meta-step {meta_step}, "
                         f"saved in {checkpoint}; continue it with resume=true "
                         f"(python experiments/meta_train.py --resume {checkpoint.parent})")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_config(cfg: dict) -> None:
    """Every bad value or unknown key raises here, before any work starts (see :mod:`.config`)."""
    check_meta_train_config(cfg)


def build_rule(cfg: dict, device: torch.device) -> nn.Module:
    opt_cfg = dict(cfg["optimizer"])
    name = opt_cfg.pop("name")
    torch.manual_seed(cfg["seed"])  # the rule's initial meta-parameters
    return make_learned_rule(name, **opt_cfg).to(device)


def build_estimator(cfg: dict, family, device: torch.device, rank: int = 0):
    """The meta-gradient estimator named by ``meta.estimator``, over ``meta.tasks_per_step`` inner problems."""
    meta = cfg["meta"]
    name = meta.get("estimator", DEFAULT_ESTIMATOR)
    kw = dict(horizon=meta["horizon"], truncation=meta["truncation"], num_tasks=meta["tasks_per_step"],
              device=device, generator=generator(cfg["seed"]), meta_loss=meta.get("meta_loss", DEFAULT_META_LOSS),
              divergence_factor=meta.get("divergence_factor", 1e3), population=meta.get("population", 1),
              slot_offset=rank * meta["tasks_per_step"], stagger=meta.get("stagger", False),
              log_ratio_floor=meta.get("log_ratio_floor"))
    if name == "bptt":
        return ESTIMATORS[name](family, first_order=meta.get("first_order", False),
                             checkpoint_segments=meta.get("checkpoint_segments", 1), **kw)
    block = cfg.get(name) or {}
    return ESTIMATORS[name](family, std=block.get("std", 0.01), pairs=block.get("pairs", 4), **kw)


VALIDATION_SEED = 10_000_000  # held out: training task seeds are drawn from the run's generator


def held_out_scores(rule: nn.Module, family, tasks: int, steps: int, metric: str, device: torch.device,
                    first_seed: int = VALIDATION_SEED, floor: float | None = None) -> list[float]:
    """One score per held-out task ``family.sample(seed)``, ``seed = first_seed + i`` for ``i < tasks``, each
    run for ``steps`` steps without a meta-gradient (a horizon-aware rule is told ``steps``): its mean training
    loss, or with ``metric="log_ratio"`` the mean of log(loss / first loss) (tasks weigh alike), each step's
    log-ratio clipped below at ``floor`` when given (``meta.log_ratio_floor``; other metrics ignore it), or with
    ``metric="ratio"`` the mean of loss / first loss: the meta-loss of the whole run
    (:func:`~learned_opt.meta.inner.truncation_loss`); inf if the task diverged."""
    scores = []
    for i in range(tasks):
        seed = first_seed + i
        task = family.sample(torch.Generator().manual_seed(seed))
        g = generator(seed, device)
        params = task.init_params(g)
        with torch.no_grad():
            state = init_state(rule, params, steps, task)
            res = unroll(task, rule, params, state, steps, g)
        if res.diverged:
            scores.append(math.inf)
        else:   # mean_loss is the meta-loss "mean"
            kind = "mean" if metric == "mean_loss" else metric
            scores.append(float(truncation_loss(res.losses, kind, floor=floor if kind == "log_ratio" else None)))
    return scores


def validation_loss(rule: nn.Module, family, cfg: dict, device: torch.device) -> float:
    """Mean of :func:`held_out_scores` over ``validation.tasks`` fixed held-out tasks, ``validation.steps``
    steps each, ``validation.metric`` (``mean_loss``, ``ratio``, or ``log_ratio`` clipped below at
    ``meta.log_ratio_floor`` like the meta-loss)."""
    val = cfg.get("validation") or {}
    n, steps = int(val.get("tasks", 0)), int(val.get("steps", cfg["meta"]["horizon"]))
    scores = held_out_scores(rule, family, n, steps, val.get("metric", "mean_loss"), device,
                             floor=cfg["meta"].get("log_ratio_floor"))
    return sum(scores) / n if n else float("nan")


class _NoLogger:
    """What workers other than rank 0 log to: nothing."""

    def log(self, metrics: dict, step: int | None = None) -> None:
        pass

    def finish(self) -> None:
        pass


def meta_train(cfg: dict, run_dir: str | Path, resume: bool = False,
               on_start: Callable[[], None] | None = None) -> dict:
    """Meta-train ``cfg["optimizer"]`` on ``cfg["family"]``; returns a summary dict.

    With ``cfg["distributed"]`` true, this is one worker of a ``torchrun`` job: it joins the
    process group (gloo on CPU, nccl on CUDA) and leaves it at the end. Only rank 0 writes
    to ``run_dir``; every worker returns the summary (with ``rank`` and ``world_size``).

    Before any work: the config is checked, the run directory locked (rank 0) and, on resume,
    the checkpoint read and compared with ``cfg``; then ``on_start()`` (if given) runs, e.g. to
    record the accepted overrides. SIGTERM/SIGINT raise :class:`MetaTrainingInterrupted` after
    a checkpoint at the next meta-step boundary.
    """
    check_config(cfg)
    run_dir = Path(run_dir)
    if resume and not run_dir.is_dir():
        raise CheckpointError(f"resume=true but there is no checkpoint at {run_dir / 'checkpoint.pt'} "
                              f"(no such run directory)")
    distributed = cfg.get("distributed", False)
    main = not distributed or int(os.environ.get("RANK", "0")) == 0
    with RunLock(run_dir, "meta_train") if main else contextlib.nullcontext():
        ckpt = _start_state(cfg, run_dir, resume, main)
        if on_start is not None and main:
            on_start()
        ctx = init_distributed(cfg.get("device", "cpu")) if distributed else None
        try:
            summary = _meta_train(cfg, run_dir, ckpt, ctx)
            synchronize(ctx)   # every worker is done before any tears its process group down
            return summary
        finally:
            shutdown(ctx)


def _start_state(cfg: dict, run_dir: Path, resume: bool, main: bool) -> dict | None:
    """The checkpoint to continue from (None: start at meta-step 0), after every check; writes nothing."""
    ckpt_path, started = run_dir / "checkpoint.pt", run_dir / "config.json"
    if not resume:
        if ckpt_path.exists():
            raise CheckpointError(f"{ckpt_path} already exists: pass resume=true to continue it, "
                                  f"or choose another run directory (nothing was overwritten)")
        if main and (started.exists() or (run_dir / "metrics.jsonl").exists()):
            raise CheckpointError(f"{run_dir} holds a run that stopped before its first checkpoint: "
                                  f"pass resume=true to start it again from meta-step 0, or choose another run "
                                  f"directory (nothing was overwritten)")
        return None
    if not ckpt_path.exists():
        if not started.exists():
            if main and (run_dir / "metrics.jsonl").exists():
                raise CheckpointError(f"resume=true but there is no checkpoint at {ckpt_path} (and no record "
                                      f"of the run's config to start it again)")
            warnings.warn(f"resume=true, but nothing of a run was written in {run_dir} yet (it stopped while "
                          f"starting): starting at meta-step 0", RuntimeWarning, stacklevel=3)
            return None
        try:
            saved = json.loads(started.read_text())
        except ValueError as e:
            raise CheckpointError(f"{started} is damaged ({e}); there is no checkpoint to resume") from e
        _check_same_run(saved, cfg, started)
        return None  # stopped before its first checkpoint: start again
    ckpt = load_checkpoint(ckpt_path)
    check_resumable(ckpt, ckpt_path)
    _check_same_run(json.loads(ckpt["config"]), cfg, ckpt_path)
    return ckpt


def _finished(run_dir: Path, ckpt: dict, main: bool) -> dict:
    """The summary of a run already at (or past) ``meta.steps``; nothing that run wrote is rewritten."""
    path = run_dir / "summary.json"
    if path.exists():
        try:
            summary = json.loads(path.read_text())
            if isinstance(summary, dict) and summary.get("meta_steps") == ckpt["meta_step"]:
                return summary
        except ValueError:
            pass
    last = json.loads(ckpt["last_metrics"]) if isinstance(ckpt.get("last_metrics"), str) else \
        next((r for r in reversed(read_jsonl(run_dir / "metrics.jsonl")) if r.get("step") == ckpt["meta_step"]), {})
    summary = _summary(run_dir, int(ckpt["meta_step"]), float(ckpt.get("seconds", 0.0)), dict(ckpt["counters"]),
                       last)
    if main:  # it was missing (stopped between the last checkpoint and the summary) or damaged
        atomic_write_text(json.dumps(summary, indent=2), path)
    return summary


def _summary(run_dir: Path, steps: int, seconds: float, counters: dict, last: dict) -> dict:
    return {"meta_steps": steps, "seconds": seconds, "checkpoint": str(run_dir / "checkpoint.pt"), **counters,
            **({"best_checkpoint": str(run_dir / "best.pt")} if "best_val_loss" in counters else {}),
            **{k: v for k, v in _jsonable(last).items() if k in SUMMARY_METRICS}}


class _StopSignals:
    """While active (main thread only): SIGTERM and SIGINT set ``signum`` instead of stopping the
    process; a second one raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping now, without a checkpoint")
        self.signum = signum

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _meta_train(cfg: dict, run_dir: Path, ckpt: dict | None, ctx: DistContext | None) -> dict:
    ckpt_path = run_dir / "checkpoint.pt"
    device = ctx.device if ctx is not None else resolve_device(cfg.get("device", "cpu"))
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    main = rank == 0
    meta = cfg["meta"]
    if ckpt is not None and int(ckpt["meta_step"]) >= meta["steps"]:
        summary = _finished(run_dir, ckpt, main)
        return {**summary, **({"rank": rank, "world_size": world} if ctx is not None else {})}
    family_cfg = dict(cfg["family"])
    family = make_family(family_cfg.pop("name"), device=device, **family_cfg)
    rule = build_rule(cfg, device)
    meta_opt = META_OPTIMIZERS[meta.get("optimizer", "adam")](rule.parameters(), lr=meta["lr"])
    estimator = build_estimator(cfg, family, device, rank)
    start, counters, elapsed_before, last = 0, {"diverged_truncations": 0, "skipped_steps": 0}, 0.0, {}
    if ckpt is not None:
        if int(ckpt.get("world_size", 1)) != world:
            raise CheckpointError(f"checkpoint {ckpt_path} was written by {ckpt.get('world_size', 1)} workers; "
                                  f"resume it with the same number (now {world})")
        rule.load_state_dict(rule_from_checkpoint(ckpt, ckpt_path).state_dict())
        meta_opt.load_state_dict(ckpt["meta_opt"])
        estimator.load_state_dict(ckpt["estimator_ranks"][rank] if ctx is not None else ckpt["estimator"], rule)
        torch.set_rng_state(ckpt["torch_rng"])
        start, counters = int(ckpt["meta_step"]), dict(ckpt["counters"])
        elapsed_before = float(ckpt.get("seconds", 0.0))
        if isinstance(ckpt.get("last_metrics"), str):
            last = json.loads(ckpt["last_metrics"])
    if main:
        # the rows after the checkpoint are replayed below: drop them (and any damaged line) first
        truncate_jsonl(run_dir / "metrics.jsonl", start)
        if ckpt is None:
            atomic_write_text(json.dumps(cfg, indent=1), run_dir / "config.json")

    if ctx is not None:
        broadcast_parameters(rule)  # equal already (same seed or checkpoint); this makes sure

    def checkpoint(step: int, seconds: float) -> None:
        extra = {}
        if ctx is not None:  # every worker's inner problems, so that the run resumes exactly
            states = all_gather_objects(estimator.state_dict())
            extra = {"estimator_ranks": states, "world_size": world}
        if main:
            save_checkpoint(ckpt_path, rule, step, cfg, meta_opt=meta_opt.state_dict(),
                            estimator=estimator.state_dict(), torch_rng=torch.get_rng_state(),
                            counters=counters, seconds=seconds, last_metrics=json.dumps(_jsonable(last)), **extra)

    logger = RunLogger(run_dir, cfg.get("wandb"), name=f"meta_train-{cfg['optimizer']['name']}",
                       group="meta_train", tags=[cfg["optimizer"]["name"]], config=cfg,
                       job_type="meta_train") if main else _NoLogger()
    from tqdm.auto import tqdm
    bar = tqdm(range(start, meta["steps"]), initial=start, total=meta["steps"], desc="meta-train",
               disable=not (main and cfg.get("progress", True)))
    t0 = time.perf_counter() - elapsed_before
    val_every = int((cfg.get("validation") or {}).get("every", 0))
    stop = _StopSignals()
    try:
        stop.install()
        for step in bar:
            meta_opt.zero_grad(set_to_none=True)
            est = estimator.estimate(rule)
            if ctx is not None:  # the mean over every worker's tasks, before clipping
                est = all_reduce_estimate(est, [p for p in rule.parameters() if p.requires_grad], device)
            counters["diverged_truncations"] += est.diverged
            row: dict[str, Any] = {"diverged_truncations": counters["diverged_truncations"],
                                   "tasks_counted": est.counted}
            if est.grads is None:
                counters["skipped_steps"] += 1
            else:
                for p, g in zip((p for p in rule.parameters() if p.requires_grad), est.grads):
                    p.grad = g
                clip = meta.get("clip_grad_norm")
                norm = torch.nn.utils.clip_grad_norm_(rule.parameters(), clip if clip else float("inf"))
                if _finite_step(meta_opt, [p for p in rule.parameters() if p.requires_grad]):
                    row.update(meta_loss=est.meta_loss, inner_loss=est.inner_loss, grad_norm=float(norm))
                else:
                    counters["skipped_steps"] += 1
                    row["nonfinite_update"] = True
            row["skipped_steps"] = counters["skipped_steps"]
            if hasattr(rule, "current_hparams"):  # learned Adam / SGD: their hyperparameters as they move
                row.update({f"hparam_{k}": v for k, v in rule.current_hparams().items()})
            if main and val_every and ((step + 1) % val_every == 0 or step + 1 == meta["steps"]):
                row["val_loss"] = validation_loss(rule, family, cfg, device)
                best = counters.get("best_val_loss", math.inf)
                if math.isfinite(row["val_loss"]) and row["val_loss"] < best:
                    # validation is noisy: keep the best meta-parameters seen, beside the last ones
                    counters.update(best_val_loss=row["val_loss"], best_meta_step=step + 1)
                    save_checkpoint(run_dir / "best.pt", rule, step + 1, cfg, val_loss=row["val_loss"])
            row["seconds"] = time.perf_counter() - t0
            logger.log(row, step=step + 1)
            last = row
            bar.set_postfix({k: f"{row[k]:.4g}" for k in ("meta_loss", "val_loss") if k in row})
            snap = cfg.get("snapshot_every") or 0
            if main and snap and (step + 1) % snap == 0:   # kept for choosing a checkpoint afterwards
                save_checkpoint(run_dir / "snapshots" / f"step_{step + 1:06d}.pt", rule, step + 1, cfg)
            saved = bool(cfg.get("checkpoint_every")) and (step + 1) % cfg["checkpoint_every"] == 0
            if saved:
                checkpoint(step + 1, row["seconds"])
            signum = stop.signum or 0
            if ctx is not None:  # every worker stops at the same meta-step
                signum = all_reduce_max(signum, device)
            if signum and step + 1 < meta["steps"]:
                if not saved:
                    checkpoint(step + 1, row["seconds"])
                raise MetaTrainingInterrupted(signum, step + 1, ckpt_path)
        seconds = time.perf_counter() - t0
        checkpoint(meta["steps"], seconds)
    finally:
        stop.restore()
        bar.close()
        logger.finish()
    summary = _summary(run_dir, meta["steps"], seconds, counters, last)
    if ctx is not None:
        summary.update(rank=rank, world_size=world)
    if main:
        atomic_write_text(json.dumps(summary, indent=2), run_dir / "summary.json")
        done = meta["steps"] - start
        if done and counters["skipped_steps"] >= done:
            warnings.warn(f"every meta-step of this run was skipped ({counters['diverged_truncations']} diverged "
                          f"truncations): the inner problems diverge under the initial rule, so there is no "
                          f"meta-gradient to learn from. Make the initial steps smaller (the rule's step_mult / "
                          f"output_scale / lr) and start again; the meta-parameters are unchanged.", stacklevel=2)
    return summary


def _finite_step(meta_opt: torch.optim.Optimizer, meta_params: list[torch.Tensor]) -> bool:
    """``meta_opt.step()``, undone (parameters and optimizer state) if a meta-parameter would turn non-finite."""
    before = [p.detach().clone() for p in meta_params]
    state = copy.deepcopy(meta_opt.state_dict())
    meta_opt.step()
    if not meta_params or bool(torch.stack([torch.isfinite(p).all() for p in meta_params]).all()):  # one sync
        return True
    with torch.no_grad():
        for p, b in zip(meta_params, before):
            p.copy_(b)
    meta_opt.load_state_dict(state)
    return False


# Keys added after checkpoints were first written, with the value that older runs implicitly had.
ADDED_KEYS = {"distributed": False, "meta.population": 1, "meta.checkpoint_segments": 1,
              "meta.estimator": DEFAULT_ESTIMATOR, "meta.stagger": False, "es.std": 0.01, "es.pairs": 4,
              "pes.std": 0.01, "pes.pairs": 4,
              "optimizer.step_scale": "none", "optimizer.input_scale": "none", "optimizer.output_norm": True,
              "validation.metric": "mean_loss"}


def _check_same_run(saved: dict, cfg: dict, path: Path) -> None:
    a, b = {**ADDED_KEYS, **_flatten(saved)}, {**ADDED_KEYS, **_flatten(cfg)}
    diff = sorted(k for k in set(a) | set(b)
                  if a.get(k) != b.get(k) and not any(k == r or k.startswith(r + ".") for r in RESUMABLE_CHANGES))
    if diff:
        details = "; ".join(f"{k}: checkpoint {a.get(k)!r} vs now {b.get(k)!r}" for k in diff[:5])
        raise CheckpointError(f"checkpoint {path} was written by a different configuration ({details}); "
                              f"only {', '.join(RESUMABLE_CHANGES)} may change on resume")
