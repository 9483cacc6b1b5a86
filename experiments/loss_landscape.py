"""Loss landscapes of one network trained by different optimizers (Li et al. 2018).

    python experiments/loss_landscape.py                     # digits MLP [32] relu, SGD vs Adam
    python experiments/loss_landscape.py steps=3000 contour.resolution=61 task.dataset=mnist5k

Each optimizer trains the same initial weights theta_0 through ``unroll``, keeping the weights
every ``record_every`` steps. Around each trained ``theta_T`` (:mod:`learned_opt.lecture.landscape`):

1. ``interpolation.png``: train and test loss at ``(1 - alpha) theta_0 + alpha theta_T``,
   alpha in ``[alpha_min, alpha_max]`` (Goodfellow et al. 2015), every optimizer in one plot;
2. ``contour_<opt>.png``: training loss at ``theta_T + a d1 + b d2`` for two random
   filter-normalised directions (biases get the zero direction with ``contour.ignore_biases``);
3. ``pca_<opt>.png``: training loss in the plane of the top two principal directions of
   ``[theta_i - theta_T]``, with the trajectory projected onto it.

Plus ``table.md`` (final losses, the loss at alpha = 0.5, the interpolation barrier,
the PC1 + PC2 explained variance), ``results.json``, ``metrics.jsonl`` and an offline W&B run.
Landscape losses use a fixed set of examples (``eval_examples``), batched over grid points.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from baselines import make_rule
from learned_opt.entry import hydra_entry
from learned_opt.lecture import landscape as L
from learned_opt.evaluation.plots import plot_interpolation
from learned_opt.evaluation.report import markdown_table
from learned_opt.runlog import RunLogger
from learned_opt.utils import atomic_write_text, generator, resolve_device

COLUMNS = ["optimizer", "rule", "hyperparameters", "final train loss", "final test loss", "test accuracy",
           "train loss at α=0.5", "barrier (train)", "PC1+PC2 explained variance", "‖θ_T − θ₀‖"]


@hydra.main(config_path="../configs", config_name="loss_landscape", version_base="1.3")
@hydra_entry("loss_landscape.py")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    c = OmegaConf.to_container(cfg, resolve=True)
    L.check_config(c)
    device = resolve_device(c["device"])
    task, eval_task, rules = L.build(c, device)
    logger = RunLogger(run_dir, c["wandb"], name=f"loss_landscape-{task.name}", group="loss_landscape",
                       tags=list(rules), config=c, job_type="loss_landscape")
    started = time.perf_counter()
    train_loss, test_loss = (L.fixed_loss(eval_task, split, c["eval_examples"]) for split in ("train", "test"))
    interp, contour, pca, fig_cfg = c["interpolation"], c["contour"], c["pca"], c["figure"]
    alphas = np.linspace(interp["alpha_min"], interp["alpha_max"], interp["points"])
    span = np.linspace(-contour["span"], contour["span"], contour["resolution"])
    curves, results, rows, losses = {}, {}, [], {}
    for label, (rule_name, hparams) in rules.items():
        theta0, res, snaps = L.train_with_snapshots(task, make_rule(rule_name, **hparams), c["steps"],
                                                    c["record_every"], generator(c["seed"], device),
                                                    progress=f"train {label}")
        accuracy = task.metrics(res.params, "test", max_examples=c["eval_examples"]).get("accuracy")
        s = L.slices(train_loss, test_loss, theta0, res.params, [snap["params"] for snap in snaps], alphas=alphas,
                     span=span, generator=generator(c["seed"], device), ignore_biases=contour["ignore_biases"],
                     pca_resolution=pca["resolution"], pca_margin=pca["margin"], pca_center=pca["center"],
                     chunk_size=c["chunk_size"], vmap=c["vmap"], progress=label)
        losses[label] = res.losses.detach().cpu().numpy()
        curves[label] = (s.interpolation_train, s.interpolation_test)
        what = f"{task.name}, {label} (lr={hparams.get('lr', '-')})"
        evr = s.explained_variance

        contour_png, pca_png = L.plot_slices(s, span, run_dir / f"contour_{label}.png", run_dir / f"pca_{label}.png",
                                             what=what, steps=c["steps"], record_every=c["record_every"],
                                             num_levels=c["num_levels"], figure=fig_cfg)
        logger.image(f"contour/{label}", contour_png)
        logger.image(f"pca/{label}", pca_png)

        results[label] = {"rule": rule_name, "hparams": hparams, "diverged_at": res.diverged_at,
                          "test_accuracy": accuracy, **s.summary(), "snapshot_steps": [snap["step"] for snap in snaps]}
        rows.append([label, rule_name, json.dumps(hparams), s.final_train_loss, s.final_test_loss,
                     "-" if accuracy is None else accuracy, s.loss_at_half, s.barrier,
                     f"{100 * evr.sum():.1f}% ({100 * evr[0]:.1f} + {100 * evr[1]:.1f})", s.distance])

    png = plot_interpolation(alphas, curves, run_dir / "interpolation.png", logy=interp["logy"],
                             title=f"{task.name} on {c['task'].get('dataset')}: linear interpolation from the "
                                   f"initial to the trained weights", ylabel="loss (cross-entropy, nats)",
                             figsize=(fig_cfg["width"] + 0.5, fig_cfg["height"] - 0.5), dpi=fig_cfg["dpi"])
    logger.image("interpolation", png)
    logger.log_medians({f"{label}/train_loss": [v] for label, v in losses.items()})  # one run: the values
    elapsed = time.perf_counter() - started
    n_eval = "whole splits" if c["eval_examples"] is None else f"first {c['eval_examples']} examples of each split"
    header = (f"Task `{task.name}` ({c['task']}), {c['steps']} steps, seed {c['seed']}, "
              f"device {device}; landscape losses on the {n_eval}; total {elapsed:.1f} s.\n"
              f"Barrier: max over α in [0, 1] of L(α) − ((1 − α) L(0) + α L(1)) on the interpolation grid "
              f"(0: the loss never rises above the straight line between the endpoints).\n\n")
    table = markdown_table(COLUMNS, rows)
    atomic_write_text(header + table, run_dir / "table.md")
    atomic_write_text(json.dumps({"config": c, "results": results, "seconds": elapsed}), run_dir / "results.json")
    logger.table("landscape", COLUMNS, rows)
    logger.summary({f"{k}/{m}": v[m] for k, v in results.items()
                    for m in ("final_train_loss", "final_test_loss", "loss_at_alpha_0.5", "barrier")})
    logger.finish()
    print(header + table)
    print(f"wrote {run_dir}/table.md, results.json, interpolation.png, "
          + ", ".join(f"contour_{k}.png, pca_{k}.png" for k in results))


if __name__ == "__main__":
    main()
