"""Every hand-crafted rule (and optionally a learned one) on 2D test surfaces, from the same start.

    python experiments/trajectories.py                          # Rosenbrock, Beale, 3 saddle runs, two minima
    python experiments/trajectories.py max_steps=50 animation.frames=20
    python experiments/trajectories.py learned_checkpoint=runs/meta_train/.../checkpoint.pt

Each rule runs through ``unroll`` with a callback that records the point after every update; the
runs, their outcomes (which minimum was reached, whether the saddle was escaped) and the claims are
:mod:`learned_opt.lecture.trajectories`. Writes to the run directory, per surface ``S`` of the
config: ``trajectories_S.png`` (contours, minima as stars, saddle as X, start, one line per rule) and
``trajectories_S.gif`` (the same, animated); then ``table.md`` (final point, final loss, distance to
the nearest minimum, which minimum was reached, whether the saddle was escaped, and the config's
claims checked), ``results.json`` (with every trajectory), ``metrics.jsonl`` and an offline W&B run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from learned_opt.entry import hydra_entry
from learned_opt.lecture import trajectories as T
from learned_opt.evaluation.plots import animate_contour, contour_plot, save_figure
from learned_opt.evaluation.report import markdown_table
from learned_opt.runlog import RunLogger
from learned_opt.utils import atomic_write_text, resolve_device

LEGEND = {"fontsize": 8, "loc": "upper center", "bbox_to_anchor": (0.5, -0.12), "ncol": 3, "borderaxespad": 0}


@hydra.main(config_path="../configs", config_name="trajectories", version_base="1.3")
@hydra_entry("trajectories.py")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    c = OmegaConf.to_container(cfg, resolve=True)
    T.check_config(c)
    device = resolve_device(c["device"])
    runs = T.build_runs(c, device)
    logger = RunLogger(run_dir, c["wandb"], name="trajectories", group="trajectories", tags=list(runs), config=c,
                       job_type="trajectories")
    started = time.perf_counter()

    results, trajectories = {}, {}
    bar = tqdm(total=sum(len(r.rules) for r in runs.values()), desc="surfaces x rules")
    for label, run in runs.items():
        trajectories[label], results[label] = {}, {}
        for name, (rule, lr) in run.rules.items():
            traj = trajectories[label][name] = T.run_rule(run, rule, c["seed"], device)
            results[label][name] = {"lr": lr, "steps": run.steps, "diverged_at": traj["diverged_at"],
                                    **T.outcome(run, traj, c["reach_tol"])}
            logger.log({"surface": label, "rule": name, **results[label][name]})
            bar.update()
            bar.set_postfix(surface=label, rule=name)
    bar.close()

    figures, fig_cfg, anim = [], c["figure"], c["animation"]
    for label, run in tqdm(runs.items(), desc="figures and GIFs"):
        lines = {T.rule_label(name, lr): trajectories[label][name]["xy"] for name, (_, lr) in run.rules.items()}
        styles = {T.rule_label(name, lr): "--" for name, (_, lr) in run.rules.items() if lr is None}  # learned
        fig, ax = plt.subplots(figsize=(fig_cfg["width"], fig_cfg["height"]), dpi=fig_cfg["dpi"])
        contour_plot(ax, **T.surface_contour(run, c["grid"]), num_levels=c["num_levels"], trajectories=lines,
                     styles=styles, title=T.title(run), legend=LEGEND)
        png = save_figure(fig, run_dir / f"trajectories_{label}.png")
        logger.image(f"trajectories/{label}", png)
        figures.append(png.name)
        if anim["enabled"]:
            gif = animate_contour(**T.surface_contour(run, anim["grid"]), trajectories=lines,
                                  path=run_dir / f"trajectories_{label}.gif", frames=anim["frames"], fps=anim["fps"],
                                  dpi=anim["dpi"], figsize=(fig_cfg["width"], fig_cfg["height"]),
                                  num_levels=anim["num_levels"], styles=styles, title=T.title(run), legend=LEGEND)
            figures.append(gif.name)

    rows = T.table_rows(results)
    claims = T.check_claims(c["claims"], results)
    n_hold = sum("[holds]" in line for line in claims)
    elapsed = time.perf_counter() - started
    header = (f"Trajectories of {len(next(iter(runs.values())).rules)} rules on {len(runs)} surface runs, "
              f"seed {c['seed']}, device {device}; reach_tol {c['reach_tol']}; total {elapsed:.1f} s.\n\n")
    claims_md = f"\n## Claims ({n_hold}/{len(claims)} hold)\n\n" + "\n".join(claims) + "\n" if claims else ""
    text = header + markdown_table(T.COLUMNS, rows) + claims_md
    atomic_write_text(text, run_dir / "table.md")
    atomic_write_text(json.dumps({
        "config": c, "results": results, "claims": claims, "seconds": elapsed,
        "trajectories": {s: {n: t["xy"].tolist() for n, t in per.items()} for s, per in trajectories.items()},
    }), run_dir / "results.json")
    logger.table("trajectories", T.COLUMNS, rows)
    logger.summary({"claims_hold": n_hold, "claims_total": len(claims), "seconds": elapsed})
    logger.finish()
    print(text)
    print(f"wrote {run_dir}/table.md, results.json, {', '.join(figures)}")


if __name__ == "__main__":
    main()
