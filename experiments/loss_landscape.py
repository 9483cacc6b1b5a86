"""Loss landscapes of one network trained by different optimizers (Li et al. 2018).

    python experiments/loss_landscape.py                     # digits MLP [32] relu, SGD vs Adam
    python experiments/loss_landscape.py steps=3000 contour.resolution=61 task.dataset=mnist5k

Each optimizer trains the same initial weights theta_0 through ``unroll``, with a
callback keeping the weights every ``record_every`` steps. Around each trained
``theta_T`` (math in ``learned_opt.evaluation.landscape``):

1. ``interpolation.png``: train and test loss at ``(1 - alpha) theta_0 + alpha theta_T``,
   alpha in ``[alpha_min, alpha_max]`` (Goodfellow et al. 2015), every optimizer in one plot;
2. ``contour_<opt>.png``: training loss at ``theta_T + a d1 + b d2`` for two random
   filter-normalised directions (biases get the zero direction with ``contour.ignore_biases``);
3. ``pca_<opt>.png``: training loss in the plane of the top two principal directions of
   ``[theta_i - theta_T]``, with the trajectory projected onto it.

Plus ``table.md`` (final losses, the loss at alpha = 0.5, the interpolation barrier,
the PC1 + PC2 explained variance), ``results.json``, ``metrics.jsonl`` and an offline W&B run.
Landscape losses use a fixed set of examples (``eval_examples``), batched over grid points.
"""
from __future__ import annotations

import json
import math
import time
import warnings
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
from learned_opt.evaluation import landscape as L
from learned_opt.evaluation.tables import markdown_table
from learned_opt.runlog import RunLogger, check_wandb_config
from learned_opt.tasks import make_task
from learned_opt.unroll import unroll
from learned_opt.utils import atomic_write_text, check_int, generator, resolve_device

matplotlib.use("Agg")  # files only, no display


