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
(bit-for-bit on CPU). Metrics go to ``metrics.jsonl`` and to W&B.

Scaling options: ``meta.population`` (unroll that many tasks at once as one batched
population), ``meta.checkpoint_segments`` (gradient checkpointing over segments of a
truncation; bptt only, see :mod:`~learned_opt.meta.bptt`) and ``distributed`` (data-parallel
workers started by ``torchrun``; see :mod:`~learned_opt.meta.distributed`: the
meta-gradient is averaged over all workers' tasks before clipping, rank 0 validates,
logs and writes the checkpoints).
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..optimizers import make_learned_rule
from ..runlog import RunLogger, check_wandb_config
from ..tasks import make_family
from ..unroll import unroll
from ..utils import generator, resolve_device
from .checkpoint import CheckpointError, load_checkpoint, rule_from_checkpoint, save_checkpoint
from .inner import META_LOSSES
from .distributed import (DistContext, all_gather_objects, all_reduce_estimate, broadcast_parameters,
                          init_distributed, shutdown)
from .bptt import TruncatedBPTT
from .es import TruncatedES, check_es_options
from .pes import PES

ESTIMATORS = {"bptt": TruncatedBPTT, "es": TruncatedES, "pes": PES}
META_OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}
# Config entries that may differ between a checkpoint and the run that resumes it.
RESUMABLE_CHANGES = ("meta.steps", "meta.checkpoint_segments", "checkpoint_every", "wandb", "progress", "device")


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
    """Every bad value raises here, before any work starts."""
    meta = cfg["meta"]
    for key in ("steps", "horizon", "truncation", "tasks_per_step"):
        if not isinstance(meta.get(key), int) or meta[key] < 1:
            raise ValueError(f"meta.{key}={meta.get(key)!r} must be an integer >= 1")
    if meta["truncation"] > meta["horizon"]:
        raise ValueError(f"meta.truncation={meta['truncation']} must be <= meta.horizon={meta['horizon']}")
    population = meta.get("population", 1)
    if isinstance(population, bool) or not isinstance(population, int) or population < 1 \
            or meta["tasks_per_step"] % population:
        raise ValueError(f"meta.population={population!r} must be an integer >= 1 that divides "
                         f"meta.tasks_per_step={meta['tasks_per_step']} (tasks are unrolled in groups of that size)")
    segments = meta.get("checkpoint_segments", 1)
    if isinstance(segments, bool) or not isinstance(segments, int) or not 1 <= segments <= meta["truncation"]:
        raise ValueError(f"meta.checkpoint_segments={segments!r} must be an integer in "
                         f"[1, meta.truncation={meta['truncation']}] (1: no gradient checkpointing)")
    estimator = meta.get("estimator", "bptt")
    if estimator not in ESTIMATORS:
        raise ValueError(f"meta.estimator={estimator!r} is not allowed; allowed: {', '.join(ESTIMATORS)}")
    if estimator != "bptt":
        block = cfg.get(estimator) or {}
        check_es_options(block.get("std", 0.01), block.get("pairs", 4), estimator)
    if meta.get("meta_loss", "mean") not in META_LOSSES:
        raise ValueError(f"meta.meta_loss={meta.get('meta_loss')!r} is not allowed; allowed: {', '.join(META_LOSSES)}")
    if not isinstance(meta.get("stagger", False), bool):
        raise ValueError(f"meta.stagger={meta.get('stagger')!r} must be true or false")
    if not isinstance(cfg.get("distributed", False), bool):
        raise ValueError(f"distributed={cfg.get('distributed')!r} must be true or false")
    if meta.get("optimizer", "adam") not in META_OPTIMIZERS:
        raise ValueError(f"meta.optimizer={meta.get('optimizer')!r} is not allowed; "
                         f"allowed: {', '.join(META_OPTIMIZERS)}")
    if not meta.get("lr", 0) > 0:
        raise ValueError(f"meta.lr={meta.get('lr')!r} must be > 0")
    if meta.get("clip_grad_norm") is not None and not meta["clip_grad_norm"] > 0:
        raise ValueError(f"meta.clip_grad_norm={meta['clip_grad_norm']!r} must be > 0 or null")
    if cfg.get("checkpoint_every", 1) < 0:
        raise ValueError(f"checkpoint_every={cfg['checkpoint_every']!r} must be >= 0 (0: only at the end)")
    if (cfg.get("validation") or {}).get("metric", "mean_loss") not in ("mean_loss", "log_ratio"):
        raise ValueError(f"validation.metric={cfg['validation']['metric']!r} is not allowed; allowed: mean_loss, log_ratio")
    check_wandb_config(cfg.get("wandb"))


