"""Metrics of a training curve and their statistics over seeds.

A curve is the per-step training loss of one (optimizer, task, seed) run; a
diverged run's curve is shorter than the budget (the steps after divergence
are missing, NaN in arrays) and counts as failing every target.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def auc(curve: Sequence[float], budget: int | None = None) -> float:
    """Mean loss over the run (area under the curve divided by its length).

    A diverged run (fewer finite steps than ``budget``) has an infinite AUC: it
    did not finish the budget, and no finite number would rank it fairly.
    """
    c = np.asarray(curve, dtype=float)
    n = len(c) if budget is None else budget
    if n == 0 or len(c) < n or not np.isfinite(c[:n]).all():
        return math.inf
    return float(c[:n].mean())


def steps_to_target(curve: Sequence[float], target: float, smooth: int = 1) -> float:
    """1-based number of steps until the (trailing-mean smoothed) loss first reaches ``target``; inf if never."""
    c = np.asarray(curve, dtype=float)
    if smooth > 1 and len(c) >= smooth:
        kernel = np.ones(smooth) / smooth
        c = np.concatenate([np.full(smooth - 1, np.nan), np.convolve(c, kernel, mode="valid")])
    hits = np.nonzero(c <= target)[0]
    return float(hits[0] + 1) if hits.size else math.inf


def steps_to_accuracy(evals: Sequence[Mapping[str, float]], target: float, key: str = "test_accuracy") -> float:
    """Updates done (``step``) at the first periodic evaluation whose ``key`` reaches ``target``; inf if
    none does (an evaluation without ``key``, or with NaN there, never counts)."""
    hits = [e["step"] for e in evals if e.get(key, -math.inf) >= target]
    return float(hits[0]) if hits else math.inf


def final(curve: Sequence[float], budget: int, last: int = 1) -> float:
    """Mean of the last ``last`` losses if the run finished its budget, else inf."""
    c = np.asarray(curve, dtype=float)
    if len(c) < budget or not np.isfinite(c[budget - last:budget]).all():
        return math.inf
    return float(c[budget - last:budget].mean())


def normalized_score(value: float, reference: float) -> float:
    """``value / reference`` (learned_optimization style): < 1 is better than the reference."""
    if not math.isfinite(value):
        return math.inf
    if reference <= 0 or not math.isfinite(reference):
        return math.nan
    return value / reference


def padded(curves: Sequence[Sequence[float]], length: int) -> np.ndarray:
    """Curves of unequal length (a diverged run stops early) as one ``(len(curves), length)`` array,
    NaN after each curve's end (longer curves are cut at ``length``)."""
    out = np.full((len(curves), length), np.nan)
    for i, c in enumerate(curves):
        c = np.asarray(c, dtype=float)[:length]
        out[i, :len(c)] = c
    return out


def geometric_mean(values: Sequence[float]) -> float:
    """Geometric mean of positive values; inf if any is inf (a diverged task), nan if any is nan or <= 0."""
    v = np.asarray(values, dtype=float)
    if v.size == 0 or np.isnan(v).any() or (v <= 0).any():
        return math.nan
    if np.isinf(v).any():
        return math.inf
    return float(np.exp(np.log(v).mean()))


def across_tasks(auc: dict[str, dict[str, float]], diverged: dict[str, dict[str, int]], reference: str,
                 baseline: str | None = None) -> dict[str, dict]:
    """One line per optimizer summarising a whole suite (how Celo2 and VeLO report generalisation).

    ``auc[task][optimizer]`` is the median over seeds of the mean training loss, ``diverged[task][optimizer]``
    the number of diverged seeds. For every optimizer present on every task: the geometric mean over tasks
    of its ratio to ``reference`` (< 1 is better), its worst task and that ratio, the geometric mean of its
    ratio to ``baseline`` (e.g. Adam at its default lr) and the total number of diverged runs.
    """
    tasks = [t for t in auc if reference in auc[t]]
    names = sorted({o for t in tasks for o in auc[t]})
    out = {}
    for name in names:
        if not all(name in auc[t] for t in tasks):
            continue
        ratios = {t: normalized_score(auc[t][name], auc[t][reference]) for t in tasks}
        worst = max(tasks, key=lambda t: (ratios[t] if not math.isnan(ratios[t]) else math.inf))
        line = {"geomean_vs_reference": geometric_mean(list(ratios.values())), "worst_task": worst,
                "worst_vs_reference": ratios[worst], "ratios": ratios,
                "diverged": int(sum(diverged[t].get(name, 0) for t in tasks)), "tasks": len(tasks)}
        if baseline is not None and all(baseline in auc[t] for t in tasks):
            line["geomean_vs_baseline"] = geometric_mean([normalized_score(auc[t][name], auc[t][baseline])
                                                          for t in tasks])
        out[name] = line
    return out


def task_medians(tasks: dict[str, dict]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """``(auc, diverged)`` for :func:`across_tasks` from an evaluation summary's ``tasks`` (each with
    ``rows[optimizer]["stats"]["auc"]["median"]`` and ``rows[optimizer]["diverged"]``)."""
    auc = {t: {e: float(r["stats"]["auc"]["median"]) for e, r in res["rows"].items()} for t, res in tasks.items()}
    diverged = {t: {e: int(r["diverged"]) for e, r in res["rows"].items()} for t, res in tasks.items()}
    return auc, diverged


def across_cells(line: dict) -> list[str]:
    """The geometric mean, worst task and geometric mean against the baseline of one :func:`across_tasks`
    line, formatted for a table."""
    return [f"{line['geomean_vs_reference']:.3g}", f"{line['worst_task']} ({line['worst_vs_reference']:.3g})",
            f"{line['geomean_vs_baseline']:.3g}" if "geomean_vs_baseline" in line else "-"]


def median_iqr(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, 25th percentile, 75th percentile); infinities (diverged seeds) take part as large values."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    q = np.percentile(v, [50, 25, 75], method="linear") if np.isfinite(v).all() else _percentiles_with_inf(v)
    return float(q[0]), float(q[1]), float(q[2])


def _percentiles_with_inf(v: np.ndarray) -> list[float]:
    # np.percentile interpolates inf - inf = nan; sort and pick order statistics with the same
    # linear rule, treating inf as larger than everything.
    s = np.sort(v)
    out = []
    for p in (50, 25, 75):
        pos = (len(s) - 1) * p / 100
        lo, hi = int(math.floor(pos)), int(math.ceil(pos))
        frac = pos - lo
        if frac == 0 or s[lo] == s[hi]:
            out.append(s[lo])
        elif math.isinf(s[hi]):
            out.append(math.inf)
        else:
            out.append(s[lo] + frac * (s[hi] - s[lo]))
    return out


def wins_losses(values: Sequence[float], reference: Sequence[float]) -> tuple[int, int, int]:
    """Paired by seed: (wins, ties, losses) of ``values`` against ``reference`` (lower is better)."""
    w = t = lo = 0
    for a, b in zip(values, reference):
        if a < b:
            w += 1
        elif a == b:
            t += 1
        else:
            lo += 1
    return w, t, lo


def fmt_median_iqr(values: Sequence[float], digits: int = 4, inf_label: str = "diverged") -> str:
    """``median [q25, q75]``; ``inf_label`` when the median itself is infinite."""
    m, q1, q3 = median_iqr(values)
    if math.isnan(m):
        return "n/a"
    if math.isinf(m):
        return inf_label
    return f"{m:.{digits}g} [{q1:.{digits - 1}g}, {q3:.{digits - 1}g}]"
