"""Every hand-crafted rule on one task over several seeds: a table and a figure of loss curves.

    python experiments/compare_baselines.py                 # digits MLP, 7 rules x 5 seeds
    python experiments/compare_baselines.py steps=1000 task=mnist5k_mlp device=cuda

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

from learned_opt.entry import hydra_entry
from learned_opt.evaluation.plots import plot_curves
from learned_opt.evaluation.report import markdown_table, mean_std
from learned_opt.evaluation.results import loss_curves
from learned_opt.evaluation.suite import build_task, parse_optimizers, run_cell
from learned_opt.runlog import RunLogger
from learned_opt.schema import WANDB, Field, check, delegated, device, integer, optional
from learned_opt.utils import atomic_write_text, resolve_device

SCHEMA = {  # configs/compare_baselines.yaml; the task and each rule are checked by their constructors
    "seed": Field(integer()), "seeds": Field(integer(1)), "steps": Field(integer(1)), "device": Field(device),
    "eval_examples": Field(optional(integer(1))), "task": Field(delegated), "optimizers": Field(delegated),
    "wandb": WANDB,
}


@hydra.main(config_path="../configs", config_name="compare_baselines", version_base="1.3")
@hydra_entry("compare_baselines.py")
def main(hcfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    cfg = OmegaConf.to_container(hcfg, resolve=True)
    check(cfg, SCHEMA)  # the whole config, then every task and rule, before any work
    dev = resolve_device(cfg["device"])
    entries = {label: dict(entry) for label, entry in cfg["optimizers"].items()}
    tasks = {label: build_task("task", cfg["task"], dev, **e.pop("task", {})) for label, e in entries.items()}
    specs = parse_optimizers(entries)
    seeds = list(range(cfg["seed"], cfg["seed"] + cfg["seeds"]))
    logger = RunLogger(run_dir, cfg["wandb"], name=f"compare_baselines-{cfg['task']['name']}",
                       group="compare_baselines", tags=list(entries), config=cfg, job_type="compare_baselines")

    curves, rows, results = {}, [], {}
    started = time.perf_counter()
    bar = tqdm(total=len(specs) * len(seeds), desc="rules x seeds")
    for spec in specs:
        cells = []
        for seed in seeds:
            cells.append(run_cell(tasks[spec.label], spec.build(dev), seed, cfg["steps"], dev,
                                  eval_examples=cfg["eval_examples"]))
            bar.update()
            bar.set_postfix(rule=spec.label, loss=f"{cells[-1].final('train_loss'):.3g}")
        finals = [c.final("train_loss") for c in cells]
        accs = [c.final("test_accuracy") for c in cells]
        wall = float(np.mean([c.seconds for c in cells]))
        curves[spec.label] = loss_curves(cells, cfg["steps"])
        results[spec.label] = {"rule": spec.rule, "hparams": spec.hparams, "final_train_loss": finals,
                               "test_accuracy": accs, "seconds_per_run": wall}
        rows.append([spec.label, spec.rule, json.dumps(spec.hparams), mean_std(finals), mean_std(accs), f"{wall:.2f}"])
    bar.close()
    elapsed = time.perf_counter() - started

    table = markdown_table(["optimizer", "rule", "hyperparameters", "final train loss (mean ± std)",
                            "test accuracy (mean ± std)", "s / run"], rows)
    task = cfg["task"]
    header = (f"Task `{task['name']}` on `{task.get('dataset')}` ({task}), {cfg['steps']} steps, seeds "
              f"{seeds[0]}..{seeds[-1]}, device {dev}; total {elapsed:.1f} s.\n\n")
    atomic_write_text(header + table, run_dir / "table.md")
    atomic_write_text(json.dumps({"config": cfg, "results": results, "seconds": elapsed}, indent=2),
                      run_dir / "results.json")
    fig = plot_curves(curves, run_dir / "curves.png",
                      title=f"{task['name']} on {task.get('dataset')}: training loss, median and IQR over "
                            f"{len(seeds)} seeds", xlabel="step (updates)", ylabel="training loss (cross-entropy)")
    logger.log_medians({f"{label}/train_loss_median": [row[~np.isnan(row)] for row in c] for label, c in curves.items()})
    logger.table("summary", ["optimizer", "rule", "hyperparameters", "final_train_loss", "test_accuracy", "s_per_run"],
                 rows)
    logger.image("curves", fig)
    logger.summary({f"{k}/final_train_loss": float(np.nanmean(v["final_train_loss"])) for k, v in results.items()})
    logger.finish()
    print(header + table)
    print(f"wrote {run_dir}/table.md, curves.png, results.json")


if __name__ == "__main__":
    main()
