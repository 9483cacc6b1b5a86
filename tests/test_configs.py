"""Configs: each shipped rule's meta-training recipe (configs/recipe/) composes to exactly the command line it
replaces, the published task sets (configs/suite/) keep the tasks, seeds and tuning their numbers were made
with, and every comparison of learned optimizers scores against the one Adam baseline of configs/lineup/adam.yaml."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import yaml

from test_experiments import ROOT, composed_config

CELO_GENERAL = ("optimizer=celo family=general meta.estimator=pes meta.stagger=true meta.steps=3500 meta.tasks_per_step=4 "
                "meta.truncation=25 family.horizon_min=100 family.horizon_max=1000 meta.horizon=1000 "
                "meta.meta_loss=log_ratio meta.lr=0.002 meta.clip_grad_norm=null pes.pairs=2 pes.std=0.01 "
                "validation.every=50 validation.tasks=6 validation.steps=300 validation.metric=log_ratio "
                "checkpoint_every=10")
# The command lines that made the shipped files (learned_opt/pretrained/README.md before the recipes were files);
# the celo options of the single class written as the core and its controllers (optimizer.hypergradient=0.1 then).
HD = " optimizer.controllers.hypergradient.enabled=true optimizer.controllers.hypergradient.gain=0.1"
COMMANDS = {
    "celo_general": CELO_GENERAL,
    "celo_hd": CELO_GENERAL + " snapshot_every=250" + HD + " seed=0",
    # the cores meta-trained with celo_backoff's controller settings in place (docs/general_optimizer.md)
    "celo_controllers": CELO_GENERAL + " snapshot_every=250" + HD
                        + " optimizer.controllers.hypergradient.shrink=2.0 optimizer.step_mult=0.0027 seed=0",
    "mlp_l2l_mnist": "optimizer=mlp family=l2l_mnist optimizer.step_scale=grad_rms optimizer.step_mult=1.0 "
                     "meta.steps=300 meta.lr=0.003 meta.meta_loss=mean validation.every=25 validation.tasks=6",
    "mlp_invariant_l2l_mnist": "optimizer=mlp family=l2l_mnist meta.steps=400 meta.lr=0.001 meta.meta_loss=mean "
                               "validation.every=25 validation.tasks=6",
    "lstm_l2l_mnist": "optimizer=lstm family=l2l_mnist optimizer.step_scale=grad_rms optimizer.output_scale=1.0 "
                      "meta.steps=700 meta.lr=0.003 validation.every=25 validation.tasks=6",
    "lstm_paper_l2l_mnist": "optimizer=lstm family=l2l_mnist meta.steps=300 meta.lr=0.001 validation.every=25 "
                            "validation.tasks=6",
    "learned_adam_l2l_mnist": "optimizer=learned_adam family=l2l_mnist meta.steps=1000 meta.lr=0.05 "
                              "validation.every=50 validation.tasks=6",
    "lstm_quadratic": "optimizer=lstm family=quadratic meta.steps=2000 meta.lr=0.003 validation.every=100 "
                      "validation.tasks=8",
    "mlp_quadratic": "optimizer=mlp family=quadratic meta.steps=2000 meta.lr=0.003 validation.every=100 "
                     "validation.tasks=8",
}


def compose(name: str, overrides: list[str] = ()) -> dict:
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = hydra_compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
        choices = dict(cfg.hydra.runtime.choices)
        config = OmegaConf.to_container(cfg, resolve=False)
    config.pop("hydra")
    return {"config": config, "optimizer": choices["optimizer"], "family": choices["family"]}


def test_every_shipped_rule_made_by_meta_training_has_a_recipe():
    readme = (ROOT / "learned_opt" / "pretrained" / "README.md").read_text()
    recipes = {p.stem for p in (ROOT / "configs" / "recipe").glob("*.yaml")}
    assert recipes == set(COMMANDS)
    for name in recipes - {"celo_controllers"}:   # that one made the ablation's cores, not a shipped file
        assert (ROOT / "learned_opt" / "pretrained" / f"{name}.pt").exists()
        assert f"--config-name recipe/{name}`" in readme, name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_recipe_composes_to_exactly_its_old_command_line(name):
    assert compose(f"recipe/{name}") == compose("meta_train", COMMANDS[name].split())


def test_a_recipe_takes_further_overrides_and_names_its_run_directory(tmp_path):
    """The command as a user runs it: the recipe, a change on top, a check of the whole config before any work."""
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "meta_train.py"), "--config-name",
                           "recipe/celo_hd", "meta.truncation=0"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180, env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "meta.truncation=0 is not allowed" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*"))


# Fingerprints of the published task sets: tasks, evaluation seeds, default budget, test examples, tuning protocol
# and the Adam baseline, as the numbers in docs/general_optimizer.md were made with them. These sets are fixed
# data: a change here means the published numbers no longer come from the command shown beside them.
FIXED = {
    "generalization": "b859dbaa2803faa0", "selection": "672d7b7333cdaace", "holdout": "e7a6bac950edf129",
    "holdout2": "225764f19ff2ab91", "holdout3": "d8156b39adf9ded0", "holdout4": "4376a258d8a23566",
    "holdout5": "d13f38e4d63f9151", "short_runs": "07e0ec33a10d189a",
}


@pytest.mark.parametrize("name", sorted(FIXED))
def test_the_published_task_sets_are_unchanged(name):
    c = composed_config(name)
    fingerprint = {"suite": c["suite"], "seeds": c["seeds"], "steps": c["steps"], "eval_examples": c["eval_examples"],
                   "tuning": c["tuning"], "adam": c["optimizers"]["adam"]}
    assert hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16] == FIXED[name]
    assert c["suite"] == yaml.safe_load((ROOT / "configs" / "suite" / f"{name}.yaml").read_text())


# Lecture experiments that reproduce a paper's or an earlier protocol's comparison with a tuning range of their own
# (their reports under docs/lecture/ say so): their published numbers were made with these ranges.
OWN_ADAM_RANGE = {"learning_to_learn": [0.0001, 1.0], "l2l_quadratic": [0.0001, 1.0], "no_single_best": [1e-05, 0.1],
                  "adam_paper": [0.0001, 0.01]}


def test_one_adam_baseline_with_one_tuning_range():
    baseline = yaml.safe_load((ROOT / "configs" / "lineup" / "adam.yaml").read_text())["adam"]
    written = [p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml")
               if any("rule: adam," in line and "tune:" in line for line in p.read_text().splitlines())]
    assert sorted(written) == sorted(["configs/lineup/adam.yaml", *(f"configs/{n}.yaml" for n in OWN_ADAM_RANGE)])
    for p in (ROOT / "configs").glob("*.yaml"):
        text = p.read_text()
        if "- evaluate" not in text:
            continue  # not an evaluation
        adam = composed_config(p.stem)["optimizers"]["adam"]
        if p.stem in OWN_ADAM_RANGE:
            assert adam["tune"]["lr"] == OWN_ADAM_RANGE[p.stem]
            assert (ROOT / "docs" / "lecture" / f"{p.stem}.md").read_text().count("Adam's tuning range") == 1
        else:
            assert adam == baseline, p.stem