def build_rule(cfg: dict, device: torch.device) -> nn.Module:
    opt_cfg = dict(cfg["optimizer"])
    name = opt_cfg.pop("name")
    torch.manual_seed(cfg["seed"])  # the rule's initial meta-parameters
    return make_learned_rule(name, **opt_cfg).to(device)


def build_estimator(cfg: dict, family, device: torch.device, rank: int = 0):
    """The meta-gradient estimator named by ``meta.estimator``, over ``meta.tasks_per_step`` inner problems."""
    meta = cfg["meta"]
    name = meta.get("estimator", "bptt")
    kw = dict(horizon=meta["horizon"], truncation=meta["truncation"], num_tasks=meta["tasks_per_step"],
              device=device, generator=generator(cfg["seed"]), meta_loss=meta.get("meta_loss", "mean"),
              divergence_factor=meta.get("divergence_factor", 1e3), population=meta.get("population", 1),
              slot_offset=rank * meta["tasks_per_step"], stagger=meta.get("stagger", False))
    if name == "bptt":
        return TruncatedBPTT(family, first_order=meta.get("first_order", False),
                             checkpoint_segments=meta.get("checkpoint_segments", 1), **kw)
    block = cfg.get(name) or {}
    return ESTIMATORS[name](family, std=block.get("std", 0.01), pairs=block.get("pairs", 4), **kw)


def validation_loss(rule: nn.Module, family, cfg: dict, device: torch.device) -> float:
    """Mean training loss over ``validation.steps`` on fixed held-out tasks (no meta-gradient); with
    ``validation.metric=log_ratio``, the mean of log(loss / first loss) instead (tasks weigh alike)."""
    val = cfg.get("validation") or {}
    n, steps = int(val.get("tasks", 0)), int(val.get("steps", cfg["meta"]["horizon"]))
    metric = val.get("metric", "mean_loss")
    losses = []
    for i in range(n):
        seed = 10_000_000 + i  # held out: training task seeds are drawn from the run's generator
        task = family.sample(torch.Generator().manual_seed(seed))
        g = generator(seed, device)
        params = task.init_params(g)
        with torch.no_grad():
            state = rule.init(params, horizon=steps) if getattr(rule, "uses_horizon", False) else rule.init(params)
            res = unroll(task, rule, params, state, steps, g)
        if res.diverged:
            losses.append(math.inf)
        elif metric == "log_ratio":  # every task weighs alike: mean log of the loss relative to the first
            losses.append(float((res.losses.clamp_min(1e-30).log() - res.losses[0].clamp_min(1e-30).log()).mean()))
        else:
            losses.append(float(res.losses.mean()))
    return sum(losses) / n if n else float("nan")


class _NoLogger:
    """What workers other than rank 0 log to: nothing."""

    def log(self, metrics: dict, step: int | None = None) -> None:
        pass

    def finish(self) -> None:
        pass


def meta_train(cfg: dict, run_dir: str | Path, resume: bool = False) -> dict:
    """Meta-train ``cfg["optimizer"]`` on ``cfg["family"]``; returns a summary dict.

    With ``cfg["distributed"]`` true, this is one worker of a ``torchrun`` job: it joins the
    process group (gloo on CPU, nccl on CUDA) and leaves it at the end. Only rank 0 writes
    to ``run_dir``; every worker returns the summary (with ``rank`` and ``world_size``).
    """
    check_config(cfg)
    ctx = init_distributed(cfg.get("device", "cpu")) if cfg.get("distributed", False) else None
    try:
        return _meta_train(cfg, Path(run_dir), resume, ctx)
    finally:
        shutdown(ctx)


