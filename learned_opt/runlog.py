"""Run logging: always a local JSONL file in the run directory, Weights & Biases on top.

``wandb.mode`` is ``offline`` by default (works with no account or network; upload
later with ``wandb sync RUN_DIR/wandb/offline-run-*``), ``online`` or ``disabled``.

The JSONL file is line-atomic: each row is one ``write`` of a whole line, and a write that
fails part-way (a full disk) is cut back, so the file never keeps half a row. A file that
ends in half a row anyway (written by older code, or cut by the system) is repaired when it
is opened again: the partial last line is dropped. :func:`read_jsonl` reads such files, and
:func:`truncate_jsonl` keeps only the rows up to a step (what a resumed run replays is not
logged twice).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

WANDB_MODES = ("offline", "online", "disabled")


def _jsonable(value: Any) -> Any:
    """Plain JSON values: 1-element tensors become numbers, NaN and inf become null."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 2)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def check_wandb_config(cfg: dict | None) -> dict:
    cfg = dict(cfg or {})
    mode = cfg.get("mode", "offline")
    if mode not in WANDB_MODES:
        raise ValueError(f"wandb.mode={mode!r} is not allowed; allowed: {', '.join(WANDB_MODES)}")
    cfg["mode"] = mode
    return cfg


class RunLogger:
    """Metrics to ``<run_dir>/<name>.jsonl`` and, unless disabled, to one W&B run.

    Args:
        run_dir: where the JSONL file and the ``wandb/`` folder go.
        wandb_cfg: ``{"mode": ..., "project": ..., "entity": ...}``.
        name, group, tags, config, job_type: passed to ``wandb.init``.
        jsonl: file name of the local metrics log (appended to, so a resumed run keeps its history).
    """

    def __init__(self, run_dir: str | Path, wandb_cfg: dict | None = None, *, name: str | None = None,
                 group: str | None = None, tags: Iterable[str] = (), config: dict | None = None,
                 job_type: str | None = None, jsonl: str = "metrics.jsonl"):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / jsonl
        repair_jsonl(self.path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        cfg = check_wandb_config(wandb_cfg)
        self.wandb_run = None
        if cfg["mode"] != "disabled":
            import wandb
            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb_run = wandb.init(
                mode=cfg["mode"], project=cfg.get("project", "learned-opt"), entity=cfg.get("entity"),
                dir=str(self.run_dir), name=name, group=group, tags=list(tags), job_type=job_type,
                config=_jsonable(config or {}), reinit="create_new")

    @property
    def wandb_dir(self) -> Path | None:
        """The W&B run folder (``.../wandb/offline-run-...``), or None when W&B is disabled."""
        return Path(self.wandb_run.dir).parent if self.wandb_run is not None else None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = _jsonable(metrics)
        if step is not None:
            row = {"step": step, **row}
        append_line(self._fd, self.path, json.dumps(row))
        if self.wandb_run is not None:
            self.wandb_run.log(_jsonable(metrics), step=step)

    def log_medians(self, curves: Mapping[str, Sequence[Sequence[float]]], *,
                    x: Mapping[str, Sequence[int]] | None = None, offset: int = 0,
                    step_key: str | None = None) -> None:
        """Log a history of medians over seeds: one row per position, each key holding the median of the
        seeds' curves there (``curves[key]`` is one curve per seed; ragged curves, e.g. runs that stopped
        early, count where they have a value).

        ``x[key]`` gives the positions of ``key``'s entries (default ``0, 1, 2, ...``); rows go out in
        order of position at W&B step ``offset + position``, with the position itself under ``step_key``
        when given (a history that follows another one in the same run needs the offset: W&B steps must
        increase).
        """
        rows: dict[int, dict[str, float]] = {}
        for key, per_seed in curves.items():
            length = max((len(c) for c in per_seed), default=0)
            positions = list(x[key]) if x is not None and key in x else list(range(length))
            for i, pos in enumerate(positions):
                vals = [float(c[i]) for c in per_seed if i < len(c)]
                if vals:
                    rows.setdefault(int(pos), {})[key] = float(np.median(vals))
        for pos in sorted(rows):
            self.log(({step_key: pos} if step_key else {}) | rows[pos], step=offset + pos)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            for k, v in _jsonable(metrics).items():
                self.wandb_run.summary[k] = v

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.wandb_run is not None:
            import wandb
            self.wandb_run.log({key: wandb.Table(columns=columns, data=_jsonable(rows))})

    def image(self, key: str, path: str | Path) -> None:
        if self.wandb_run is not None:
            import wandb
            self.wandb_run.log({key: wandb.Image(str(path))})

    def finish(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish()


def _write(fd: int, data: bytes) -> int:
    return os.write(fd, data)


def append_line(fd: int, path: Path, line: str) -> None:
    """Append ``line`` and a newline to the file open (``O_APPEND``) at ``fd``, whole or not at all: after a
    failed or short write the file is cut back to its previous end and the error is raised."""
    data = (line + "\n").encode("utf-8")
    start = os.fstat(fd).st_size
    done = 0
    try:
        while done < len(data):
            n = _write(fd, data[done:])
            if n <= 0:
                raise OSError(f"short write to {path}")
            done += n
    except OSError as e:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass  # the next open repairs the partial line
        raise OSError(e.errno, f"could not append a row to {path} ({e.strerror or e}); the file was left "
                               f"as it was before this row") from e


def repair_jsonl(path: str | Path) -> None:
    """Drop a partial last line (one without its newline that is not JSON) from ``path``, if there is one."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    try:
        json.loads(data[keep:])
    except ValueError:
        warnings.warn(f"{path}: dropped a partial last line ({len(data) - keep} bytes, an interrupted write)",
                      RuntimeWarning, stacklevel=3)
        with open(path, "r+b") as f:
            f.truncate(keep)
        return
    with open(path, "ab") as f:  # a whole row that only lacks its newline
        f.write(b"\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSONL file; a line that is not JSON (a damaged row) is skipped with a warning."""
    rows = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            warnings.warn(f"{path}: line {i + 1} is not valid JSON (a damaged row); skipped", RuntimeWarning,
                          stacklevel=2)
    return rows


def truncate_jsonl(path: str | Path, last_step: int) -> None:
    """Keep only the rows of ``path`` whose ``step`` is at most ``last_step`` (rewritten atomically; the
    kept lines are kept byte for byte). Damaged lines are dropped with a warning."""
    from .utils import atomic_write_text
    path = Path(path)
    if not path.exists():
        return
    kept, dropped, damaged = [], 0, []
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            damaged.append(i + 1)
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > last_step:
            dropped += 1
        else:
            kept.append(line)
    if damaged:
        warnings.warn(f"{path}: dropped damaged line(s) {damaged} (not valid JSON)", RuntimeWarning, stacklevel=2)
    if dropped or damaged:
        atomic_write_text("".join(line + "\n" for line in kept), path)


def read_wandb_run(run_dir: str | Path) -> list[dict]:
    """Records of an offline W&B run folder, read back with ``wandb leet inspect --json``."""
    import shutil
    import subprocess
    import sys
    exe = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))
    out = subprocess.run([exe, "leet", "inspect", "--json", str(run_dir)], check=True,
                         capture_output=True, text=True, timeout=120)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip().startswith("{")]


def read_metrics(run_dir: str | Path, jsonl: str = "metrics.jsonl") -> list[dict]:
    """The rows of a run's local metrics log, in order (a torn last line, from a kill mid-write, is skipped)."""
    path = Path(run_dir) / jsonl
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
