"""Smith (2015), cyclical learning rates, in small: the LR range test, then Nesterov + triangular CLR vs Adam.

    python experiments/clr.py                                    # MLP on mnist5k, configs/clr.yaml
    python experiments/clr.py task.dataset=digits clr.cycles=4
    python experiments/clr.py task.name=conv '~task.hidden_sizes' '~task.activation' '+task.channels=[16,32]'

(a) The LR range test: from one initialisation, one training step per lr while the lr grows
geometrically, each step one ``unroll`` step; its suggested bounds become the CLR bounds.
(b) Three variants with the same step budget (``clr.cycles`` whole cycles), several seeds:
Nesterov + triangular CLR (``step_size`` = ``clr.epochs_per_half_cycle`` epochs' worth of steps),
Adam (lr tuned by a small log grid on tuning seeds, or its default 1e-3: ``adam.tune``), and
Nesterov at the best fixed lr of a log grid (same tuning protocol). The procedure is
:func:`learned_opt.lecture.cyclical.run_clr` (the range test:
:func:`learned_opt.lecture.range_test.range_test`).

Writes to the run directory: ``range_test.png`` (loss vs lr, log x, raw and smoothed, suggested
bounds marked), ``clr.png`` (training loss and test accuracy vs steps with seed bands; the lr
schedules in a small panel), ``table.md`` (final train loss, test accuracy, steps to reach the
target accuracy and loss; mean ± std over seeds; and the answer to "does Nesterov + CLR reach a lower
loss / higher accuracy faster than Adam here?", computed from the numbers), ``results.json``,
``tuning/``, ``metrics.jsonl`` and an offline W&B run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from learned_opt.entry import hydra_entry
from learned_opt.lecture.cyclical import VARIANTS, plot_comparison, run_clr
from learned_opt.lecture.range_test import plot_range_test
from learned_opt.runlog import RunLogger
from learned_opt.utils import atomic_write_text


@hydra.main(config_path="../configs", config_name="clr", version_base="1.3")
@hydra_entry("clr.py")
def main(hcfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    cfg = OmegaConf.to_container(hcfg, resolve=True)
    started = time.perf_counter()
    result = run_clr(cfg, tuning_dir=run_dir / "tuning")  # checks the whole config first
    rt, res, name = cfg["range_test"], result.range_test, result.task_name

    md = result.markdown()
    atomic_write_text(md, run_dir / "table.md")
    plot_range_test(res, run_dir / "range_test.png", max_lr=result.bounds[1], dpi=cfg["figure"]["dpi"],
                    title=f"LR range test: {rt['rule']} (momentum {rt['momentum']}) on {name}, {len(res.lrs)} steps")
    band = "IQR" if cfg["figure"]["band"] == "iqr" else "min-max"
    plot_comparison(result, run_dir / "clr.png",
                    title=f"Nesterov + CLR vs Adam vs Nesterov (fixed lr) on {name}: median and {band} band over "
                          f"{len(cfg['seeds'])} seeds (dotted: CLR cycle ends)")
    atomic_write_text(json.dumps(result.to_json(), indent=1), run_dir / "results.json")

    logger = RunLogger(run_dir, cfg["wandb"], name=f"clr-{name}", group="clr", job_type="clr", tags=list(VARIANTS),
                       config=cfg)
    for i, (lr, loss, sm) in enumerate(zip(res.lrs, res.losses, res.smoothed)):
        logger.log({"range_test/lr": lr, "range_test/loss": loss, "range_test/smoothed": sm}, step=i)
    curves, x = result.median_history()  # W&B steps must increase: the comparison follows the range test
    logger.log_medians(curves, x=x, offset=len(res.lrs), step_key="comparison_step")
    logger.table("summary", ["variant", "final_train_loss", "test_accuracy", "steps_to_accuracy", "steps_to_loss",
                             "diverged"], result.rows())
    logger.image("range_test", run_dir / "range_test.png")
    logger.image("clr", run_dir / "clr.png")
    logger.summary({"answer": result.overall(), "clr_base_lr": result.bounds[0], "clr_max_lr": result.bounds[1],
                    "adam_lr": result.adam_lr, "fixed_lr": result.fixed_lr})
    logger.finish()
    print(md)
    print(f"wrote {run_dir}/table.md, range_test.png, clr.png, results.json ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
