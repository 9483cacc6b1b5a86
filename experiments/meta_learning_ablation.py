"""What meta-learning adds to the shipped general-purpose optimizer: its controllers on hand-crafted Adam,
on the core at its initialisation and on cores meta-trained with the controller in place, against the
shipped rule and tuned Adam, on the generalization suite and the pooled hold-out sets.

    LEARNED_OPT_DATA=<data root> python experiments/meta_learning_ablation.py            # all sets, 3 seeds
    python experiments/meta_learning_ablation.py --sets generalization --seeds 3 --out runs/ablation

1. Rule files (``OUT/rules/``, made once): ``celo_init.pt`` = the shipped file with the core's MLP and skip
   reset to their initial values (``torch.manual_seed(0)``; every scalar kept: ``derive_rule.py celo
   celo_init.pt --reset core.layers --reset core.skip``); ``celo_mt_s{0,1}.pt`` = the two seeds meta-trained
   with the hypergradient step size (shrink 2) in place (``learned_opt/pretrained/README.md``'s celo_hd
   recipe plus ``hypergradient_shrink=2 step_mult=0.0027``, seeds 0 and 1, 3500 meta-steps), with the
   radial controller added as it was to the shipped rule (``--set radial_gain=0.1``). Their sources are
   taken from ``--meta-trained`` (default: the files as committed at ``SOURCE_COMMIT``, read with git).
2. One evaluation per set (``OUT/<set>``, resumable: cells already done are kept) with the line-up
   ``configs/lineup/adam.yaml`` + ``configs/lineup/ablation.yaml`` and the first ``--seeds`` evaluation seeds of the set.
3. ``OUT/summary.md`` / ``summary.json``: the generalization suite's across-tasks table and the hold-out
   sets pooled (``learned_opt.evaluation.pool``); publish with ``experiments/publish.py``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from learned_opt.evaluation.evaluate import evaluate
from learned_opt.evaluation.pool import pool, pooled_markdown, write_pooled
from learned_opt.entry import add_threads, input_errors, set_threads
from learned_opt.optimizers.files import derive_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SETS = ("generalization", "holdout", "holdout2", "holdout3", "holdout4", "holdout5")
SOURCE_COMMIT = "c6c1de9"
META_TRAINED = {"celo_mt_s0": "results/selection_controller/celo_bo_s0.pt",
                "celo_mt_s1": "results/selection_controller/celo_bo_s1.pt"}


def make_rules(out: Path, sources: dict[str, str | None]) -> None:
    rules = out / "rules"
    rules.mkdir(parents=True, exist_ok=True)
    if not (rules / "celo_init.pt").is_file():
        derive_checkpoint("celo", rules / "celo_init.pt", reset=["core.layers", "core.skip"], seed=0)
    for name, committed in META_TRAINED.items():
        if (rules / f"{name}.pt").is_file():
            continue
        src = sources.get(name)
        if src is None:   # the file as committed before candidate checkpoints left the repository
            src = str(rules / f"{name}_source.pt")
            blob = subprocess.run(["git", "show", f"{SOURCE_COMMIT}:{committed}"], cwd=ROOT, capture_output=True)
            if blob.returncode != 0:
                raise FileNotFoundError(f"{committed} at commit {SOURCE_COMMIT} is not readable here "
                                        f"({blob.stderr.decode().strip()}); pass --meta-trained {name}=PATH")
            Path(src).write_bytes(blob.stdout)
        derive_checkpoint(src, rules / f"{name}.pt", {"radial_gain": 0.1})


def set_config(name: str, seeds: int, lineup: dict) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name=name), resolve=False)
    cfg.pop("hydra", None)
    cfg.pop("threads", None)   # set once for the whole command (--threads)
    cfg["optimizers"] = lineup
    cfg["seeds"] = list(cfg["seeds"])[:seeds]
    cfg["progress"] = True
    cfg.setdefault("wandb", {})["mode"] = "disabled"
    return cfg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    ap.add_argument("--seeds", type=int, default=3, help="the first N evaluation seeds of each set (3)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "ablation")
    ap.add_argument("--meta-trained", nargs="*", default=[], metavar="NAME=PATH")
    add_threads(ap)
    args = ap.parse_args()
    sources = dict(item.partition("=")[::2] for item in args.meta_trained)
    with input_errors("meta_learning_ablation.py"):
        set_threads(args.threads)
        make_rules(args.out, sources)
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            lineup = OmegaConf.to_container(compose(config_name="evaluate", overrides=["lineup=[adam,ablation]"]),
                                            resolve=True)["optimizers"]
        lineup = {k: ({**v, "checkpoint": str(args.out / "rules" / Path(v["checkpoint"]).name)}
                      if "checkpoint" in v and v["checkpoint"].startswith("runs/ablation/") else v)
                  for k, v in lineup.items()}
        done = {}
        for name in args.sets:
            run_dir = args.out / name
            print(f"== {name} -> {run_dir}", flush=True)
            evaluate(set_config(name, args.seeds, lineup), run_dir, resume=True)
            done[name] = run_dir
    holdouts = [(n, d) for n, d in done.items() if n.startswith("holdout")]
    summary = {}
    if "generalization" in done:
        summary["generalization"] = pool([("generalization", done["generalization"])])
        write_pooled(args.out / "generalization_table", summary["generalization"])
    if holdouts:
        summary["holdout_pooled"] = pool(holdouts)
        write_pooled(args.out / "holdout_pooled", summary["holdout_pooled"])
    titles = {"generalization": "The generalization suite (10 tasks)",
              "holdout_pooled": f"The hold-out sets pooled ({', '.join(n for n, _ in holdouts)}: {len(holdouts) * 8} tasks)"}
    md = "\n\n".join(f"**{titles[k]}**, the first {args.seeds} evaluation seeds of each set\n\n{pooled_markdown(v)}"
                     for k, v in summary.items())
    (args.out / "summary.md").write_text(md + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
