"""Every hand-crafted rule (and optionally a learned one) on 2D test surfaces, from the same start.

    python experiments/trajectories.py                          # Rosenbrock, Beale, 3 saddle runs, two minima
    python experiments/trajectories.py max_steps=50 animation.frames=20
    python experiments/trajectories.py learned_checkpoint=runs/meta_train/.../checkpoint.pt

Each rule runs through ``unroll`` with a callback that records the point after
every update. Writes to the run directory, per surface ``S`` of the config:
``trajectories_S.png`` (contours, minima as stars, saddle as X, start, one line
per rule) and ``trajectories_S.gif`` (the same, animated); then ``table.md``
(final point, final loss, distance to the nearest minimum, which minimum was
reached, whether the saddle was escaped, and the config's claims checked),
``results.json`` (with every trajectory), ``metrics.jsonl`` and an offline W&B run.

Outcomes, per surface and rule:
  reached   ``good`` (within ``reach_tol`` of a global minimum), ``poor`` (of a
            non-global local minimum), ``none`` (of neither), ``-`` (no minima);
  saddle    ``escaped`` when ``|y - y_saddle|`` exceeded ``escape_threshold`` at some
            step (y is the unstable direction of x^2 - y^2), else ``stuck``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from matplotlib.colors import LogNorm
from matplotlib.ticker import LogFormatterSciNotation, LogLocator
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from baselines import make_rule
from learned_opt.evaluation.tables import markdown_table
from learned_opt.runlog import RunLogger, check_wandb_config
from learned_opt.tasks import Surface, make_task
from learned_opt.unroll import unroll
from learned_opt.utils import atomic_write_text, generator, resolve_device

matplotlib.use("Agg")  # files only, no display

LEVELS = ("log", "linear")
EXPECT = {"good": "reached", "poor": "reached", "none": "reached", "escaped": "saddle", "stuck": "saddle"}
MAX_FRAMES = 60
FORMULAS = {
    "rosenbrock": r"$(1-x)^2 + 100\,(y-x^2)^2$",
    "beale": r"$(1.5-x+xy)^2 + (2.25-x+xy^2)^2 + (2.625-x+xy^3)^2$",
    "himmelblau": r"$(x^2+y-11)^2 + (x+y^2-7)^2$",
    "saddle": r"$x^2 - y^2$",
    "monkey_saddle": r"$x^3 - 3xy^2$",
    "two_minima": r"$0.05\,|p|^2 - \sum_k d_k\, e^{-|p-c_k|^2/2s_k^2}$",
    "bowl": r"$\frac{1}{2}(x^2 + \kappa y^2)$",
}


@dataclass
class SurfaceRun:
    """One surface entry of the config, validated: the task and one (label, rule, lr) per optimizer."""

    label: str
    task: Surface
    steps: int
    levels: str
    escape_threshold: float | None
    rules: dict[str, tuple[Any, float | None]]  # label -> (rule object, lr or None for a learned rule)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return value


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive number")
    return float(value)


def build(cfg: DictConfig, device: torch.device) -> dict[str, SurfaceRun]:
    """Validate the whole config (rules, surfaces, plots, claims) and build everything, before any work."""
    check_wandb_config(OmegaConf.to_container(cfg.wandb))
    if cfg.max_steps is not None:
        _positive_int("max_steps", cfg.max_steps)
    _positive("reach_tol", cfg.reach_tol)
    if _positive_int("grid", cfg.grid) < 10 or _positive_int("animation.grid", cfg.animation.grid) < 10:
        raise ValueError(f"grid={cfg.grid} and animation.grid={cfg.animation.grid} must be >= 10")
    if _positive_int("num_levels", cfg.num_levels) < 2 or _positive_int("animation.num_levels",
                                                                         cfg.animation.num_levels) < 2:
        raise ValueError(f"num_levels={cfg.num_levels} and animation.num_levels={cfg.animation.num_levels} "
                         f"must be >= 2")
    if not 2 <= _positive_int("animation.frames", cfg.animation.frames) <= MAX_FRAMES:
        raise ValueError(f"animation.frames={cfg.animation.frames} is not allowed; allowed: 2..{MAX_FRAMES}")
    _positive("animation.fps", cfg.animation.fps)
    _positive("animation.dpi", cfg.animation.dpi)
    for key in ("width", "height", "dpi"):
        _positive(f"figure.{key}", cfg.figure[key])
    if not cfg.rules:
        raise ValueError("rules is empty: name at least one rule")
    if not cfg.surfaces:
        raise ValueError("surfaces is empty: name at least one surface")
    shared = {label: OmegaConf.to_container(spec) for label, spec in cfg.rules.items()}
    for label, spec in shared.items():
        if "rule" not in spec:
            raise ValueError(f"rules.{label} needs a 'rule' (one of the baselines rules, e.g. 'adam')")
        if "lr" in spec:
            raise ValueError(f"rules.{label}.lr is not allowed: learning rates are per surface (surfaces.<name>.lr)")

    learned = None
    if cfg.learned_checkpoint is not None:
        path = Path(str(cfg.learned_checkpoint))
        if not path.is_file():
            raise ValueError(f"learned_checkpoint={str(path)!r}: no such file")
        if cfg.learned_label in shared:
            raise ValueError(f"learned_label={cfg.learned_label!r} clashes with a hand-crafted rule's label")
        from learned_opt.meta.checkpoint import load_rule  # only needed (and only importable) with a checkpoint
        learned = load_rule(path, device=device)

    runs = {}
    for label, scfg in cfg.surfaces.items():
        scfg = OmegaConf.to_container(scfg)
        unknown = sorted(set(scfg) - {"task", "steps", "levels", "escape_threshold", "lr", "hparams"})
        if unknown:
            raise ValueError(f"surfaces.{label}: unknown field(s) {unknown}; allowed: task, steps, levels, "
                             f"escape_threshold, lr, hparams")
        task_cfg = dict(scfg.get("task") or {})
        if "name" not in task_cfg:
            raise ValueError(f"surfaces.{label}.task needs a 'name' (a 2D surface, e.g. 'rosenbrock')")
        task = make_task(**task_cfg, device=device)
        if not isinstance(task, Surface):
            raise ValueError(f"surfaces.{label}.task.name={task_cfg['name']!r} is not a 2D surface")
        steps = _positive_int(f"surfaces.{label}.steps", scfg.get("steps"))
        steps = min(steps, cfg.max_steps) if cfg.max_steps is not None else steps
        levels = scfg.get("levels", "linear")
        if levels not in LEVELS:
            raise ValueError(f"surfaces.{label}.levels={levels!r} is not allowed; allowed: {', '.join(LEVELS)}")
        if levels == "log" and not math.isfinite(task.global_min_value):
            raise ValueError(f"surfaces.{label}.levels=log needs a surface bounded below; {task.name} is not")
        threshold = scfg.get("escape_threshold")
        if threshold is not None:
            _positive(f"surfaces.{label}.escape_threshold", threshold)
            if not task.saddle_points:
                raise ValueError(f"surfaces.{label}.escape_threshold is set but {task.name} has no saddle point")
        lrs = scfg.get("lr") or {}
        if sorted(lrs) != sorted(shared):
            raise ValueError(f"surfaces.{label}.lr must give one learning rate per rule; missing "
                             f"{sorted(set(shared) - set(lrs))}, unknown {sorted(set(lrs) - set(shared))}")
        overrides = scfg.get("hparams") or {}
        if set(overrides) - set(shared):
            raise ValueError(f"surfaces.{label}.hparams: unknown rule(s) {sorted(set(overrides) - set(shared))}; "
                             f"allowed: {', '.join(shared)}")
        rules = {}
        for rule_label, spec in shared.items():
            hp = {k: v for k, v in spec.items() if k != "rule"}
            hp.update(overrides.get(rule_label) or {})
            hp["lr"] = _positive(f"surfaces.{label}.lr.{rule_label}", lrs[rule_label])
            rules[rule_label] = (make_rule(spec["rule"], **hp), hp["lr"])  # raises on a bad rule/hyperparameter
        if learned is not None:
            rules[cfg.learned_label] = (learned, None)
        runs[label] = SurfaceRun(label, task, steps, levels, None if threshold is None else float(threshold), rules)

    for i, claim in enumerate(cfg.claims or []):
        where = f"claims[{i}]"
        if claim.get("surface") not in runs:
            raise ValueError(f"{where}.surface={claim.get('surface')!r} is not a configured surface; "
                             f"allowed: {', '.join(runs)}")
        run = runs[claim.surface]
        if claim.get("rule") not in run.rules:
            raise ValueError(f"{where}.rule={claim.get('rule')!r} is not a configured rule; allowed: "
                             f"{', '.join(run.rules)}")
        if claim.get("expect") not in EXPECT:
            raise ValueError(f"{where}.expect={claim.get('expect')!r} is not allowed; allowed: {', '.join(EXPECT)}")
        if EXPECT[claim.expect] == "saddle" and run.escape_threshold is None:
            raise ValueError(f"{where}: expect={claim.expect} needs surfaces.{claim.surface}.escape_threshold")
        if EXPECT[claim.expect] == "reached" and not run.task.minima:
            raise ValueError(f"{where}: expect={claim.expect} but {run.task.name} has no minima")
    return runs


def record_point(step: int, params: dict, loss: torch.Tensor) -> dict:
    return {"step": step, "xy": params["xy"].detach().double().cpu().tolist()}


def run_rule(run: SurfaceRun, rule, seed: int, device: torch.device) -> dict:
    """The trajectory of one rule on one surface: every point, from the start to the last update."""
    g = generator(seed, device)
    params = run.task.init_params(g)
    res = unroll(run.task, rule, params, rule.init(params), run.steps, g, callback=record_point, callback_every=1)
    xy = np.array([r["xy"] for r in res.records], dtype=np.float64)
    f = run.task.value(torch.from_numpy(xy[:, 0]), torch.from_numpy(xy[:, 1])).numpy()  # noise-free
    return {"xy": xy, "f": f, "diverged_at": res.diverged_at, "reason": res.reason}


def outcome(run: SurfaceRun, traj: dict, reach_tol: float) -> dict:
    """Final point and loss, nearest minimum and whether it was reached, saddle escape."""
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
            out["reached"] = "good" if task.minima_values[i] <= task.global_min_value + 1e-9 else "poor"
    if run.escape_threshold is not None:
        dev = np.abs(traj["xy"][:, 1] - task.saddle_points[0][1])
        out["max_dev"] = float(dev.max())
        beyond = np.flatnonzero(dev > run.escape_threshold)
        out["escaped"] = bool(beyond.size)
        out["escape_step"] = int(beyond[0]) if beyond.size else None
    return out


# --------------------------------------------------------------------------- figures


def draw_surface(ax, run: SurfaceRun, grid: int, num_levels: int, colorbar: bool = True) -> None:
    """Contours of f over the surface's bounds, its minima (stars), saddle points (X) and the start."""
    task = run.task
    (x0, x1), (y0, y1) = task.bounds
    X, Y = np.meshgrid(np.linspace(x0, x1, grid), np.linspace(y0, y1, grid))
    Z = task.value(torch.from_numpy(X), torch.from_numpy(Y)).numpy()
    if run.levels == "log":
        Z = Z - task.global_min_value
        lo = max(float(np.quantile(Z, 0.002)), float(Z.max()) * 1e-9, 1e-12)
        levels = np.logspace(np.log10(lo), np.log10(Z.max()), num_levels)
        Z, norm = np.maximum(Z, 0.5 * lo), LogNorm(vmin=levels[0], vmax=levels[-1])  # below lo: "extend"
        cb_label = "f(x, y)" if task.global_min_value == 0 else "f(x, y) − f_min"
        cb_label += "  (log-spaced levels)"
    else:
        levels, norm, cb_label = num_levels, None, "f(x, y)"
    filled = ax.contourf(X, Y, Z, levels=levels, norm=norm, cmap="viridis", alpha=0.45,
                         extend="min" if norm is not None else "neither")
    ax.contour(X, Y, Z, levels=filled.levels, norm=norm, colors="black", linewidths=0.4, alpha=0.25)
    if colorbar:
        cb = ax.figure.colorbar(filled, ax=ax, shrink=0.9, pad=0.02)
        cb.set_label(cb_label)
        if norm is not None:
            cb.ax.yaxis.set_major_locator(LogLocator())
            cb.ax.yaxis.set_major_formatter(LogFormatterSciNotation())
    for i, (mx, my) in enumerate(task.minima):
        good = task.minima_values[i] <= task.global_min_value + 1e-9
        ax.plot(mx, my, "*", ms=17, mfc="gold" if good else "silver", mec="black", zorder=6, ls="none",
                label="global minimum" if good else "poor local minimum")
    for sx, sy in task.saddle_points:
        ax.plot(sx, sy, "X", ms=11, mfc="red", mec="black", zorder=6, ls="none", label="saddle point")
    ax.plot(*task.start, "o", ms=9, mfc="white", mec="black", mew=2, zorder=6, ls="none",
            label=f"start ({task.start[0]:g}, {task.start[1]:g})")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_aspect("equal", adjustable="box")


