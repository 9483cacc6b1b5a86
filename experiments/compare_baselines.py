"""Every hand-crafted rule on one task over several seeds: a table and a figure of loss curves.

    python experiments/compare_baselines.py                 # digits MLP, 7 rules x 5 seeds
    python experiments/compare_baselines.py steps=1000 task.dataset=mnist5k device=cuda

Writes to the run directory: ``table.md``, ``curves.png``, ``results.json``,
``metrics.jsonl`` and an offline W&B run (``wandb.mode=disabled`` to skip it).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from baselines import make_rule
from learned_opt.evaluation.plots import plot_curves
from learned_opt.evaluation.report import markdown_table, mean_std
from learned_opt.runlog import RunLogger, check_wandb_config
from learned_opt.tasks import make_task
from learned_opt.unroll import unroll
from learned_opt.utils import atomic_write_text, generator, resolve_device


def build(cfg: DictConfig, device):
    """Validate the whole config (tasks and rules) before any work starts."""
    if cfg.seeds < 1 or cfg.steps < 1:
        raise ValueError(f"seeds={cfg.seeds} and steps={cfg.steps} must both be >= 1")
    if not cfg.optimizers:
        raise ValueError("optimizers is empty: name at least one rule")
    check_wandb_config(OmegaConf.to_container(cfg.wandb))
    base_task = OmegaConf.to_container(cfg.task)
    runs = {}
    for label, ocfg in cfg.optimizers.items():
        ocfg = OmegaConf.to_container(ocfg)
        task_cfg = {**base_task, **ocfg.pop("task", {})}
        rule_name = ocfg.pop("rule")
        make_rule(rule_name, **ocfg)  # raises on an unknown rule or a bad hyperparameter
        runs[label] = (make_task(**task_cfg, device=device), rule_name, ocfg)
    return runs


@hydra.main(config_path="../configs", config_name="compare_baselines", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    device = resolve_device(cfg.device)
    runs = build(cfg, device)
    logger = RunLogger(run_dir, OmegaConf.to_container(cfg.wandb), name=f"compare_baselines-{cfg.task.name}",
                       group="compare_baselines", tags=list(runs), config=OmegaConf.to_container(cfg),
                       job_type="compare_baselines")
    seeds = list(range(cfg.seed, cfg.seed + cfg.seeds))
    curves, rows, results = {}, [], {}
    started = time.perf_counter()
    bar = tqdm(total=len(runs) * len(seeds), desc="rules x seeds")
    for label, (task, rule_name, hparams) in runs.items():
        losses = np.full((len(seeds), cfg.steps), np.nan)
        finals, accs, walls = [], [], []
        for i, seed in enumerate(seeds):
            g = generator(seed, device)
            params = task.init_params(g)
            rule = make_rule(rule_name, **hparams)
            t0 = time.perf_counter()
            res = unroll(task, rule, params, rule.init(params), cfg.steps, g)
            walls.append(time.perf_counter() - t0)
            losses[i, :res.steps_done] = res.losses.cpu().numpy()
            test = task.metrics(res.params, "test", max_examples=cfg.eval_examples)
            train = task.metrics(res.params, "train", max_examples=cfg.eval_examples)
            finals.append(float("nan") if res.diverged else train["loss"])
            accs.append(float("nan") if res.diverged else test.get("accuracy", float("nan")))
            bar.update()
            bar.set_postfix(rule=label, loss=f"{finals[-1]:.3g}")
        curves[label] = losses
        results[label] = {"rule": rule_name, "hparams": hparams, "final_train_loss": finals,
                          "test_accuracy": accs, "seconds_per_run": float(np.mean(walls))}
        rows.append([label, rule_name, json.dumps(hparams), mean_std(finals), mean_std(accs), f"{np.mean(walls):.2f}"])
    bar.close()
    elapsed = time.perf_counter() - started
    for step in range(cfg.steps):  # one history row per step: W&B needs increasing steps
        logger.log({f"{label}/train_loss_median": float(np.nanmedian(c[:, step])) if np.isfinite(c[:, step]).any()
                    else float("nan") for label, c in curves.items()}, step=step)

    table = markdown_table(["optimizer", "rule", "hyperparameters", "final train loss (mean ± std)",
                            "test accuracy (mean ± std)", "s / run"], rows)
    header = (f"Task `{cfg.task.name}` on `{cfg.task.dataset}` ({OmegaConf.to_container(cfg.task)}), "
              f"{cfg.steps} steps, seeds {seeds[0]}..{seeds[-1]}, device {device}; total {elapsed:.1f} s.\n\n")
    atomic_write_text(header + table, run_dir / "table.md")
    atomic_write_text(json.dumps({"config": OmegaConf.to_container(cfg), "results": results,
                                  "seconds": elapsed}, indent=2), run_dir / "results.json")
    fig = plot_curves(curves, run_dir / "curves.png",
                      title=f"{cfg.task.name} on {cfg.task.dataset}: training loss, median and IQR over "
                            f"{len(seeds)} seeds", xlabel="step (updates)", ylabel="training loss (cross-entropy)")
    logger.table("summary", ["optimizer", "rule", "hyperparameters", "final_train_loss", "test_accuracy", "s_per_run"],
                 rows)
    logger.image("curves", fig)
    logger.summary({f"{k}/final_train_loss": float(np.nanmean(v["final_train_loss"])) for k, v in results.items()})
    logger.finish()
    print(header + table)
    print(f"wrote {run_dir}/table.md, curves.png, results.json")


if __name__ == "__main__":
    main()
