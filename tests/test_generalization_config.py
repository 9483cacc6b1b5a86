"""The generalization suite: it validates, every task lies outside the meta-training
family's distribution (checked against configs/family/general.yaml, not a copy of it), and it runs
end to end on a tiny budget."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from learned_opt.evaluation.evaluate import check_config
from test_experiments import ROOT, composed_config, run_experiment

CONFIG = composed_config("generalization", resolve=True)
FAMILY = yaml.safe_load((ROOT / "configs" / "family" / "general.yaml").read_text())


def outside_family(spec: dict) -> list[str]:
    """The ways a suite entry leaves the family's distribution (empty: it lies inside)."""
    why = []
    if spec.get("dataset") not in FAMILY["datasets"]:
        why.append(f"dataset {spec.get('dataset')}")
    if spec["name"] not in FAMILY["architectures"]:
        why.append(f"model {spec['name']}")
    hidden = spec.get("hidden_sizes", [])
    if hidden and max(hidden) > FAMILY["widths"][1]:
        why.append(f"width {max(hidden)}")
    if len(hidden) > FAMILY["depths"][1]:
        why.append(f"depth {len(hidden)}")
    if not FAMILY["batch_sizes"][0] <= spec["batch_size"] <= FAMILY["batch_sizes"][1]:
        why.append(f"batch {spec['batch_size']}")
    if spec.get("steps", CONFIG["steps"]) > FAMILY["horizon_max"]:
        why.append(f"horizon {spec['steps']}")
    return why


def test_generalization_config_validates_before_any_work():
    cfg = {k: v for k, v in CONFIG.items() if k != "resume"}
    cfg["suite"] = {k: v for k, v in cfg["suite"].items() if not v.get("requires_files")}  # no data root here
    specs, suite = check_config(cfg, torch.device("cpu"))
    assert len(CONFIG["suite"]) >= 8 and len(suite) == len(cfg["suite"])
    assert {"adam", "adamw", "nesterov"} <= {s.label for s in specs}
    assert len(CONFIG["seeds"]) >= 5 and not set(CONFIG["seeds"]) & set(CONFIG["tuning"]["seeds"])


@pytest.mark.parametrize("label", sorted(CONFIG["suite"]))
def test_every_suite_task_lies_outside_the_meta_training_family(label):
    assert outside_family(CONFIG["suite"][label]), f"suite.{label} lies inside configs/family/general.yaml"


def test_the_suite_covers_wider_deeper_28x28_other_losses_batches_and_long_horizons():
    suite = CONFIG["suite"].values()
    assert any(max(s.get("hidden_sizes", [0])) >= 256 for s in suite)           # wider
    assert any(len(s.get("hidden_sizes", [])) > FAMILY["depths"][1] for s in suite)  # deeper
    assert any(s["name"] == "conv" and s["dataset"] == "mnist5k" for s in suite)   # conv on 28x28
    assert {"mnist", "fashion_mnist"} <= {s["dataset"] for s in suite}
    assert {"regression", "autoencoder"} <= {s["name"] for s in suite}
    assert any(s["batch_size"] < FAMILY["batch_sizes"][0] for s in suite)
    assert any(s["batch_size"] > FAMILY["batch_sizes"][1] for s in suite)
    assert max(s.get("steps", CONFIG["steps"]) for s in suite) >= 5000


def test_family_helper_flags_a_task_inside_the_family():
    """The check above can fail: a task the family could sample is reported as inside."""
    assert outside_family({"name": "mlp", "dataset": "digits", "hidden_sizes": [64, 64], "batch_size": 64,
                           "steps": 500}) == []


