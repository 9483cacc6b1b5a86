"""Markdown tables and seed statistics."""
from __future__ import annotations

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


def mean_std(values: Sequence[float], digits: int = 4) -> str:
    """``mean ± std`` over seeds (std with ddof=1; NaNs from diverged seeds are dropped and counted)."""
    arr = np.asarray(values, dtype=float)
    ok = arr[np.isfinite(arr)]
    if ok.size == 0:
        return "diverged"
    s = f"{ok.mean():.{digits}g} ± {ok.std(ddof=1) if ok.size > 1 else 0.0:.2g}"
    return s if ok.size == arr.size else f"{s} ({arr.size - ok.size} diverged)"