def _number(name: str, value: Any, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise ValueError(f"{name}={value!r} must be a {'positive ' if positive else ''}finite number")
    return float(value)


def build(cfg: DictConfig, device: torch.device):
    """Validate the whole config and build the tasks and rule specs, before any work starts."""
    check_wandb_config(OmegaConf.to_container(cfg.wandb))
    steps = check_int("steps", cfg.steps, 1)
    every = check_int("record_every", cfg.record_every, 1)
    snapshots = steps // every + (1 if steps % every == 0 else 2)  # steps 0, k, 2k, ... plus the final weights
    if snapshots < 3:
        raise ValueError(f"steps={steps} with record_every={every} keeps {snapshots} snapshots; the PCA of the "
                         f"trajectory needs at least 3 (lower record_every)")
    if cfg.eval_examples is not None:
        check_int("eval_examples", cfg.eval_examples, 1)
    check_int("chunk_size", cfg.chunk_size, 1)
    if not isinstance(cfg.vmap, bool):
        raise ValueError(f"vmap={cfg.vmap!r} must be true or false")
    lo = _number("interpolation.alpha_min", cfg.interpolation.alpha_min)
    hi = _number("interpolation.alpha_max", cfg.interpolation.alpha_max)
    if not (lo <= 0 and hi >= 1):
        raise ValueError(f"interpolation.alpha_min={lo} and alpha_max={hi} must bracket [0, 1] "
                         f"(alpha_min <= 0, alpha_max >= 1)")
    check_int("interpolation.points", cfg.interpolation.points, 3)
    _number("contour.span", cfg.contour.span, positive=True)
    check_int("contour.resolution", cfg.contour.resolution, 3)
    check_int("pca.resolution", cfg.pca.resolution, 3)
    if _number("pca.margin", cfg.pca.margin) < 0:
        raise ValueError(f"pca.margin={cfg.pca.margin} must be >= 0")
    check_int("num_levels", cfg.num_levels, 2)
    for key in ("width", "height", "dpi"):
        _number(f"figure.{key}", cfg.figure[key], positive=True)
    if not cfg.optimizers:
        raise ValueError("optimizers is empty: name at least one rule")
    rules = {}
    for label, ocfg in cfg.optimizers.items():
        ocfg = OmegaConf.to_container(ocfg)
        if "rule" not in ocfg:
            raise ValueError(f"optimizers.{label} needs a 'rule' (one of the baselines rules, e.g. 'adam')")
        name = ocfg.pop("rule")
        make_rule(name, **ocfg)  # raises on an unknown rule or a bad hyperparameter
        rules[label] = (name, ocfg)
    task_cfg = OmegaConf.to_container(cfg.task)
    task = make_task(**task_cfg, device=device)
    # The landscape task: whole splits, no dropout, so every loss evaluation sees the same examples.
    eval_cfg = {**task_cfg, "batch_size": None, **({"dropout": 0.0} if "dropout" in task_cfg else {})}
    eval_task = make_task(**eval_cfg, device=device)
    return task, eval_task, rules


def train(task, rule, cfg: DictConfig, device: torch.device, label: str):
    """Train from the seed's initial weights; returns the unroll result and the kept snapshots."""
    g = generator(cfg.seed, device)
    params = task.init_params(g)

    def keep(step: int, p: dict, loss: torch.Tensor) -> dict:
        return {"step": step, "params": {k: v.detach().clone() for k, v in p.items()}}

    res = unroll(task, rule, params, rule.init(params), cfg.steps, g, callback=keep,
                 callback_every=cfg.record_every, progress=f"train {label}")
    if res.diverged:
        warnings.warn(f"{label} diverged at step {res.diverged_at} ({res.reason}); the landscape is drawn "
                      f"around its last finite weights", RuntimeWarning, stacklevel=2)
        res.records.append({"step": res.steps_done, "params": res.params})
    return params, res, res.records


def fixed_batch(eval_task, split: str, n: int | None):
    batch = eval_task.sample_batch(generator(0), split)  # the whole split: nothing is drawn
    return batch if n is None else tuple(t[:n] for t in batch)


def log_levels(z: np.ndarray, n: int) -> np.ndarray:
    lo, hi = float(np.nanmin(z)), float(np.nanmax(z))
    lo = max(lo, hi * 1e-6, 1e-12)
    return np.logspace(np.log10(lo), np.log10(hi), n) if hi > lo * 1.0001 else np.array([lo * 0.99, hi * 1.01])


def contour_plot(xs, ys, z, cfg: DictConfig, path: Path, *, title: str, xlabel: str, ylabel: str,
                 trajectory: np.ndarray | None = None, record_every: int | None = None) -> Path:
    """Filled log-level contours of the loss ``z[i, j]`` at ``(xs[j], ys[i])``, the centre and a trajectory."""
    fig, ax = plt.subplots(figsize=(cfg.figure.width, cfg.figure.height), dpi=cfg.figure.dpi)
    levels = log_levels(z, cfg.num_levels)
    norm = LogNorm(vmin=levels[0], vmax=levels[-1])
    zc = np.clip(z, 0.5 * levels[0], 2 * levels[-1])  # strictly inside the extended colour range
    filled = ax.contourf(xs, ys, zc, levels=levels, norm=norm, cmap="viridis", extend="both")
    ax.contour(xs, ys, zc, levels=levels, norm=norm, colors="white", linewidths=0.4, alpha=0.5)
    cb = fig.colorbar(filled, ax=ax, pad=0.02)
    cb.set_label("training loss (cross-entropy, nats; log-spaced levels)")
    cb.ax.yaxis.set_major_locator(LogLocator())
    cb.ax.yaxis.set_major_formatter(LogFormatterSciNotation())
    if trajectory is not None:
        ax.plot(trajectory[:, 0], trajectory[:, 1], "-o", color="tab:red", ms=2.5, lw=1.3,
                label=f"trajectory (every {record_every} steps)")
        ax.plot(*trajectory[0], "o", ms=9, mfc="white", mec="black", mew=2, ls="none", label=r"$\theta_0$ (initial weights)")
    ax.plot(0, 0, "*", ms=16, mfc="gold", mec="black", ls="none", label=r"$\theta_T$ (trained weights)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right" if trajectory is None else "lower left", framealpha=0.85)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def grid_around(coords: np.ndarray, margin: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Axis grids covering the points ``coords`` (and the origin) plus ``margin`` of their extent."""
    axes = []
    for k in range(2):
        lo, hi = min(coords[:, k].min(), 0.0), max(coords[:, k].max(), 0.0)
        pad = margin * max(hi - lo, 1e-8)
        axes.append(np.linspace(lo - pad, hi + pad, n))
    return axes[0], axes[1]


@hydra.main(config_path="../configs", config_name="loss_landscape", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    device = resolve_device(cfg.device)
    task, eval_task, rules = build(cfg, device)
    logger = RunLogger(run_dir, OmegaConf.to_container(cfg.wandb), name=f"loss_landscape-{task.name}",
                       group="loss_landscape", tags=list(rules), config=OmegaConf.to_container(cfg),
                       job_type="loss_landscape")
    started = time.perf_counter()
    train_batch = fixed_batch(eval_task, "train", cfg.eval_examples)
    test_batch = fixed_batch(eval_task, "test", cfg.eval_examples)

    def train_loss(p):
        return eval_task.loss(p, train_batch)

    def test_loss(p):
        return eval_task.loss(p, test_batch)

    batched = {"chunk_size": cfg.chunk_size, "vmap": cfg.vmap}
    alphas = np.linspace(cfg.interpolation.alpha_min, cfg.interpolation.alpha_max, cfg.interpolation.points)
    span = np.linspace(-cfg.contour.span, cfg.contour.span, cfg.contour.resolution)
    curves, results, rows, losses = {}, {}, [], {}
    for label, (rule_name, hparams) in rules.items():
        theta0, res, snaps = train(task, make_rule(rule_name, **hparams), cfg, device, label)
        theta = res.params
        losses[label] = res.losses.detach().cpu().numpy()
        test_metrics = task.metrics(theta, "test", max_examples=cfg.eval_examples)
        l0, l1 = L.interpolate_1d(train_loss, theta0, theta, [0.0, 1.0], **batched).tolist()  # same path as below
        with torch.no_grad():
            final_test = float(test_loss(theta))

        # (1) linear interpolation theta_0 -> theta_T
        interp_train = L.interpolate_1d(train_loss, theta0, theta, alphas, **batched,
                                        progress=f"{label}: interpolation").cpu().numpy()
        interp_test = L.interpolate_1d(test_loss, theta0, theta, alphas, **batched).cpu().numpy()
        mid = float(L.interpolate_1d(train_loss, theta0, theta, [0.5], **batched)[0])
        inside = (alphas >= 0) & (alphas <= 1)
        barrier = float(np.max(interp_train[inside] - ((1 - alphas[inside]) * l0 + alphas[inside] * l1)))
        curves[label] = (interp_train, interp_test)

        # (2) two random filter-normalised directions around theta_T
        g_dir = generator(cfg.seed, device)
        d1 = L.random_direction(theta, g_dir, ignore_biases=cfg.contour.ignore_biases)
        d2 = L.random_direction(theta, g_dir, ignore_biases=cfg.contour.ignore_biases)
        z_rand = L.grid_2d(train_loss, theta, d1, d2, span, span, **batched,
                           progress=f"{label}: random-direction grid").cpu().numpy()
        png = contour_plot(span, span, z_rand, cfg, run_dir / f"contour_{label}.png",
                           title=f"{task.name}, {label} (lr={hparams.get('lr', '-')}), {cfg.steps} steps: training loss "
                                 f"around $\\theta_T$\nalong two random filter-normalised directions",
                           xlabel=r"$\alpha$: coefficient of direction 1 (1 = each filter's own norm)",
                           ylabel=r"$\beta$: coefficient of direction 2 (1 = each filter's own norm)")
        logger.image(f"contour/{label}", png)

        # (3) the trajectory's top two principal directions
        pca = L.pca_trajectory([s["params"] for s in snaps], theta, n_components=2, center=cfg.pca.center)
        coords = pca.coords.double().cpu().numpy()
        evr = pca.explained_variance_ratio.double().cpu().numpy()
        xs, ys = grid_around(coords, cfg.pca.margin, cfg.pca.resolution)
        z_pca = L.grid_2d(train_loss, theta, pca.directions[0], pca.directions[1], xs, ys, **batched,
                          progress=f"{label}: PCA-plane grid").cpu().numpy()
        png = contour_plot(xs, ys, z_pca, cfg, run_dir / f"pca_{label}.png", trajectory=coords,
                           record_every=cfg.record_every,
                           title=f"{task.name}, {label} (lr={hparams.get('lr', '-')}): training loss in the plane "
                                 f"of the\ntrajectory's top two PCA directions (PC1 + PC2: {100 * evr.sum():.1f}%)",
                           xlabel=f"PC1 coordinate (parameter-space distance; {100 * evr[0]:.1f}% of variance)",
                           ylabel=f"PC2 coordinate (parameter-space distance; {100 * evr[1]:.1f}% of variance)")
        logger.image(f"pca/{label}", png)

        distance = float((L.flatten(theta) - L.flatten(theta0)).norm())
        results[label] = {
            "rule": rule_name, "hparams": hparams, "diverged_at": res.diverged_at,
            "final_train_loss": l1, "initial_train_loss": l0, "final_test_loss": final_test,
            "test_accuracy": test_metrics.get("accuracy"), "loss_at_alpha_0.5": mid, "barrier": barrier,
            "explained_variance": evr.tolist(), "distance_init_to_final": distance,
            "alphas": alphas.tolist(), "interpolation_train": interp_train.tolist(),
            "interpolation_test": interp_test.tolist(), "contour_span": span.tolist(), "contour": z_rand.tolist(),
            "pca_xs": xs.tolist(), "pca_ys": ys.tolist(), "pca_grid": z_pca.tolist(), "pca_coords": coords.tolist(),
            "snapshot_steps": [s["step"] for s in snaps],
        }
        rows.append([label, rule_name, json.dumps(hparams), l1, final_test, test_metrics.get("accuracy", "-"),
                     mid, barrier, f"{100 * evr.sum():.1f}% ({100 * evr[0]:.1f} + {100 * evr[1]:.1f})", distance])

    # figure (1): every optimizer's interpolation curve in one plot
    fig, ax = plt.subplots(figsize=(cfg.figure.width + 0.5, cfg.figure.height - 0.5), dpi=cfg.figure.dpi)
    colors = plt.get_cmap("tab10").colors
    for k, (label, (tr, te)) in enumerate(curves.items()):
        ax.plot(alphas, tr, "-", color=colors[k % 10], lw=1.8, label=f"{label}: train")
        ax.plot(alphas, te, "--", color=colors[k % 10], lw=1.5, label=f"{label}: test")
    ax.axvline(0, color="grey", ls=":", lw=1)
    ax.axvline(1, color="grey", ls=":", lw=1)
    ax.text(0, 1.01, r"$\theta_0$", transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=9)
    ax.text(1, 1.01, r"$\theta_T$", transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=9)
    if cfg.interpolation.logy:
        ax.set_yscale("log")
    ax.set_xlabel(r"$\alpha$  (weights $(1-\alpha)\,\theta_0 + \alpha\,\theta_T$)")
    ax.set_ylabel("loss (cross-entropy, nats)")
    ax.set_title(f"{task.name} on {cfg.task.dataset}: linear interpolation from the initial to the trained weights",
                 fontsize=10, pad=16)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(run_dir / "interpolation.png")
    plt.close(fig)
    logger.image("interpolation", run_dir / "interpolation.png")

    for step in range(cfg.steps):  # one history row per step: W&B needs increasing steps
        logger.log({f"{label}/train_loss": float(v[step]) if step < len(v) else float("nan")
                    for label, v in losses.items()}, step=step)
    elapsed = time.perf_counter() - started
    columns = ["optimizer", "rule", "hyperparameters", "final train loss", "final test loss", "test accuracy",
               "train loss at α=0.5", "barrier (train)", "PC1+PC2 explained variance", "‖θ_T − θ₀‖"]
    n_eval = "whole splits" if cfg.eval_examples is None else f"first {cfg.eval_examples} examples of each split"
    header = (f"Task `{task.name}` ({OmegaConf.to_container(cfg.task)}), {cfg.steps} steps, seed {cfg.seed}, "
              f"device {device}; landscape losses on the {n_eval}; total {elapsed:.1f} s.\n"
              f"Barrier: max over α in [0, 1] of L(α) − ((1 − α) L(0) + α L(1)) on the interpolation grid "
              f"(0: the loss never rises above the straight line between the endpoints).\n\n")
    table = markdown_table(columns, rows)
    atomic_write_text(header + table, run_dir / "table.md")
    atomic_write_text(json.dumps({"config": OmegaConf.to_container(cfg), "results": results,
                                  "seconds": elapsed}), run_dir / "results.json")
    logger.table("landscape", columns, rows)
    logger.summary({f"{k}/{m}": v[m] for k, v in results.items()
                    for m in ("final_train_loss", "final_test_loss", "loss_at_alpha_0.5", "barrier")})
    logger.finish()
    print(header + table)
    print(f"wrote {run_dir}/table.md, results.json, interpolation.png, "
          + ", ".join(f"contour_{k}.png, pca_{k}.png" for k in results))


if __name__ == "__main__":
    main()
