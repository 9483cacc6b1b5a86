"""Meta-train a learned optimizer by truncated back-propagation through the unroll.

    python experiments/meta_train.py                                  # MLP optimizer, digits MLP family
    python experiments/meta_train.py optimizer=lstm family=l2l_mnist meta.steps=1000
    python experiments/meta_train.py --resume runs/meta_train/mlp_digits_mlp/<time>   # continue a run

Writes to the run directory: ``checkpoint.pt`` (load it with ``learned_opt.load``),
``metrics.jsonl``, ``meta_loss.png``, ``summary.json`` and an offline W&B run.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from learned_opt.evaluation.plots import plot_meta_loss
from learned_opt.meta import meta_train


def _expand_resume(argv: list[str]) -> list[str]:
    """``--resume RUN_DIR [overrides]`` -> the run's saved overrides + ``hydra.run.dir=RUN_DIR resume=true``."""
    if "--resume" not in argv:
        return argv
    i = argv.index("--resume")
    if i + 1 >= len(argv):
        sys.exit("--resume needs the run directory, e.g. --resume runs/meta_train/mlp_digits_mlp/2026-01-01_12-00-00")
    run_dir = Path(argv[i + 1])
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.exists():
        sys.exit(f"--resume {run_dir}: no {saved} (is this a meta_train run directory?)")
    overrides = [o for o in yaml.safe_load(saved.read_text()) or [] if not o.startswith(("resume=", "hydra.run.dir="))]
    rest = argv[1:i] + argv[i + 2:]
    return [argv[0], *overrides, *rest, f"hydra.run.dir={run_dir}", "resume=true"]


@hydra.main(config_path="../configs", config_name="meta_train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    resume = bool(config.pop("resume"))
    summary = meta_train(config, run_dir, resume=resume)
    if summary.get("rank", 0) != 0:
        return  # only rank 0 of a torchrun job writes to the run directory
    plot_meta_loss(run_dir)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    sys.argv = _expand_resume(sys.argv)
    main()
