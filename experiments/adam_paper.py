"""Kingma & Ba (2015), Figs. 1-2 in small: training cost vs iterations of five optimizers, each with a tuned lr.

    python experiments/adam_paper.py                                   # mnist5k, configs/adam_paper.yaml
    python experiments/adam_paper.py dataset=mnist root=/work/shared/data steps=3000 device=cuda

The tuning and the runs are the shared evaluation (``learned_opt.evaluation.evaluate``) on a suite of
two tasks (logistic regression; an MLP with two hidden layers of 1000 ReLU units and dropout) and the
paper's optimizers (AdaGrad, RMSProp, SGD-Nesterov, AdaDelta, Adam); each optimizer's lr is picked by a
small log grid on held-out tuning seeds. The figure and tables come from the tuned cells
(``learned_opt.lecture.tuned``): one panel per task, training cost (minibatch loss, batch 128) vs
iterations, log y, one line per optimizer with a seed band.

Writes to the run directory: ``adam_paper.png`` (the figure), ``table.md`` (per task, one row per
tuned optimizer: tuned lr, mean training cost over the run, final training cost, test accuracy; mean ±
std over seeds), ``results.json``, ``metrics.jsonl``, an offline W&B run (``wandb/``), and everything
the evaluation writes (``summary.md`` with the @default rows too, ``results.csv``, ``curves_*.png``,
``cells/``, ``tuning/``, ``wandb_runs/``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from learned_opt.entry import hydra_entry
from learned_opt.evaluation import evaluate as E
from learned_opt.evaluation.sealed import read_sealed
from learned_opt.lecture import tuned as T
from learned_opt.runlog import RunLogger
from learned_opt.schema import Field, check, delegated, integer, list_of, number, optional, string
from learned_opt.utils import atomic_write_text, resolve_device

SCHEMA = {  # what this script reads besides the evaluation's fields (E.SCHEMA, checked by E.check_config)
    **{k: Field(delegated) for k in E.SCHEMA},
    "labels": Field(delegated), "figure": T.FIGURE,
    # the task settings the suite interpolates (checked there, by each task's constructor)
    "dataset": Field(string), "root": Field(optional(string)), "batch_size": Field(integer(1)),
    "hidden_sizes": Field(list_of(integer(1))), "dropout": Field(number(0, 1, high_open=True)),
}


@hydra.main(config_path="../configs", config_name="adam_paper", version_base="1.3")
@hydra_entry("adam_paper.py")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    check(config, SCHEMA)
    T.check_labels(config["optimizers"], config["labels"])
    eval_cfg = {k: config[k] for k in E.SCHEMA if k in config and k != "resume"}
    E.check_config(eval_cfg, resolve_device(config["device"]))  # every task and optimizer, before any work
    started = time.perf_counter()
    E.evaluate(eval_cfg, run_dir, resume=config["resume"])  # tunes, runs every (optimizer, task, seed) cell
    seconds = time.perf_counter() - started

    steps, seeds, labels, tc = config["steps"], list(config["seeds"]), config["labels"], config["tuning"]
    tuning = {(o, t): read_sealed(run_dir / "tuning" / f"{o}__{t}.json")
              for o in config["optimizers"] for t in config["suite"]}
    results = T.compare_tuned(run_dir, config, tuning, labels)
    band = "min-max over" if config["figure"]["band"] == "minmax" else "median and IQR over"
    T.plot_tuned(results, config["suite"], labels, config["figure"], run_dir / "adam_paper.png",
                 xlabel=f"iterations (updates, batch {config['batch_size']})",
                 title=f"Training cost vs iterations on {config['dataset']} (tuned lr; median line, band = {band} "
                       f"{len(seeds)} seeds)")
    table = (f"Kingma & Ba (2015) Figs. 1-2 in small: dataset `{config['dataset']}`, batch {config['batch_size']}, "
             f"{steps} iterations, evaluation seeds {seeds}. Each optimizer's lr was tuned by a log grid of "
             f"{tc['budget']} values on tuning seeds {tc['seeds']} (objective `{tc['objective']}`, on the training "
             f"split minus a {tc['val_fraction']:.0%} validation share). Cells: mean ± std over seeds. Mean "
             f"training cost = mean minibatch loss over all {steps} iterations (the area under the figure's "
             f"curve); final training cost = loss on the whole training split after the last iteration. Wall time "
             f"of this invocation (tuning + runs): {seconds:.0f} s.\n\n"
             + T.tuned_markdown(results, config["suite"], labels))
    atomic_write_text(table, run_dir / "table.md")
    saved = {t: {**r, "per_optimizer": {o: {k: v for k, v in p.items() if k != "curves"}
                                        for o, p in r["per_optimizer"].items()}} for t, r in results.items()}
    atomic_write_text(json.dumps({"config": config, "results": {"seconds": seconds, "tasks": saved}}, indent=1,
                                 default=str), run_dir / "results.json")

    rows = [[t, o, r["lr"], float(np.nanmean(r["mean_train_cost"])), float(np.nanmean(r["final_train_cost"])),
             float(np.nanmean(r["test_accuracy"])), r["diverged"]]
            for t, res in saved.items() for o, r in res["per_optimizer"].items()]
    with RunLogger(run_dir, config["wandb"], name="adam_paper", group="adam_paper", job_type="adam_paper",
                   tags=list(config["optimizers"]), config=config) as logger:
        logger.log_medians({f"{t}/{o}/train_loss_median": [c[~np.isnan(c)] for c in r["curves"]]
                            for t, res in results.items() for o, r in res["per_optimizer"].items()})
        logger.table("summary", ["task", "optimizer", "tuned_lr", "mean_train_cost", "final_train_cost",
                                 "test_accuracy", "diverged"], rows)
        logger.image("adam_paper", run_dir / "adam_paper.png")
        logger.summary({f"{t}/{o}/mean_train_cost": m for t, o, _, m, *_ in rows})
    print(table)
    print(f"wrote {run_dir}/adam_paper.png, table.md, results.json, summary.md ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
