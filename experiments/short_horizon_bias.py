"""Short-horizon bias: meta-learn SGD's learning rate over a long horizon in short truncations with
truncated BPTT, truncated ES and PES, and compare with the best lr of the full horizon.

    python experiments/short_horizon_bias.py                       # noisy quadratic, T = 1000, K = 20
    python experiments/short_horizon_bias.py meta.truncation=50 estimators=[bptt,pes]

Writes to the run directory: ``table.md``, ``lr.png`` (meta-learned lr per meta-step with the grid
optimum; the full-horizon objective over the grid), ``results.json``, one meta-training run per
estimator (``<estimator>/``: checkpoint, metrics.jsonl) and an offline W&B run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from learned_opt.entry import hydra_entry
from learned_opt.evaluation.plots import plot_meta_learned_lr
from learned_opt.evaluation.report import markdown_table
from learned_opt.lecture.sweep import lr_sweep
from learned_opt.meta import meta_train
from learned_opt.meta.short_horizon import check_config, final_lr, meta_config
from learned_opt.runlog import RunLogger, read_metrics
from learned_opt.tasks import make_task
from learned_opt.utils import atomic_write_text, resolve_device


@hydra.main(config_path="../configs", config_name="short_horizon_bias", version_base="1.3")
@hydra_entry("short_horizon_bias.py")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    c = OmegaConf.to_container(cfg, resolve=True)
    check_config(c)
    grid = c["grid"]
    device = resolve_device(c["device"])
    task_cfg = dict(c["task"])
    task = make_task(task_cfg.pop("name"), device=device, **task_cfg)
    logger = RunLogger(run_dir, c["wandb"], name="short_horizon_bias", group="short_horizon_bias",
                       tags=list(c["estimators"]), config=c, job_type="short_horizon_bias")

    histories, seconds = {}, {}
    for name in c["estimators"]:
        t0 = time.perf_counter()
        meta_train(meta_config(c, name), run_dir / name, resume=(run_dir / name / "checkpoint.pt").exists())
        seconds[name] = time.perf_counter() - t0
        rows = [r for r in read_metrics(run_dir / name) if "hparam_lr" in r]
        histories[name] = ([r["step"] for r in rows], [r["hparam_lr"] for r in rows])

    lrs = np.geomspace(grid["low"], grid["high"], grid["lrs"])
    measured = lr_sweep(task, "sgd", lrs, c["horizon"], list(range(1000, 1000 + grid["seeds"])), device, progress=True)
    exact = None
    if hasattr(task, "expected_losses"):
        fine = np.geomspace(grid["low"], grid["high"], 400)
        exact = (fine, task.expected_losses(torch.tensor(fine), c["horizon"]).mean(-1).numpy())
    best = float(lrs[np.nanargmin(np.nanmedian(measured, 1))])
    best_exact = float(exact[0][np.argmin(exact[1])]) if exact is not None else float("nan")

    rows, results = [], {}
    for name, (steps, values) in histories.items():
        final = final_lr(values)                                      # over the last 10% of meta-steps
        objective = float(task.expected_losses(final, c["horizon"]).mean()) if exact is not None else float("nan")
        results[name] = {"final_lr": final, "full_horizon_loss": objective, "seconds": seconds[name]}
        rows.append([name, final, final / best, objective, f"{seconds[name]:.0f}"])
    rows.append(["grid (measured)", best, 1.0, float(task.expected_losses(best, c["horizon"]).mean())
                 if exact is not None else float("nan"), ""])
    if exact is not None:
        rows.append(["optimum of the exact expectation", best_exact, best_exact / best, float(exact[1].min()), ""])
    header = (f"SGD's lr meta-learned on `{task.name}` ({c['task']}), horizon T = {c['horizon']}, truncation "
              f"K = {c['meta']['truncation']}, {c['meta']['steps']} meta-steps from lr {c['initial_lr']}; grid: "
              f"{grid['lrs']} lrs x {grid['seeds']} seeds. Final lr = geometric mean over the last 10% of meta-steps.\n\n")
    table = markdown_table(["estimator", "final lr", "/ grid-optimal lr", "full-horizon expected loss at that lr",
                            "meta-training s"], rows)
    atomic_write_text(header + table, run_dir / "table.md")
    atomic_write_text(json.dumps({"config": c, "results": results, "grid_lrs": lrs.tolist(),
                                  "grid_losses": measured.tolist(), "grid_best_lr": best,
                                  "exact_best_lr": best_exact}, indent=2), run_dir / "results.json")
    fig = plot_meta_learned_lr(histories, lrs, measured, run_dir / "lr.png", exact=exact,
                               title=f"Short-horizon bias: T = {c['horizon']}, truncations of K = {c['meta']['truncation']}")
    logger.table("summary", ["estimator", "final_lr", "ratio_to_grid", "full_horizon_loss", "seconds"], rows)
    logger.image("lr", fig)
    logger.summary({f"{k}/final_lr": v["final_lr"] for k, v in results.items()} | {"grid_best_lr": best})
    logger.finish()
    print(header + table)
    print(f"wrote {run_dir}/table.md, lr.png, results.json")


if __name__ == "__main__":
    main()
