"""Meta-train a learned optimizer by truncated back-propagation through the unroll.

    python experiments/meta_train.py                                  # MLP optimizer, digits MLP family
    python experiments/meta_train.py optimizer=lstm family=l2l_mnist meta.steps=1000
    python experiments/meta_train.py --resume runs/meta_train/mlp_digits_mlp/<time>   # continue a run
    python experiments/meta_train.py --resume runs/meta_train/mlp_digits_mlp/<time> meta.steps=600   # longer

Writes to the run directory: ``checkpoint.pt`` (load it with ``learned_opt.load``),
``metrics.jsonl``, ``meta_loss.png``, ``summary.json`` and an offline W&B run.

``--resume RUN_DIR`` replays the run's recorded overrides plus the ones given after it. The
record (``RUN_DIR/.hydra/overrides.yaml``) is updated only once the resume was accepted (the
config checked and found compatible with the checkpoint), so a rejected override is never
recorded. SIGTERM or Ctrl-C stop the run after the meta-step in flight, with a checkpoint;
the exit status is then 128 + the signal number.
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
from learned_opt.entry import hydra_entry
from learned_opt.meta import meta_train
from learned_opt.meta.trainer import MetaTrainingInterrupted
from learned_opt.utils import atomic_write_text

RESUME: dict = {}  # set by _expand_resume: the run directory and its overrides once the resume is accepted


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _expand_resume(argv: list[str]) -> list[str]:
    """``--resume RUN_DIR [overrides]`` -> the run's saved overrides + ``hydra.run.dir=RUN_DIR resume=true``
    (Hydra writes nothing into the run's ``.hydra/``: ``main`` records the overrides once accepted)."""
    if "--resume" not in argv:
        return argv
    i = argv.index("--resume")
    if i + 1 >= len(argv):
        sys.exit("--resume needs the run directory, e.g. --resume runs/meta_train/mlp_digits_mlp/2026-01-01_12-00-00")
    run_dir = Path(argv[i + 1])
    if run_dir.is_file():
        if run_dir.name != "checkpoint.pt":
            sys.exit(f"--resume {run_dir}: give the run directory ({run_dir.parent}); it continues from its "
                     f"checkpoint.pt. {run_dir.name} cannot be resumed (best.pt holds meta-parameters only: "
                     f"load it with learned_opt.load)")
        run_dir = run_dir.parent
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.exists():
        sys.exit(f"--resume {run_dir}: no {saved} (is this a meta_train run directory?)")
    try:
        recorded = yaml.safe_load(saved.read_text()) or []
    except yaml.YAMLError as e:
        sys.exit(f"--resume {run_dir}: {saved} is damaged ({e})")
    rest = argv[1:i] + argv[i + 2:]
    given = [o for o in rest if not o.startswith(("hydra.", "resume="))]
    new_keys = {_key(o) for o in given}
    kept = [o for o in recorded if not o.startswith(("resume=", "hydra.")) and _key(o) not in new_keys]
    RESUME.update(run_dir=run_dir, overrides=[*kept, *given])
    return [argv[0], *kept, *rest, f"hydra.run.dir={run_dir}", "hydra.output_subdir=null", "resume=true"]


@hydra.main(config_path="../configs", config_name="meta_train", version_base="1.3")
@hydra_entry("meta_train.py")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    resume = bool(config.pop("resume"))

    def record_accepted_resume() -> None:
        if RESUME:
            atomic_write_text(yaml.safe_dump(RESUME["overrides"]), run_dir / ".hydra" / "overrides.yaml")
            atomic_write_text(OmegaConf.to_yaml(cfg), run_dir / ".hydra" / "config.yaml")

    try:
        summary = meta_train(config, run_dir, resume=resume, on_start=record_accepted_resume)
    except MetaTrainingInterrupted as e:
        print(f"meta_train.py: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    if summary.get("rank", 0) != 0:
        return  # only rank 0 of a torchrun job writes to the run directory
    png, metrics = run_dir / "meta_loss.png", run_dir / "metrics.jsonl"
    if metrics.exists() and (not png.exists() or png.stat().st_mtime < metrics.stat().st_mtime):
        plot_meta_loss(run_dir)  # not redrawn for a finished run that was resumed
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    sys.argv = _expand_resume(sys.argv)
    main()
