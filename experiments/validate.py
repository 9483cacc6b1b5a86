"""Score learned optimizers on held-out tasks of a meta-training family: the in-distribution check that
complements the generalization suite (configs/generalization.yaml), e.g. to choose between two runs.

    python experiments/validate.py
    python experiments/validate.py 'checkpoints=[celo,runs/meta_train/<run>/best.pt]'

Writes ``table.md`` (mean, median and worst score per optimizer; lower is better), ``results.json`` (the
per-task scores) and an offline W&B run to the run directory.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import learned_opt
from learned_opt.entry import hydra_entry
from learned_opt.evaluation.report import markdown_table
from learned_opt.meta.trainer import held_out_scores
from learned_opt.runlog import RunLogger
from learned_opt.schema import WANDB, Field, check, choice, delegated, device as device_field, integer, list_of, string
from learned_opt.tasks import make_family
from learned_opt.utils import atomic_write_text, resolve_device

SCHEMA = {  # the fields of configs/validate.yaml; the family is checked by its constructor
    "checkpoints": Field(list_of(string, nonempty=True)), "tasks": Field(integer(1)), "steps": Field(integer(1)),
    "metric": Field(choice("log_ratio", "mean_loss", "ratio")), "first_seed": Field(integer(0)), "device": Field(device_field),
    "family": Field(delegated), "meta": {"truncation": Field(integer(1))}, "wandb": WANDB,
}


@hydra.main(config_path="../configs", config_name="validate", version_base="1.3")
@hydra_entry("validate.py")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    c = OmegaConf.to_container(cfg, resolve=True)
    check(c, SCHEMA)
    device = resolve_device(c["device"])
    family_cfg = dict(c["family"])
    family = make_family(family_cfg.pop("name"), **family_cfg)
    rules = {str(path): learned_opt.load(path, device) for path in c["checkpoints"]}

    results, rows = {}, []
    for label, rule in rules.items():
        scores = held_out_scores(rule, family, c["tasks"], c["steps"], c["metric"], device, c["first_seed"])
        results[label] = scores
        rows.append([label, float(np.mean(scores)), float(np.median(scores)), max(scores),
                     sum(not math.isfinite(s) for s in scores)])
        print(f"{label}: mean {rows[-1][1]:.4g}", flush=True)
    header = (f"{c['tasks']} held-out tasks of `{c['family']['name']}` (seeds {c['first_seed']} + i), {c['steps']} "
              f"steps each; score = {c['metric']} (lower is better).\n\n")
    table = markdown_table(["optimizer", "mean score", "median score", "worst task", "diverged"], rows)
    atomic_write_text(header + table, run_dir / "table.md")
    atomic_write_text(json.dumps({"config": c, "scores": results}, indent=1), run_dir / "results.json")
    logger = RunLogger(run_dir, c["wandb"], name="validate", group="validate", config=c, job_type="validate")
    logger.table("summary", ["optimizer", "mean", "median", "worst", "diverged"], rows)
    logger.finish()
    print(header + table)


if __name__ == "__main__":
    main()
