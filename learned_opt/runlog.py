"""Run logging: always a local JSONL file in the run directory, Weights & Biases on top.

``wandb.mode`` is ``offline`` by default (works with no account or network; upload
later with ``wandb sync RUN_DIR/wandb/offline-run-*``), ``online`` or ``disabled``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

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
        self._file = open(self.path, "a", encoding="utf-8")
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
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(_jsonable(metrics), step=step)

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
        self._file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish()


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
