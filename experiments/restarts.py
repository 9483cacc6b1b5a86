"""Reduce-on-plateau and SGDR with a snapshot ensemble (Huang et al. 2017), against a fixed lr.

    python experiments/restarts.py                                 # MLP on mnist5k, configs/restarts.yaml
    python experiments/restarts.py task.dataset=digits epochs=100 sgdr.cycle_epochs=20 device=cuda
    python experiments/restarts.py task.name=conv '~task.hidden_sizes' '~task.activation' '~task.dropout' \
        '+task.channels=[16,32]'

Three variants of SGD-momentum, the same number of epochs each, several seeds, all trained with
``unroll`` one epoch at a time on the training split minus a validation split (carved out of the
training split; the test split is only used for the final scores):

(a) a fixed lr;
(b) ``ReduceOnPlateau`` as the rule's lr: after every epoch the validation loss is fed to
    ``ReduceOnPlateau.step`` and training continues from the returned params and state;
(c) SGDR (``CosineWarmRestarts``, ``T_0`` = ``sgdr.cycle_epochs`` epochs) with a ``SnapshotCollector``
    called after every update (through unroll's callback): one snapshot at the end of each cycle.

The snapshot ensemble averages the softmax outputs of the snapshots on the test split
(:func:`ensemble_probs`) and is compared with each snapshot, the best single snapshot, (a) and (b).

Writes to the run directory: ``validation.png`` (validation loss vs epochs of the three, plateau
reductions and snapshots marked; the lr in a panel below), ``test_accuracy.png`` (bars: each
snapshot, the best single, the ensemble, (a), (b); mean ± std over seeds, seeds as dots),
``table.md``, ``results.json``, ``metrics.jsonl`` and an offline W&B run.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import hydra
import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from tqdm.auto import tqdm

from baselines import CosineWarmRestarts, ReduceOnPlateau, SnapshotCollector, make_rule
from baselines.base import Params, resolve
from learned_opt.evaluation.metrics import padded
from learned_opt.evaluation.plots import plot_curves, save_figure
from learned_opt.evaluation.suite import validation_task
from learned_opt.evaluation.tables import markdown_table, mean_std
from learned_opt.runlog import RunLogger, check_wandb_config
from learned_opt.tasks import make_task
from learned_opt.tasks.base import Task
from learned_opt.unroll import unroll
from learned_opt.utils import atomic_write_text, check_int, check_run_config, generator

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FIXED, PLATEAU, SGDR = "fixed", "plateau", "sgdr"
LABELS = {FIXED: "(a) fixed lr", PLATEAU: "(b) reduce-on-plateau", SGDR: "(c) SGDR (last iterate)"}
RULES_ALLOWED = ("momentum", "nesterov", "sgd")
BANDS = ("iqr", "minmax")
CHUNK = 8192  # test examples per forward pass


# --------------------------------------------------------------------------- config
def check_config(cfg: dict) -> tuple[torch.device, Task, Task]:
    """Validate every field before any work; returns the device, the full task and its validation version."""
    device = check_run_config(cfg)
    check_int("epochs", cfg["epochs"])
    if cfg["rule"] not in RULES_ALLOWED:
        raise ValueError(f"rule={cfg['rule']!r} is not allowed; allowed: {', '.join(RULES_ALLOWED)}")
    make_rule(cfg["rule"], lr=cfg["fixed"]["lr"], momentum=cfg["momentum"])
    ReduceOnPlateau(**cfg["plateau"])
    s = cfg["sgdr"]
    check_int("sgdr.cycle_epochs", s["cycle_epochs"])
    CosineWarmRestarts(s["lr"], 1, T_mult=s["T_mult"], eta_min=s["eta_min"])
    if s["eta_min"] > s["lr"]:
        raise ValueError(f"sgdr.eta_min={s['eta_min']!r} must not exceed sgdr.lr={s['lr']!r}")
    if s["cycle_epochs"] > cfg["epochs"]:
        raise ValueError(f"sgdr.cycle_epochs={s['cycle_epochs']} exceeds epochs={cfg['epochs']}: no cycle would end, "
                         f"so there would be no snapshot")
    if cfg["ensemble"]["last"] is not None:
        check_int("ensemble.last", cfg["ensemble"]["last"])
    if not (isinstance(cfg["val_fraction"], float) and 0 < cfg["val_fraction"] < 1):
        raise ValueError(f"val_fraction={cfg['val_fraction']!r} must be a number in (0, 1)")
    check_int("split_seed", cfg["split_seed"], 0)
    if cfg["eval_examples"] is not None:
        check_int("eval_examples", cfg["eval_examples"])
    if cfg["figure"]["band"] not in BANDS:
        raise ValueError(f"figure.band={cfg['figure']['band']!r} is not allowed; allowed: {', '.join(BANDS)}")
    check_int("figure.dpi", cfg["figure"]["dpi"])
    check_wandb_config(cfg["wandb"])
    task = make_task(**cfg["task"], device=device)
    if not task.is_classifier or not hasattr(task, "logits"):
        raise ValueError(f"task.name={cfg['task']['name']!r} must be a classifier with logits (mlp, logreg, conv)")
    return device, task, validation_task(dict(cfg["task"]), device, cfg["val_fraction"], cfg["split_seed"])


# --------------------------------------------------------------------------- ensembles
@torch.no_grad()
def ensemble_probs(task: Any, snapshots: Sequence[Params], x: Tensor) -> Tensor:
    """Mean over snapshots of ``softmax(task.logits(params, x))``: shape ``(n, classes)``."""
    if not snapshots:
        raise ValueError("ensemble_probs needs at least one snapshot")
    out = []
    for start in range(0, len(x), CHUNK):
        xb = x[start:start + CHUNK]
        out.append(torch.stack([torch.softmax(task.logits(p, xb), dim=1) for p in snapshots]).mean(0))
    return torch.cat(out)


def scores(probs: Tensor, y: Tensor) -> dict[str, float]:
    """Accuracy and negative log-likelihood of class probabilities ``probs`` against labels ``y``."""
    nll = F.nll_loss(probs.clamp_min(1e-12).log(), y).item()
    return {"accuracy": (probs.argmax(1) == y).double().mean().item(), "loss": nll}


# --------------------------------------------------------------------------- training
def train(task: Task, rule, epochs: int, steps_per_epoch: int, seed: int, device: torch.device,
          plateau: ReduceOnPlateau | None = None, collector: SnapshotCollector | None = None,
          eval_examples: int | None = None) -> dict:
    """``epochs`` unroll chunks of ``steps_per_epoch`` steps, validating after each (``task``'s "test" = validation).

    With ``plateau`` (the rule's lr), its ``step`` gets each epoch's validation loss; with ``collector``,
    ``maybe_snapshot(global step, params)`` runs after every update through unroll's callback.
    """
    g = generator(seed, device)
    params = task.init_params(g)
    state = rule.init(params)
    val0 = task.metrics(params, "test", eval_examples)
    out = {"val_loss": [val0["loss"]], "val_accuracy": [val0["accuracy"]], "lr_epoch": [], "reductions": [],
           "train_loss": [], "diverged_at_epoch": None}
    done = 0  # updates so far
    for epoch in range(1, epochs + 1):
        callback = None
        if collector is not None:
            def callback(s: int, p: Params, loss: Tensor, offset: int = done) -> None:
                if s >= 1:  # params after s updates of this chunk, i.e. after global update offset + s - 1
                    collector.maybe_snapshot(offset + s - 1, p)
        lr_now = float(resolve(rule.lr, state["step"]))  # the lr of this epoch's first update
        res = unroll(task, rule, params, state, steps_per_epoch, g, callback=callback,
                     callback_every=1 if collector is not None else 0)
        out["train_loss"] += res.losses.tolist()
        if res.diverged:
            out["diverged_at_epoch"] = epoch
            break
        params, state = res.params, res.state
        done += steps_per_epoch
        val = task.metrics(params, "test", eval_examples)
        out["val_loss"].append(val["loss"])
        out["val_accuracy"].append(val["accuracy"])
        out["lr_epoch"].append(lr_now)
        if plateau is not None:
            before = plateau.lr
            if plateau.step(val["loss"]) < before:
                out["reductions"].append(epoch)  # the lr drops from the next epoch on
    out["params"] = params
    return out


# --------------------------------------------------------------------------- figures
def plot_validation(runs: dict, epochs: int, spe: int, sgdr_sched: CosineWarmRestarts, snapshot_epochs: list[float],
                    cfg: dict, path: Path, title: str) -> Path:
    fig = plt.figure(figsize=(10, 8), dpi=cfg["figure"]["dpi"])
    gs = fig.add_gridspec(2, 1, height_ratios=[2.6, 1.2])
    ax, ax_lr = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
    curves = {}
    for key in (FIXED, PLATEAU, SGDR):
        curves[LABELS[key].replace(" (last iterate)", "")] = padded([r["val_loss"] for r in runs[key]], epochs + 1)
    plot_curves(curves, None, ax=ax, x=np.arange(epochs + 1), band=cfg["figure"]["band"], logy=True,
                title="Validation loss (validation split carved out of the training split)",
                xlabel="epoch", ylabel="validation loss (cross-entropy)")
    first = True
    for r in runs[PLATEAU]:
        for e in r["reductions"]:
            ax.plot([e], [r["val_loss"][e]], "v", color="C1", ms=8, mec="k", mew=0.5,
                    label="plateau: lr reduced after this epoch (each seed)" if first else None)
            first = False
    sg = curves[LABELS[SGDR].replace(" (last iterate)", "")]
    with np.errstate(all="ignore"):
        med = np.nanmedian(sg, axis=0)
    idx = [int(round(e)) for e in snapshot_epochs]
    ax.plot(snapshot_epochs, med[idx], "*", color="C2", ms=12, mec="k", mew=0.5, label="SGDR snapshot (cycle end)")
    ax.legend(fontsize=8)

    x_steps = np.arange(epochs * spe) / spe  # epoch position of each update
    ax_lr.plot(x_steps, [cfg["fixed"]["lr"]] * len(x_steps), color="C0", lw=1.5, label=LABELS[FIXED])
    for i, r in enumerate(runs[PLATEAU]):
        lrs = r["lr_epoch"]
        ax_lr.step(np.arange(len(lrs) + 1), lrs + lrs[-1:], where="post", color="C1", lw=1.2, alpha=0.8,
                   label=f"{LABELS[PLATEAU]} (one line per seed)" if i == 0 else None)
    ax_lr.plot(x_steps, [sgdr_sched(s) for s in range(len(x_steps))], color="C2", lw=1.2, label="(c) SGDR")
    ax_lr.set_yscale("log")
    lows = [v for r in runs[PLATEAU] for v in r["lr_epoch"]] + [cfg["fixed"]["lr"], cfg["sgdr"]["lr"]]
    # SGDR's lr reaches eta_min (maybe 0) at cycle ends: clip there; leave room above for the legend
    ax_lr.set_ylim(min(lows) / 3, max(lows) * 30)
    ax_lr.set_xlim(ax.get_xlim())
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("learning rate (log)")
    ax_lr.set_title("Learning rate")
    ax_lr.grid(True, which="both", alpha=0.3)
    ax_lr.legend(fontsize=8, loc="upper center", ncol=3, framealpha=0.9)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_accuracy_bars(bars: dict[str, list[float]], path: Path, title: str, dpi: int) -> Path:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    names = list(bars)
    fig, ax = plt.subplots(figsize=(max(7.5, 0.9 * len(names) + 2), 5.5), dpi=dpi)
    colors = ["C0" if n.startswith("(a)") else "C1" if n.startswith("(b)") else "C3" if "ensemble" in n else
              "C4" if "validation" in n else "plum" if "best" in n else "C2" for n in names]
    means = [float(np.nanmean(bars[n])) for n in names]
    stds = [float(np.nanstd(bars[n], ddof=1)) if np.isfinite(bars[n]).sum() > 1 else 0.0 for n in names]
    xs = np.arange(len(names))
    ax.bar(xs, means, yerr=stds, color=colors, alpha=0.85, capsize=3)
    lo = np.nanmin([v for n in names for v in bars[n]])
    hi = np.nanmax([v for n in names for v in bars[n]])
    pad = 0.04 * (hi - lo + 0.01)
    for i, n in enumerate(names):
        vals = np.asarray(bars[n], dtype=float)
        ax.plot(xs[i] + np.linspace(-0.2, 0.2, len(vals)), vals, "k.", ms=4)
        top = np.nanmax([means[i] + stds[i], *vals])
        ax.text(xs[i], top + pad, f"{means[i]:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_ylim(max(0.0, lo - 6 * pad), min(1.0, hi + 8 * pad))
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("model")
    ax.set_ylabel("test accuracy (fraction correct)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(handles=[Patch(color="grey", alpha=0.6, label="bar: mean ± std over seeds (value above)"),
                       Line2D([], [], color="k", marker=".", ls="", label="one seed")], fontsize=8, loc="upper left")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- main
@hydra.main(config_path="../configs", config_name="restarts", version_base="1.3")
def main(hcfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    cfg = OmegaConf.to_container(hcfg, resolve=True)
    device, task, val_task = check_config(cfg)
    if cfg["threads"] is not None:
        torch.set_num_threads(cfg["threads"])
    started = time.perf_counter()
    seeds, epochs = list(cfg["seeds"]), cfg["epochs"]
    n_train = len(val_task.dataset.y_train)
    spe = math.ceil(n_train / (val_task.batch_size or n_train))
    s = cfg["sgdr"]
    hp = {"momentum": cfg["momentum"]}
    x_test = task.dataset.x_test.to(device, task.dtype)
    y_test = task.dataset.y_test.to(device)

    def sgdr_schedule() -> CosineWarmRestarts:
        return CosineWarmRestarts(s["lr"], s["cycle_epochs"] * spe, T_mult=s["T_mult"], eta_min=s["eta_min"])

    runs: dict[str, list[dict]] = {FIXED: [], PLATEAU: [], SGDR: []}
    snapshots: list[list[tuple[int, Params]]] = []
    bar = tqdm(total=3 * len(seeds), desc="variants x seeds")
    for seed in seeds:
        runs[FIXED].append(train(val_task, make_rule(cfg["rule"], lr=cfg["fixed"]["lr"], **hp), epochs, spe, seed,
                                 device, eval_examples=cfg["eval_examples"]))
        bar.update()
        plateau = ReduceOnPlateau(**cfg["plateau"])
        runs[PLATEAU].append(train(val_task, make_rule(cfg["rule"], lr=plateau, **hp), epochs, spe, seed, device,
                                   plateau=plateau, eval_examples=cfg["eval_examples"]))
        bar.update()
        sched = sgdr_schedule()
        collector = SnapshotCollector(sched)
        runs[SGDR].append(train(val_task, make_rule(cfg["rule"], lr=sched, **hp), epochs, spe, seed, device,
                                collector=collector, eval_examples=cfg["eval_examples"]))
        snapshots.append(collector.snapshots)
        bar.update()
        bar.set_postfix(seed=seed, snapshots=len(collector.snapshots))
    bar.close()

    # test scores: (a), (b), SGDR's last iterate, every snapshot, the best single, the ensemble
    per_seed: dict[str, list[dict]] = {}
    n_snap = min(len(sn) for sn in snapshots)
    m = n_snap if cfg["ensemble"]["last"] is None else min(cfg["ensemble"]["last"], n_snap)
    for i, seed in enumerate(seeds):
        for key in (FIXED, PLATEAU, SGDR):
            r = runs[key][i]
            sc = scores(ensemble_probs(task, [r["params"]], x_test), y_test) if r["diverged_at_epoch"] is None \
                else {"accuracy": math.nan, "loss": math.nan}
            per_seed.setdefault(LABELS[key], []).append(sc)
        snaps = [p for _, p in snapshots[i][:n_snap]]
        singles = [scores(ensemble_probs(task, [p], x_test), y_test) for p in snaps]
        for j, sc in enumerate(singles):
            per_seed.setdefault(f"snapshot {j + 1} (epoch {(snapshots[i][j][0] + 1) / spe:g})", []).append(sc)
        if snaps:
            val_losses = [val_task.metrics(p, "test", cfg["eval_examples"])["loss"] for p in snaps]
            pick_val = int(np.argmin(val_losses))
            pick_test = int(np.argmax([sc["accuracy"] for sc in singles]))
            per_seed.setdefault("best single snapshot (by validation loss)", []).append(singles[pick_val])
            per_seed.setdefault("best single snapshot (by test accuracy, optimistic)", []).append(singles[pick_test])
            ens = scores(ensemble_probs(task, snaps[n_snap - m:], x_test), y_test)
            per_seed.setdefault(f"snapshot ensemble (last {m} of {n_snap}, mean softmax)", []).append(ens)
    ens_key = f"snapshot ensemble (last {m} of {n_snap}, mean softmax)"
    seconds = time.perf_counter() - started

    rows = []
    acc = {k: [sc["accuracy"] for sc in v] for k, v in per_seed.items()}
    for name, scs in per_seed.items():
        rows.append([name, mean_std(acc[name], 4), mean_std([sc["loss"] for sc in scs], 4)])
    table = markdown_table(["model", "test accuracy", "test loss (NLL)"], rows)

    def diff(a: str, b: str) -> str:
        d = np.asarray(acc[a]) - np.asarray(acc[b])
        wins, ties = int((d > 0).sum()), int((d == 0).sum())
        return (f"{np.nanmean(d) * 100:+.2f} points (ensemble better / tied / worse on {wins} / {ties} / "
                f"{len(d) - wins - ties} of {len(d)} seeds; "
                f"std of the difference {np.nanstd(d, ddof=1) * 100 if len(d) > 1 else 0.0:.2f})")

    verdicts = []
    if ens_key in acc:
        verdicts = [f"- ensemble vs best single snapshot (by validation loss): "
                    f"{diff(ens_key, 'best single snapshot (by validation loss)')}",
                    f"- ensemble vs best single snapshot (by test accuracy, optimistic): "
                    f"{diff(ens_key, 'best single snapshot (by test accuracy, optimistic)')}",
                    f"- ensemble vs {LABELS[FIXED]}: {diff(ens_key, LABELS[FIXED])}",
                    f"- ensemble vs {LABELS[PLATEAU]}: {diff(ens_key, LABELS[PLATEAU])}"]
    reductions = [len(r["reductions"]) for r in runs[PLATEAU]]
    best_val = {k: [float(np.nanmin(r["val_loss"])) for r in runs[k]] for k in runs}
    final_val = {k: [r["val_loss"][-1] if r["diverged_at_epoch"] is None else math.nan for r in runs[k]]
                 for k in runs}
    val_rows = [[LABELS[k], mean_std(final_val[k]), mean_std(best_val[k]),
                 mean_std(reductions) if k == PLATEAU else "-"] for k in runs]
    header = (f"Task `{task.name}` ({cfg['task']}), training split {n_train} examples after carving out a "
              f"{cfg['val_fraction']:.0%} validation split; {epochs} epochs of {spe} steps for every variant; "
              f"{cfg['rule']} (momentum {cfg['momentum']}); (a) lr {cfg['fixed']['lr']}, (b) ReduceOnPlateau "
              f"{cfg['plateau']}, (c) SGDR lr {s['lr']} -> {s['eta_min']}, T_0 {s['cycle_epochs']} epochs, T_mult "
              f"{s['T_mult']}: {n_snap} snapshots. Seeds {seeds}; mean ± std over seeds; total {seconds:.0f} s.\n\n"
              "Test split:\n\n")
    md = (header + table + "\n" + "\n".join(verdicts) + "\n\nValidation loss:\n\n" +
          markdown_table(["variant", "final validation loss", "best validation loss", "lr reductions"], val_rows))
    atomic_write_text(md, run_dir / "table.md")

    sched = sgdr_schedule()
    snap_epochs = [(st + 1) / spe for st, _ in snapshots[0][:n_snap]]
    band = "IQR" if cfg["figure"]["band"] == "iqr" else "min-max"
    plot_validation(runs, epochs, spe, sched, snap_epochs, cfg, run_dir / "validation.png",
                    title=f"{task.name}: fixed lr vs reduce-on-plateau vs SGDR (median, {band} band over "
                          f"{len(seeds)} seeds)")
    bar_names = [LABELS[FIXED], LABELS[PLATEAU]] + [k for k in acc if k.startswith("snapshot ") and k != ens_key] + \
        [k for k in acc if k.startswith("best single snapshot")] + [ens_key]
    plot_accuracy_bars({n: acc[n] for n in bar_names if n in acc}, run_dir / "test_accuracy.png",
                       title=f"{task.name}: test accuracy of each snapshot, the best single and the ensemble "
                             f"({len(seeds)} seeds)", dpi=cfg["figure"]["dpi"])
    results = {"config": cfg, "seconds": seconds, "steps_per_epoch": spe, "snapshots": n_snap, "ensemble_size": m,
               "test": per_seed, "verdicts": verdicts,
               "runs": {k: [{kk: vv for kk, vv in r.items() if kk != "params"} for r in v] for k, v in runs.items()}}
    atomic_write_text(json.dumps(results, indent=1), run_dir / "results.json")

    logger = RunLogger(run_dir, cfg["wandb"], name=f"restarts-{task.name}", group="restarts", job_type="restarts",
                       tags=[FIXED, PLATEAU, SGDR], config=cfg)
    for e in range(epochs + 1):
        row = {}
        for k, rs in runs.items():
            vals = [r["val_loss"][e] for r in rs if e < len(r["val_loss"])]
            if vals:
                row[f"{k}/val_loss_median"] = float(np.median(vals))
            lrs = [r["lr_epoch"][e] for r in rs if e < len(r["lr_epoch"])]
            if lrs:
                row[f"{k}/lr_median"] = float(np.median(lrs))
        logger.log(row, step=e)
    logger.table("test", ["model", "test_accuracy", "test_loss"], rows)
    logger.image("validation", run_dir / "validation.png")
    logger.image("test_accuracy", run_dir / "test_accuracy.png")
    logger.summary({f"{k}/test_accuracy_mean": float(np.nanmean(v)) for k, v in acc.items()})
    logger.finish()
    print(md)
    print(f"wrote {run_dir}/table.md, validation.png, test_accuracy.png, results.json "
          f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
