"""Quickstart: meta-train a learned optimizer on digits MLPs, then compare it with tuned hand-crafted rules.

    python experiments/quickstart.py                       # about 2 minutes on a 2-core CPU
    python experiments/quickstart.py optimizer=lstm meta_steps=300

Stage 1 runs ``configs/meta_train.yaml`` (with the overrides in ``configs/quickstart.yaml``) into
``<run>/meta_train``; stage 2 runs ``configs/evaluate.yaml`` with the new checkpoint added to the
optimizers (and the shipped ones named in ``pretrained``, such as the general-purpose ``celo``) into
``<run>/evaluate``: ``summary.md``, ``results.csv``, the figures and W&B runs.
"""
from __future__ import annotations

import time
from pathlib import Path

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from learned_opt.entry import hydra_entry
from learned_opt.evaluation.evaluate import check_config as check_evaluation, evaluate
from learned_opt.evaluation.plots import plot_meta_loss
from learned_opt.meta import meta_train
from learned_opt.meta.config import check_meta_train_config
from learned_opt.schema import WANDB, Field, boolean, check, delegated, integer, list_of, string
from learned_opt.utils import resolve_device

SCHEMA = {  # configs/quickstart.yaml; each stage's config is checked as its own entry point checks it
    "optimizer": Field(string), "family": Field(string), "meta_steps": Field(integer(1)),
    "eval_steps": Field(integer(1)), "learned_label": Field(string), "pretrained": Field(delegated),
    "meta_train_overrides": Field(list_of(string)), "evaluate_overrides": Field(list_of(string)),
    "progress": Field(boolean), "wandb": WANDB,
}


def stage(name: str, overrides: list[str], cfg: DictConfig) -> dict:
    """Compose one stage's config the way its own entry point would, plus the shared settings."""
    shared = [f"progress={str(cfg.progress).lower()}", f"wandb.mode={cfg.wandb.mode}",
              f"wandb.project={cfg.wandb.project}"]
    return OmegaConf.to_container(compose(config_name=name, overrides=[*overrides, *shared]), resolve=True)


@hydra.main(config_path="../configs", config_name="quickstart", version_base="1.3")
@hydra_entry("quickstart.py")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    check(OmegaConf.to_container(cfg, resolve=True), SCHEMA)
    t0 = time.perf_counter()
    mt = stage("meta_train", [f"optimizer={cfg.optimizer}", f"family={cfg.family}", f"meta.steps={cfg.meta_steps}",
                              *cfg.meta_train_overrides], cfg)
    ev = stage("evaluate", [f"steps={cfg.eval_steps}", *cfg.evaluate_overrides], cfg)
    for c in (mt, ev):
        for key in ("hydra", "resume", "threads"):  # threads: this job's own setting (set before any work)
            c.pop(key, None)
    shipped = {label: {"checkpoint": name} for label, name in (cfg.get("pretrained") or {}).items()}
    # both stages before any work: a bad evaluation override fails now, not after meta-training
    check_meta_train_config(mt)
    check_evaluation({**ev, "optimizers": {**ev["optimizers"], **shipped}}, resolve_device(ev["device"]))
    print(f"[1/2] meta-training {mt['optimizer']['name']} on {mt['family']} for {mt['meta']['steps']} meta-steps")
    summary = meta_train(mt, run_dir / "meta_train")
    plot_meta_loss(run_dir / "meta_train")
    ev["optimizers"].update({cfg.learned_label: {"checkpoint": summary["checkpoint"]}, **shipped})
    print(f"[2/2] evaluating against tuned baselines on {list(ev['suite'])}")
    evaluate(ev, run_dir / "evaluate")
    print((run_dir / "evaluate" / "summary.md").read_text())
    print(f"quickstart finished in {time.perf_counter() - t0:.0f} s; outputs in {run_dir}")
    print("For a new task, start from the general-purpose learned optimizer: "
          "baselines.RuleOptimizer(model.parameters(), learned_opt.load('celo'))")


if __name__ == "__main__":
    main()
