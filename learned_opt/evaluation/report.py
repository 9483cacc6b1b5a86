"""Reports: summary statistics over seeds, their formatting, comparisons and markdown tables.

Every experiment's table goes through these, so "mean ± std", "not reached" and "diverged" read the
same everywhere:

- :func:`mean_std` formats a metric over seeds; ``inf`` means the seed never got there (e.g. steps to a
  target), ``NaN`` that it diverged; both are counted, not averaged;
- :func:`compare` answers "is a better than b" from two such lists, seeds that failed counting as worst;
- :func:`paired_difference` summarises per-seed differences (wins, ties, losses);
- :func:`smooth` is the trailing mean used for minibatch-loss curves;
- :func:`markdown_table` renders rows; :func:`fmt` writes one optional number for a cell.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fmt(value: float | None, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits, or ``-`` for None (a cell that does not apply)."""
    return "-" if value is None else f"{value:.{digits}g}"


def mean_std(values: Sequence[float], digits: int = 4) -> str:
    """``mean ± std`` (ddof=1) of the finite values, saying how many seeds did not get there (inf) or
    diverged (NaN): ``0.91 ± 0.01``, ``0.91 ± 0.01 (1/5 diverged)``, ``5/5 not reached``."""
    arr = np.asarray(values, dtype=float)
    ok = arr[np.isfinite(arr)]
    notes = [f"{int(n)}/{arr.size} {what}" for n, what in ((np.isinf(arr).sum(), "not reached"),
                                                          (np.isnan(arr).sum(), "diverged")) if n]
    if ok.size == 0:
        return "; ".join(notes) or "-"
    s = f"{ok.mean():.{digits}g} ± {ok.std(ddof=1) if ok.size > 1 else 0.0:.2g}"
    return f"{s} ({'; '.join(notes)})" if notes else s


def compare(a: Sequence[float], b: Sequence[float], lower_is_better: bool) -> tuple[str, str]:
    """(``yes``/``no``/``tie``, detail) for "is a better than b" over seeds.

    Seeds that did not get there (inf) or diverged (NaN) count as the worst outcome: fewer of them wins
    outright; otherwise the means of the finite values decide, flagged "within seed noise" when they
    differ by less than one pooled standard deviation.
    """
    def key(vals):
        arr = np.asarray(vals, dtype=float)
        arr = np.where(np.isnan(arr), np.inf if lower_is_better else -np.inf, arr)
        bad = int((~np.isfinite(arr)).sum())
        fin = arr[np.isfinite(arr)]
        return bad, (float(fin.mean()) if fin.size else math.nan), (float(fin.std(ddof=1)) if fin.size > 1 else 0.0)
    (bad_a, ma, sa), (bad_b, mb, sb) = key(a), key(b)
    if bad_a != bad_b:
        detail = f"{len(a) - bad_a}/{len(a)} vs {len(b) - bad_b}/{len(b)} seeds got there"
        return ("yes" if bad_a < bad_b else "no"), detail
    if math.isnan(ma) or math.isnan(mb):
        return "tie", "neither got there"
    if ma == mb:
        return "tie", f"{ma:.4g} vs {mb:.4g}"
    better = (ma < mb) if lower_is_better else (ma > mb)
    noise = " (within seed noise: difference < 1 pooled std)" if abs(ma - mb) < math.sqrt((sa ** 2 + sb ** 2) / 2) \
        else ""
    return ("yes" if better else "no"), f"{ma:.4g} vs {mb:.4g}{noise}"


def paired_difference(a: Sequence[float], b: Sequence[float], scale: float = 1.0, unit: str = "",
                      subject: str = "") -> str:
    """Mean of the per-seed differences ``a - b`` (times ``scale``), with how many seeds a wins, ties and loses
    and the standard deviation of the difference; ``subject`` names a in the counts, e.g.
    ``paired_difference(ens, single, 100, " points", subject="ensemble")`` gives
    ``+0.96 points (ensemble better / tied / worse on 5 / 0 / 0 of 5 seeds; std of the difference 0.48)``."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    wins, ties = int((d * scale > 0).sum()), int((d * scale == 0).sum())
    # the mean and std are scaled after they are taken (not the differences before), as the reports always did
    mean = np.nanmean(d) * scale
    std = np.nanstd(d, ddof=1) * abs(scale) if len(d) > 1 else 0.0
    who = f"{subject} " if subject else ""
    return (f"{mean:+.2f}{unit} ({who}better / tied / worse on {wins} / {ties} / {len(d) - wins - ties} "
            f"of {len(d)} seeds; std of the difference {std:.2f})")


def smooth(row: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` steps (an expanding mean for the first ones); a NaN tail (a run that
    diverged and stopped) stays NaN."""
    row = np.asarray(row, dtype=float)
    out = np.full_like(row, np.nan)
    n = int(np.isfinite(row).cumprod().sum())  # length of the finite prefix
    if n:
        c = np.concatenate([[0.0], np.cumsum(row[:n])])
        idx = np.arange(1, n + 1)
        lo = np.maximum(idx - window, 0)
        out[:n] = (c[idx] - c[lo]) / (idx - lo)
    return out