def _meta_train(cfg: dict, run_dir: Path, resume: bool, ctx: DistContext | None) -> dict:
    ckpt_path = run_dir / "checkpoint.pt"
    device = ctx.device if ctx is not None else resolve_device(cfg.get("device", "cpu"))
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    main = rank == 0
    meta = cfg["meta"]
    family_cfg = dict(cfg["family"])
    family = make_family(family_cfg.pop("name"), device=device, **family_cfg)
    rule = build_rule(cfg, device)
    meta_opt = META_OPTIMIZERS[meta.get("optimizer", "adam")](rule.parameters(), lr=meta["lr"])
    estimator = build_estimator(cfg, family, device, rank)
    start, counters, elapsed_before = 0, {"diverged_truncations": 0, "skipped_steps": 0}, 0.0
    if resume:
        if not ckpt_path.exists():
            raise CheckpointError(f"resume=true but there is no checkpoint at {ckpt_path}")
        ckpt = load_checkpoint(ckpt_path)
        _check_same_run(json.loads(ckpt["config"]), cfg, ckpt_path)
        if int(ckpt.get("world_size", 1)) != world:
            raise CheckpointError(f"checkpoint {ckpt_path} was written by {ckpt.get('world_size', 1)} workers; "
                                  f"resume it with the same number (now {world})")
        rule.load_state_dict(rule_from_checkpoint(ckpt, ckpt_path).state_dict())
        meta_opt.load_state_dict(ckpt["meta_opt"])
        estimator.load_state_dict(ckpt["estimator_ranks"][rank] if ctx is not None else ckpt["estimator"], rule)
        torch.set_rng_state(ckpt["torch_rng"])
        start, counters = int(ckpt["meta_step"]), dict(ckpt["counters"])
        elapsed_before = float(ckpt.get("seconds", 0.0))
    elif ckpt_path.exists():
        raise CheckpointError(f"{ckpt_path} already exists: pass resume=true to continue it, "
                              f"or choose another run directory (nothing was overwritten)")

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
                            counters=counters, seconds=seconds, **extra)

    logger = RunLogger(run_dir, cfg.get("wandb"), name=f"meta_train-{cfg['optimizer']['name']}",
                       group="meta_train", tags=[cfg["optimizer"]["name"]], config=cfg,
                       job_type="meta_train") if main else _NoLogger()
    from tqdm.auto import tqdm
    bar = tqdm(range(start, meta["steps"]), initial=start, total=meta["steps"], desc="meta-train",
               disable=not (main and cfg.get("progress", True)))
    t0 = time.perf_counter() - elapsed_before
    val_every = int((cfg.get("validation") or {}).get("every", 0))
    last = {}
    try:
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
                meta_opt.step()
                row.update(meta_loss=est.meta_loss, inner_loss=est.inner_loss, grad_norm=float(norm))
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
            if cfg.get("checkpoint_every") and (step + 1) % cfg["checkpoint_every"] == 0:
                checkpoint(step + 1, row["seconds"])
        seconds = time.perf_counter() - t0
        checkpoint(meta["steps"], seconds)
    finally:
        bar.close()
        logger.finish()
    summary = {"meta_steps": meta["steps"], "seconds": seconds, "checkpoint": str(ckpt_path), **counters,
               **({"best_checkpoint": str(run_dir / "best.pt")} if "best_val_loss" in counters else {}),
               **{k: v for k, v in last.items() if k in ("meta_loss", "inner_loss", "val_loss")}}
    if ctx is not None:
        summary.update(rank=rank, world_size=world)
    if main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        done = meta["steps"] - start
        if done and counters["skipped_steps"] >= done:
            warnings.warn(f"every meta-step of this run was skipped ({counters['diverged_truncations']} diverged "
                          f"truncations): the inner problems diverge under the initial rule, so there is no "
                          f"meta-gradient to learn from. Make the initial steps smaller (the rule's step_mult / "
                          f"output_scale / lr) and start again; the meta-parameters are unchanged.", stacklevel=2)
    return summary


# Keys added after checkpoints were first written, with the value that older runs implicitly had.
ADDED_KEYS = {"distributed": False, "meta.population": 1, "meta.checkpoint_segments": 1,
              "meta.estimator": "bptt", "meta.stagger": False, "es.std": 0.01, "es.pairs": 4,
              "pes.std": 0.01, "pes.pairs": 4,
              "optimizer.step_scale": "none", "optimizer.input_scale": "none", "optimizer.output_norm": True}


def _check_same_run(saved: dict, cfg: dict, path: Path) -> None:
    a, b = {**ADDED_KEYS, **_flatten(saved)}, {**ADDED_KEYS, **_flatten(cfg)}
    diff = sorted(k for k in set(a) | set(b)
                  if a.get(k) != b.get(k) and not any(k == r or k.startswith(r + ".") for r in RESUMABLE_CHANGES))
    if diff:
        details = "; ".join(f"{k}: checkpoint {a.get(k)!r} vs now {b.get(k)!r}" for k in diff[:5])
        raise CheckpointError(f"checkpoint {path} was written by a different configuration ({details}); "
                              f"only {', '.join(RESUMABLE_CHANGES)} may change on resume")
