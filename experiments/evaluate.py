"""Compare optimizers fairly: tuned and default hand-crafted rules against learned ones, over seeds and tasks.

    python experiments/evaluate.py                                    # configs/evaluate.yaml
    python experiments/evaluate.py +optimizers.lstm.checkpoint=pretrained/lstm_digits.pt
    python experiments/evaluate.py hydra.run.dir=runs/evaluate/<time> resume=true   # continue

Writes ``summary.md``, ``summary.json``, ``results.csv``, ``curves_<task>.png``,
``scores.png``, ``ranks.png`` and W&B runs (offline by default) to the run directory.
A config, checkpoint or run-directory problem is reported in one line (exit status 2).
"""
from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from learned_opt.entry import hydra_entry
from learned_opt.evaluation.evaluate import evaluate


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
@hydra_entry("evaluate.py")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    resume = bool(config.pop("resume", False))
    summary = evaluate(config, run_dir, resume=resume)
    print((run_dir / "summary.md").read_text())
    print(f"wrote {run_dir}/summary.md, results.csv, *.png ({summary['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
