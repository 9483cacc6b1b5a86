"""Reduce-on-plateau and SGDR with a snapshot ensemble (Huang et al. 2017), against a fixed lr.

    python experiments/restarts.py                                 # MLP on mnist5k, configs/restarts.yaml
    python experiments/restarts.py task.dataset=digits epochs=100 sgdr.cycle_epochs=20 device=cuda
    python experiments/restarts.py task.name=conv '~task.hidden_sizes' '~task.activation' '~task.dropout' \
        '+task.channels=[16,32]'

Three variants of SGD-momentum, the same number of epochs each, several seeds, trained one epoch at a
time on the training split minus a validation split (the test split is only used for the final scores):
(a) a fixed lr; (b) ``ReduceOnPlateau`` as the rule's lr, fed the validation loss after every epoch;
(c) SGDR (``CosineWarmRestarts``, ``T_0`` = ``sgdr.cycle_epochs`` epochs) with one snapshot at the end of
each cycle. The snapshot ensemble (the mean of the snapshots' softmax outputs) is compared with each
snapshot, the best single snapshot, (a) and (b). The procedure is
:func:`learned_opt.lecture.restarts.run_restarts`.

Writes to the run directory: ``validation.png`` (validation loss vs epochs of the three, plateau
reductions and snapshots marked; the lr in a panel below), ``test_accuracy.png`` (bars: each
snapshot, the best single, the ensemble, (a), (b); mean ± std over seeds, seeds as dots),
``table.md``, ``results.json``, ``metrics.jsonl`` and an offline W&B run.
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
from learned_opt.lecture.restarts import VARIANTS, run_restarts
from learned_opt.lecture.restarts_plots import plot_accuracy_bars, plot_validation
from learned_opt.runlog import RunLogger
from learned_opt.utils import atomic_write_text


@hydra.main(config_path="../configs", config_name="restarts", version_base="1.3")
@hydra_entry("restarts.py")
def main(hcfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    cfg = OmegaConf.to_container(hcfg, resolve=True)
    started = time.perf_counter()
    result = run_restarts(cfg)  # checks the whole config first
    name, seeds = result.task_name, cfg["seeds"]

    md = result.markdown()
    atomic_write_text(md, run_dir / "table.md")
    band = "IQR" if cfg["figure"]["band"] == "iqr" else "min-max"
    plot_validation(result, run_dir / "validation.png",
                    title=f"{name}: fixed lr vs reduce-on-plateau vs SGDR (median, {band} band over "
                          f"{len(seeds)} seeds)")
    plot_accuracy_bars(result.bars(), run_dir / "test_accuracy.png",
                       title=f"{name}: test accuracy of each snapshot, the best single and the ensemble "
                             f"({len(seeds)} seeds)", dpi=cfg["figure"]["dpi"])
    atomic_write_text(json.dumps(result.to_json(), indent=1), run_dir / "results.json")

    logger = RunLogger(run_dir, cfg["wandb"], name=f"restarts-{name}", group="restarts", job_type="restarts",
                       tags=list(VARIANTS), config=cfg)
    logger.log_medians({f"{k}/{key}_median": [getattr(r, field) for r in result.runs[k]]
                        for k in VARIANTS for key, field in (("val_loss", "val_loss"), ("lr", "lr_epoch"))})
    logger.table("test", ["model", "test_accuracy", "test_loss"], result.test_rows())
    logger.image("validation", run_dir / "validation.png")
    logger.image("test_accuracy", run_dir / "test_accuracy.png")
    logger.summary({f"{k}/test_accuracy_mean": float(np.nanmean(v)) for k, v in result.accuracy.items()})
    logger.finish()
    print(md)
    print(f"wrote {run_dir}/table.md, validation.png, test_accuracy.png, results.json "
          f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
