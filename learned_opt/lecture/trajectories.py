"""Update rules on 2-D test surfaces, all from the same start: the runs a config asks for, their
trajectories, what each reached, and the claims a config makes about them::

    runs = build_runs(cfg, device)            # validated: surface label -> SurfaceRun (task, steps, rules)
    traj = run_rule(run, rule, seed, device)  # every point, the start included, and f there (noise-free)
    out = outcome(run, traj, reach_tol)       # final point and loss, nearest minimum, saddle escape
    lines = check_claims(cfg["claims"], results)

Outcomes, per surface and rule:
  reached   ``good`` (within ``reach_tol`` of a global minimum), ``poor`` (of a non-global local
            minimum), ``none`` (of neither), ``-`` (the surface has no minima);
  saddle    ``escaped`` when ``|y - y_saddle|`` exceeded ``escape_threshold`` at some step (y is the
            unstable direction of x^2 - y^2), else ``stuck``.

:func:`surface_contour` gives :func:`~learned_opt.evaluation.plots.contour_plot` the surface's
values over its plotting window, its minima, saddle points and start.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from baselines import RULES

from ..schema import (WANDB, ConfigError, Field, boolean, check, check_choice, check_number, check_call, choice,
                      delegated, device as device_field, integer, list_of, number, optional, section, string)
from ..tasks.surfaces import SURFACES, Surface
from ..unroll import unroll
from ..utils import generator
from ..evaluation.report import fmt

__all__ = ["SCHEMA", "EXPECT", "SurfaceRun", "check_config", "build_runs", "run_rule", "outcome", "COLUMNS",
           "table_rows", "check_claims", "surface_contour", "title", "rule_label"]

LEVELS = ("log", "linear")
EXPECT = {"good": "reached", "poor": "reached", "none": "reached", "escaped": "saddle", "stuck": "saddle"}
MAX_FRAMES = 60
POSITIVE = number(0, low_open=True)
FORMULAS = {
    "rosenbrock": r"$(1-x)^2 + 100\,(y-x^2)^2$",
    "beale": r"$(1.5-x+xy)^2 + (2.25-x+xy^2)^2 + (2.625-x+xy^3)^2$",
    "himmelblau": r"$(x^2+y-11)^2 + (x+y^2-7)^2$",
    "saddle": r"$x^2 - y^2$",
    "monkey_saddle": r"$x^3 - 3xy^2$",
    "two_minima": r"$0.05\,|p|^2 - \sum_k d_k\, e^{-|p-c_k|^2/2s_k^2}$",
    "bowl": r"$\frac{1}{2}(x^2 + \kappa y^2)$",
}


def _labelled(checker) -> Any:
    """A non-empty mapping label -> entry, each entry checked by ``checker``."""
    def check_labelled(path: str, value: Any) -> None:
        if not isinstance(value, Mapping) or not value:
            raise ConfigError(f"{path}={value!r} is not allowed; allowed: a non-empty mapping label -> entry")
        for label, entry in value.items():
            checker(f"{path}.{label}", entry)
    return check_labelled


def _rule_entry(path: str, value: Any) -> None:
    """A hand-crafted rule and the hyperparameters it keeps on every surface (its lr is per surface)."""
    if not isinstance(value, Mapping) or "rule" not in value:
        raise ConfigError(f"{path}={value!r} is not allowed; allowed: a mapping with `rule` (one of "
                          f"{', '.join(RULES)}) and its hyperparameters")
    check_choice(f"{path}.rule", value["rule"], tuple(RULES))
    if "lr" in value:
        raise ConfigError(f"{path}.lr={value['lr']!r} is not allowed here: learning rates are per surface "
                          f"(surfaces.<name>.lr)")


SURFACE = {"task": Field(delegated, required=True), "steps": Field(integer(1), required=True),
           "levels": Field(choice(*LEVELS)), "escape_threshold": Field(optional(POSITIVE)),
           "lr": Field(delegated, required=True), "hparams": Field(optional(delegated))}
CLAIM = {"surface": Field(string, required=True), "rule": Field(string, required=True),
         "expect": Field(choice(*EXPECT), required=True)}
SCHEMA = {  # the fields of configs/trajectories.yaml
    "seed": Field(integer(0)), "device": Field(device_field), "max_steps": Field(optional(integer(1))),
    "learned_checkpoint": Field(optional(string)), "learned_label": Field(string),
    "rules": Field(_labelled(_rule_entry), required=True),
    "surfaces": Field(_labelled(section(SURFACE)), required=True),
    "reach_tol": Field(POSITIVE), "grid": Field(integer(10)), "num_levels": Field(integer(2)),
    "figure": {"width": Field(POSITIVE), "height": Field(POSITIVE), "dpi": Field(POSITIVE)},
    "animation": {"enabled": Field(boolean), "frames": Field(integer(2, MAX_FRAMES)), "fps": Field(POSITIVE),
                  "dpi": Field(POSITIVE), "grid": Field(integer(10)), "num_levels": Field(integer(2))},
    "claims": Field(optional(list_of(section(CLAIM)))),
    "wandb": WANDB,
}


@dataclass
class SurfaceRun:
    """One surface entry of the config, built: the task, its steps and one (rule, lr) per label."""

    label: str
    task: Surface
    steps: int
    levels: str
    escape_threshold: float | None
    rules: dict[str, tuple[Any, float | None]]  # label -> (rule object, lr or None for a learned rule)


def check_config(cfg: dict) -> None:
    """Check the config (a plain dict) against :data:`SCHEMA` and its fields against each other: one
    learning rate per rule on every surface, overrides of configured rules only, claims about configured
    surfaces and rules, saddle claims on surfaces with an ``escape_threshold``."""
    check(cfg, SCHEMA)
    shared = list(cfg["rules"])
    learned = cfg.get("learned_checkpoint")
    if learned is not None:
        if not Path(learned).is_file():
            raise ConfigError(f"learned_checkpoint={learned!r} is not allowed; allowed: a checkpoint file "
                              f"(no such file)")
        if cfg["learned_label"] in shared:
            raise ConfigError(f"learned_label={cfg['learned_label']!r} is not allowed; allowed: a label no "
                              f"hand-crafted rule has ({', '.join(shared)})")
    for label, s in cfg["surfaces"].items():
        lrs = s["lr"]
        if not isinstance(lrs, Mapping) or sorted(lrs) != sorted(shared):
            raise ConfigError(f"surfaces.{label}.lr={lrs!r} is not allowed; allowed: one learning rate per rule "
                              f"({', '.join(shared)})")
        for rule_label, lr in lrs.items():
            POSITIVE(f"surfaces.{label}.lr.{rule_label}", lr)
        overrides = s.get("hparams") or {}
        if not isinstance(overrides, Mapping) or set(overrides) - set(shared):
            raise ConfigError(f"surfaces.{label}.hparams={overrides!r} is not allowed; allowed: a mapping rule "
                              f"-> hyperparameters, for the rules {', '.join(shared)}")
    rules = shared + ([cfg["learned_label"]] if learned is not None else [])
    for i, claim in enumerate(cfg.get("claims") or []):
        check_choice(f"claims[{i}].surface", claim["surface"], tuple(cfg["surfaces"]))
        check_choice(f"claims[{i}].rule", claim["rule"], tuple(rules))
        if EXPECT[claim["expect"]] == "saddle" and cfg["surfaces"][claim["surface"]].get("escape_threshold") is None:
            raise ConfigError(f"claims[{i}].expect={claim['expect']!r} is not allowed; allowed for "
                              f"{claim['surface']} (no escape_threshold): good, poor, none")


def build_runs(cfg: dict, device: torch.device) -> dict[str, SurfaceRun]:
    """Check the config (:func:`check_config`) and build every surface, rule and the learned rule, so a bad
    entry fails before any work: surface label -> :class:`SurfaceRun`."""
    check_config(cfg)
    learned = None
    if cfg.get("learned_checkpoint") is not None:
        from ..optimizers.files import load_rule  # only needed (and only importable) with a checkpoint
        learned = load_rule(Path(cfg["learned_checkpoint"]), device=device)
    runs = {}
    for label, s in cfg["surfaces"].items():
        task_cfg = dict(s["task"]) if isinstance(s["task"], Mapping) else {"name": s["task"]}
        name = check_choice(f"surfaces.{label}.task.name", task_cfg.pop("name", None), tuple(SURFACES))
        task = check_call(f"surfaces.{label}.task", f"surface {name!r}", SURFACES[name], task_cfg,
                          inject={"device": device})
        levels = s.get("levels", "linear")
        if levels == "log" and not math.isfinite(task.global_min_value):
            raise ConfigError(f"surfaces.{label}.levels='log' is not allowed; allowed: linear ({name} is not "
                              f"bounded below)")
        if s.get("escape_threshold") is not None and not task.saddle_points:
            raise ConfigError(f"surfaces.{label}.escape_threshold={s['escape_threshold']!r} is not allowed; "
                              f"allowed: null ({name} has no saddle point)")
        rules = {}
        for rule_label, spec in cfg["rules"].items():
            override = (s.get("hparams") or {}).get(rule_label) or {}
            hp = {**{k: v for k, v in spec.items() if k != "rule"}, **override, "lr": float(s["lr"][rule_label])}
            where = f"surfaces.{label}.hparams.{rule_label}" if override else f"rules.{rule_label}"
            rules[rule_label] = (check_call(where, f"rule {spec['rule']!r}", RULES[spec["rule"]], hp), hp["lr"])
        if learned is not None:
            rules[cfg["learned_label"]] = (learned, None)
        steps = s["steps"] if cfg.get("max_steps") is None else min(s["steps"], cfg["max_steps"])
        threshold = s.get("escape_threshold")
        runs[label] = SurfaceRun(label, task, steps, levels, None if threshold is None else float(threshold), rules)
    for i, claim in enumerate(cfg.get("claims") or []):
        run = runs[claim["surface"]]
        if EXPECT[claim["expect"]] == "reached" and not run.task.minima:
            raise ConfigError(f"claims[{i}].expect={claim['expect']!r} is not allowed; allowed for "
                              f"{claim['surface']} ({run.task.name} has no minima): escaped, stuck")
    return runs


def _record_point(step: int, params: dict, loss: torch.Tensor) -> dict:
    return {"step": step, "xy": params["xy"].detach().double().cpu().tolist()}


def run_rule(run: SurfaceRun, rule: Any, seed: int, device: torch.device) -> dict:
    """The trajectory of one rule on one surface through :func:`~learned_opt.unroll.unroll`, the point
    recorded after every update: ``xy`` ``(steps + 1, 2)`` (fewer if it diverged), ``f`` the noise-free
    value there, ``diverged_at`` and ``reason``. The generator seeded with ``seed`` draws the start and the
    gradient noise, so every rule sees the same noise on a surface."""
    g = generator(seed, device)
    params = run.task.init_params(g)
    res = unroll(run.task, rule, params, rule.init(params), run.steps, g, callback=_record_point, callback_every=1)
    xy = np.array([r["xy"] for r in res.records], dtype=np.float64)
    f = run.task.value(torch.from_numpy(xy[:, 0]), torch.from_numpy(xy[:, 1])).numpy()
    return {"xy": xy, "f": f, "diverged_at": res.diverged_at, "reason": res.reason}


def _is_global(task: Surface, i: int) -> bool:
    return task.minima_values[i] <= task.global_min_value + 1e-9


def outcome(run: SurfaceRun, traj: Mapping[str, np.ndarray], reach_tol: float) -> dict:
    """Final point and loss, distance to the nearest minimum and which kind it reached (see the module
    docstring), and for a saddle run whether ``|y - y_saddle|`` ever exceeded the threshold (at which step)
    and its largest value."""
    check_number("reach_tol", reach_tol, 0, low_open=True)
    task, final = run.task, traj["xy"][-1]
    out = {"final_xy": final.tolist(), "final_loss": float(traj["f"][-1]), "dist_min": None, "reached": "-",
           "escaped": None, "escape_step": None, "max_dev": None}
    if task.minima:
        dists = [math.dist(final, m) for m in task.minima]
        i = int(np.argmin(dists))
        out["dist_min"] = dists[i]
        if not np.isfinite(dists[i]) or dists[i] > reach_tol:
            out["reached"] = "none"
        else:
            out["reached"] = "good" if _is_global(task, i) else "poor"
    if run.escape_threshold is not None:
        dev = np.abs(traj["xy"][:, 1] - task.saddle_points[0][1])
        out["max_dev"] = float(dev.max())
        beyond = np.flatnonzero(dev > run.escape_threshold)
        out["escaped"] = bool(beyond.size)
        out["escape_step"] = int(beyond[0]) if beyond.size else None
    return out


COLUMNS = ["surface", "rule", "lr", "steps", "final (x, y)", "final f(x, y)", "dist. to nearest min", "reached",
           "saddle", "status"]


def table_rows(results: Mapping[str, Mapping[str, dict]]) -> list[list]:
    """One row of :data:`COLUMNS` per surface and rule of ``results[surface][rule]`` (an :func:`outcome`
    with ``lr``, ``steps`` and ``diverged_at``)."""
    rows = []
    for label, per_rule in results.items():
        for name, r in per_rule.items():
            if r["escaped"] is None:
                saddle = "-"
            elif r["escaped"]:
                saddle = f"escaped at step {r['escape_step']}"
            else:
                saddle = f"stuck (max deviation {r['max_dev']:.3g})"  # no "|": it would split the cell
            status = "ok" if r["diverged_at"] is None else f"diverged at step {r['diverged_at']}"
            rows.append([label, name, fmt(r["lr"]), r["steps"], f"({r['final_xy'][0]:.4g}, {r['final_xy'][1]:.4g})",
                         fmt(r["final_loss"]), fmt(r["dist_min"], 3), r["reached"], saddle, status])
    return rows


def check_claims(claims: Sequence[Mapping[str, str]] | None, results: Mapping[str, Mapping[str, dict]]) -> list[str]:
    """One line per claim ``{surface, rule, expect}``: ``- [holds] ...`` or ``- [FAILS] ...`` with what was
    expected and what the run got."""
    lines = []
    for claim in claims or []:
        r = results[claim["surface"]][claim["rule"]]
        got = r["reached"] if EXPECT[claim["expect"]] == "reached" else ("escaped" if r["escaped"] else "stuck")
        lines.append(f"- [{'holds' if got == claim['expect'] else 'FAILS'}] {claim['surface']} / {claim['rule']}: "
                     f"expected {claim['expect']}, got {got}")
    return lines


# --------------------------------------------------------------------------- figures


def surface_contour(run: SurfaceRun, grid: int) -> dict:
    """:func:`~learned_opt.evaluation.plots.contour_plot`'s arguments for the run's surface: f on a
    ``grid`` x ``grid`` mesh over its plotting window (less its minimum, with log levels), the minima
    (gold: global, silver: poor), saddle points and the start, equal axes."""
    task = run.task
    (x0, x1), (y0, y1) = task.bounds
    xs, ys = np.linspace(x0, x1, grid), np.linspace(y0, y1, grid)
    X, Y = np.meshgrid(xs, ys)
    z = task.value(torch.from_numpy(X), torch.from_numpy(Y)).numpy()
    log = run.levels == "log"
    if log:
        z = z - task.global_min_value
        colorbar = ("f(x, y)" if task.global_min_value == 0 else "f(x, y) − f_min") + "  (log-spaced levels)"
    else:
        colorbar = "f(x, y)"
    markers = [("minimum", mx, my, "global minimum") if _is_global(task, i) else
               ("local minimum", mx, my, "poor local minimum") for i, (mx, my) in enumerate(task.minima)]
    markers += [("saddle", sx, sy, "saddle point") for sx, sy in task.saddle_points]
    markers.append(("start", *task.start, f"start ({task.start[0]:g}, {task.start[1]:g})"))
    return {"xs": xs, "ys": ys, "z": z, "log": log, "colorbar": colorbar, "markers": markers, "equal_aspect": True}


def title(run: SurfaceRun) -> str:
    """The run's label, the surface's formula, its steps and gradient noise."""
    task = run.task
    extra = f", gradient noise σ={task.noise:g}" if task.noise > 0 else ""
    return f"{run.label}: {FORMULAS.get(task.name, task.name)}\n{run.steps} steps{extra}"


def rule_label(name: str, lr: float | None) -> str:
    """``adam (lr=0.05)``, or the bare name for a learned rule (no lr)."""
    return name if lr is None else f"{name} (lr={lr:g})"