def dedup_legend(ax, **kwargs) -> None:
    handles, labels = ax.get_legend_handles_labels()
    seen = {}
    for h, lab in zip(handles, labels):
        seen.setdefault(lab, h)
    ax.legend(seen.values(), seen.keys(), **kwargs)


def title(run: SurfaceRun) -> str:
    task = run.task
    extra = f", gradient noise σ={task.noise:g}" if task.noise > 0 else ""
    return f"{run.label}: {FORMULAS.get(task.name, task.name)}\n{run.steps} steps{extra}"


def rule_label(name: str, lr: float | None) -> str:
    return name if lr is None else f"{name} (lr={lr:g})"


def plot_surface(run: SurfaceRun, trajs: dict[str, dict], cfg: DictConfig, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(cfg.figure.width, cfg.figure.height), dpi=cfg.figure.dpi)
    draw_surface(ax, run, cfg.grid, cfg.num_levels)
    colors = plt.get_cmap("tab10").colors
    for k, (name, traj) in enumerate(trajs.items()):
        lr = run.rules[name][1]
        style = "--" if lr is None else "-"
        ax.plot(traj["xy"][:, 0], traj["xy"][:, 1], style, color=colors[k % 10], lw=1.6, alpha=0.9,
                label=rule_label(name, lr), zorder=4)
        ax.plot(*traj["xy"][-1], "o", color=colors[k % 10], ms=5, mec="black", mew=0.5, zorder=5)
    ax.set_title(title(run), fontsize=10)
    dedup_legend(ax, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def animate_surface(run: SurfaceRun, trajs: dict[str, dict], cfg: DictConfig, path: Path) -> Path:
    from matplotlib.animation import PillowWriter

    fig, ax = plt.subplots(figsize=(cfg.figure.width, cfg.figure.height), dpi=cfg.animation.dpi)
    draw_surface(ax, run, cfg.animation.grid, cfg.animation.num_levels)
    colors = plt.get_cmap("tab10").colors
    lines, heads = {}, {}
    for k, (name, traj) in enumerate(trajs.items()):
        lr = run.rules[name][1]
        lines[name], = ax.plot([], [], "--" if lr is None else "-", color=colors[k % 10], lw=1.6,
                               label=rule_label(name, lr), zorder=4)
        heads[name], = ax.plot([], [], "o", color=colors[k % 10], ms=6, mec="black", mew=0.5, zorder=5)
    dedup_legend(ax, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, borderaxespad=0)
    fig.tight_layout()
    longest = max(len(t["xy"]) for t in trajs.values())
    frames = np.unique(np.linspace(0, longest - 1, min(cfg.animation.frames, longest)).round().astype(int))

    writer = PillowWriter(fps=cfg.animation.fps)
    with writer.saving(fig, str(path), dpi=cfg.animation.dpi):  # one full draw per frame, no FuncAnimation redraws
        for step in frames:
            for name, traj in trajs.items():
                upto = min(int(step), len(traj["xy"]) - 1)
                lines[name].set_data(traj["xy"][:upto + 1, 0], traj["xy"][:upto + 1, 1])
                heads[name].set_data([traj["xy"][upto, 0]], [traj["xy"][upto, 1]])
            ax.set_title(f"{title(run)} (step {step}/{longest - 1})", fontsize=10)
            writer.grab_frame()
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- the job


def fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


@hydra.main(config_path="../configs", config_name="trajectories", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    device = resolve_device(cfg.device)
    runs = build(cfg, device)
    logger = RunLogger(run_dir, OmegaConf.to_container(cfg.wandb), name="trajectories", group="trajectories",
                       tags=list(runs), config=OmegaConf.to_container(cfg), job_type="trajectories")
    started = time.perf_counter()

    results: dict[str, dict[str, dict]] = {}
    trajectories: dict[str, dict[str, dict]] = {}
    bar = tqdm(total=sum(len(r.rules) for r in runs.values()), desc="surfaces x rules")
    for label, run in runs.items():
        trajectories[label], results[label] = {}, {}
        for name, (rule, lr) in run.rules.items():
            traj = run_rule(run, rule, cfg.seed, device)
            trajectories[label][name] = traj
            results[label][name] = {"lr": lr, "steps": run.steps, "diverged_at": traj["diverged_at"],
                                    **outcome(run, traj, cfg.reach_tol)}
            logger.log({"surface": label, "rule": name, **results[label][name]})
            bar.update()
            bar.set_postfix(surface=label, rule=name)
    bar.close()

    figures = []
    for label, run in tqdm(runs.items(), desc="figures and GIFs"):
        png = plot_surface(run, trajectories[label], cfg, run_dir / f"trajectories_{label}.png")
        logger.image(f"trajectories/{label}", png)
        figures.append(png.name)
        if cfg.animation.enabled:
            figures.append(animate_surface(run, trajectories[label], cfg, run_dir / f"trajectories_{label}.gif").name)

    columns = ["surface", "rule", "lr", "steps", "final (x, y)", "final f(x, y)", "dist. to nearest min",
               "reached", "saddle", "status"]
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

    claim_lines = []
    for claim in cfg.claims or []:
        r = results[claim.surface][claim.rule]
        got = r["reached"] if EXPECT[claim.expect] == "reached" else ("escaped" if r["escaped"] else "stuck")
        ok = got == claim.expect
        claim_lines.append(f"- [{'holds' if ok else 'FAILS'}] {claim.surface} / {claim.rule}: expected "
                           f"{claim.expect}, got {got}")
    n_hold = sum("[holds]" in c for c in claim_lines)
    elapsed = time.perf_counter() - started

    header = (f"Trajectories of {len(next(iter(runs.values())).rules)} rules on {len(runs)} surface runs, "
              f"seed {cfg.seed}, device {device}; reach_tol {cfg.reach_tol}; total {elapsed:.1f} s.\n\n")
    claims_md = (f"\n## Claims ({n_hold}/{len(claim_lines)} hold)\n\n" + "\n".join(claim_lines) + "\n"
                 if claim_lines else "")
    text = header + markdown_table(columns, rows) + claims_md
    atomic_write_text(text, run_dir / "table.md")
    atomic_write_text(json.dumps({
        "config": OmegaConf.to_container(cfg), "results": results, "claims": claim_lines, "seconds": elapsed,
        "trajectories": {s: {n: t["xy"].tolist() for n, t in per.items()} for s, per in trajectories.items()},
    }), run_dir / "results.json")
    logger.table("trajectories", columns, rows)
    logger.summary({"claims_hold": n_hold, "claims_total": len(claim_lines), "seconds": elapsed})
    logger.finish()
    print(text)
    print(f"wrote {run_dir}/table.md, results.json, {', '.join(figures)}")


if __name__ == "__main__":
    main()
