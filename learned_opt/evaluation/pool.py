"""Pool the across-tasks scores of several finished evaluations into one table.

Each evaluation (``experiments/evaluate.py``) scores every optimizer on every task of its suite by the
median mean training loss over seeds relative to tuned Adam. Pooling keeps each task's own reference (its
own tuned Adam) and summarises all tasks of all runs together: the geometric mean over the pooled tasks,
the worst task, how many tasks beat the reference (ratio < 1) and how many are above a threshold (1.2 by
default, the worst-task bar of the generalisation targets), and the diverged runs. Only optimizers
present in every run are pooled (under the same label). Tasks are named ``<run label>/<task>``.

The numbers are the runs' own (``summary.json``), passed through :func:`metrics.across_tasks`, so a pooled
table of one run reproduces that run's across-tasks table.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..utils import atomic_write_text
from . import metrics as M
from .evaluate import BASELINE, REFERENCE
from .report import markdown_table

__all__ = ["load_medians", "pool", "pooled_markdown"]


def load_medians(run_dir: str | Path) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """``(auc, diverged)`` of one evaluation: ``auc[task][optimizer]`` the median mean training loss over
    seeds, ``diverged[task][optimizer]`` the diverged seeds, read from ``run_dir/summary.json``."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pool needs finished evaluations (experiments/evaluate.py run dirs)")
    try:
        return M.task_medians(json.loads(path.read_text())["summary"]["tasks"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{path} is not an evaluation summary ({type(e).__name__}: {e})") from e


def pool(runs: Sequence[tuple[str, str | Path]], threshold: float = 1.2) -> dict:
    """Pool ``runs`` (``(label, run_dir)`` pairs, labels distinct) into one across-tasks summary:
    ``{"runs": {label: dir}, "tasks": [...], "across_tasks": {optimizer: {..., "wins", "above_threshold"}},
    "threshold": threshold}``."""
    labels = [label for label, _ in runs]
    if not runs:
        raise ValueError("pool needs at least one evaluation run dir")
    if len(set(labels)) != len(labels):
        raise ValueError(f"run labels must be distinct; got {labels}")
    auc: dict[str, dict[str, float]] = {}
    diverged: dict[str, dict[str, int]] = {}
    per_run = []
    for label, run_dir in runs:
        a, d = load_medians(run_dir)
        per_run.append(set.intersection(*(set(v) for v in a.values())) if a else set())
        auc.update({f"{label}/{t}": v for t, v in a.items()})
        diverged.update({f"{label}/{t}": v for t, v in d.items()})
    common = set.intersection(*per_run)
    if REFERENCE not in common:
        raise ValueError(f"every run needs {REFERENCE!r} on every task (the per-task reference)")
    auc = {t: {e: v for e, v in row.items() if e in common} for t, row in auc.items()}
    across = M.across_tasks(auc, diverged, REFERENCE, BASELINE if BASELINE in common else None)
    for line in across.values():
        ratios = list(line["ratios"].values())
        line["wins"] = sum(r < 1 for r in ratios)
        line["above_threshold"] = sum(r > threshold for r in ratios)
    return {"runs": {label: str(d) for label, d in runs}, "tasks": list(auc), "across_tasks": across,
            "threshold": threshold}


def pooled_markdown(pooled: dict) -> str:
    """The pooled table, in the format of an evaluation's "Across tasks" section plus wins and bad tasks."""
    acr, thr = pooled["across_tasks"], pooled["threshold"]
    runs = ", ".join(pooled["runs"])  # by label: the run directories are the user's own (summary.json has them)
    lines = [f"### Across tasks (pooled)\n\nPooled over the {len(pooled['tasks'])} tasks of {runs}. score = median "
             f"mean training loss / that of {REFERENCE} on each task (each task's own); geometric mean over the "
             f"tasks, the worst task, the geometric mean against {BASELINE}, the tasks where the score is < 1 and "
             f"> {thr:g} (< 1 is better); diverged = runs (task x seed) that diverged.\n"]
    order = sorted(acr, key=lambda e: (acr[e]["geomean_vs_reference"], e))
    lines.append(markdown_table(
        ["optimizer", f"geo. mean score vs {REFERENCE}", "worst task", f"geo. mean vs {BASELINE}",
         "tasks < 1", f"tasks > {thr:g}", "diverged"],
        [[e, *M.across_cells(acr[e]), f"{acr[e]['wins']} of {acr[e]['tasks']}", acr[e]["above_threshold"],
          acr[e]["diverged"]] for e in order]))
    return "\n".join(lines)


def write_pooled(out_dir: str | Path, pooled: dict) -> Path:
    """``summary.md`` and ``summary.json`` in ``out_dir`` (atomic writes); returns the markdown's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(pooled, indent=1), out / "summary.json")
    md = out / "summary.md"
    atomic_write_text(pooled_markdown(pooled) + "\n", md)
    return md