def test_generalization_suite_tiny_end_to_end(tmp_path):
    keep = ("regression", "autoencoder", "batch_8")
    drop = [f"~suite.{k}" for k in CONFIG["suite"] if k not in keep]
    learned = [f"~optimizers.{k}" for k, v in CONFIG["optimizers"].items()
               if "checkpoint" in v and k not in ("mlp_lopt", "celo_general", "celo_hd", "celo_backoff", "celo_radial")]
    run_dir = run_experiment("evaluate.py", tmp_path, "steps=6", "seeds=[100]", "tuning.budget=2",
                             "tuning.seeds=[0]", *drop, *learned, *(f"suite.{k}.steps=6" for k in keep),
                             f"optimizers.mlp_lopt.checkpoint={ROOT}/learned_opt/pretrained/mlp_l2l_mnist.pt",
                             config_name="generalization", timeout=600)
    summary = json.loads((run_dir / "summary.json").read_text())
    md = (run_dir / "summary.md").read_text()
    for task in keep:
        assert task in md
    rows = ["adam@tuned", "adam@default", "adamw@tuned", "nesterov@tuned", "mlp_lopt"]
    for row in rows + ["celo_general", "celo_hd", "celo_backoff", "celo_radial"]:  # found by their short names from another working directory
        assert row in md, row
    assert summary["summary"]["seconds"] > 0 and set(summary["summary"]["tasks"]) == set(keep)
    across = summary["summary"]["across_tasks"]
    assert "### Across tasks" in md and across["adam@tuned"]["geomean_vs_reference"] == 1.0
    assert across["adam@default"]["geomean_vs_baseline"] == 1.0 and across["mlp_lopt"]["tasks"] == len(keep)
    assert Path(run_dir / "scores.png").stat().st_size > 10_000


# --------------------------------------------------------------------------- the selection set

SELECTION = composed_config("selection", resolve=True)


def test_selection_config_validates_and_is_disjoint_from_the_suite():
    """configs/selection.yaml chooses between candidates: its tasks are outside the family and none is a
    suite task, and its seeds are neither the suite's nor the tuning seeds."""
    cfg = {k: v for k, v in SELECTION.items() if k != "resume"}
    specs, suite = check_config(cfg, torch.device("cpu"))
    assert len(suite) == len(SELECTION["suite"]) >= 5 and {"adam", "celo_general", "celo_hd", "celo_backoff", "celo_radial"} <= {s.label for s in specs}
    strip = lambda spec: {k: v for k, v in spec.items() if k != "steps"}  # noqa: E731
    for label, spec in SELECTION["suite"].items():
        assert outside_family(spec), f"selection.{label} lies inside configs/family/general.yaml"
        assert all(strip(spec) != strip(s) for s in CONFIG["suite"].values()), f"selection.{label} is a suite task"
    assert not set(SELECTION["seeds"]) & (set(CONFIG["seeds"]) | set(SELECTION["tuning"]["seeds"]))


# --------------------------------------------------------------------------- the hold-out sets

HOLDOUTS = {name: composed_config(name, resolve=True) for name in ("holdout", "holdout2", "holdout3", "holdout4", "holdout5")}


@pytest.mark.parametrize("index", range(len(HOLDOUTS)))
def test_holdout_config_validates_and_is_disjoint_from_every_earlier_set(index):
    """configs/holdout*.yaml: sets of unseen tasks written one after another, each outside the family, none
    of its tasks one of the suite, the selection set or an earlier hold-out set, with seeds of its own."""
    name, holdout = list(HOLDOUTS.items())[index]
    earlier = [CONFIG, SELECTION, *list(HOLDOUTS.values())[:index]]
    cfg = {k: v for k, v in holdout.items() if k != "resume"}
    cfg["suite"] = {k: v for k, v in cfg["suite"].items() if not v.get("requires_files")}  # no data root here
    specs, suite = check_config(cfg, torch.device("cpu"))
    assert len(holdout["suite"]) >= 8 and len(suite) == len(cfg["suite"])
    assert {"adam", "celo_backoff", "celo_hd", "celo_radial"} <= {s.label for s in specs}
    strip = lambda spec: {k: v for k, v in spec.items() if k != "steps"}  # noqa: E731
    others = [spec for other in earlier for spec in other["suite"].values()]
    for label, spec in holdout["suite"].items():
        assert outside_family(spec), f"{name}.{label} lies inside configs/family/general.yaml"
        assert all(strip(spec) != strip(s) for s in others), f"{name}.{label} is a task of an earlier set"
    used = {seed for other in earlier for seed in other["seeds"]} | set(holdout["tuning"]["seeds"])
    assert len(holdout["seeds"]) >= 5 and not set(holdout["seeds"]) & used
