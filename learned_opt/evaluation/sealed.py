"""Sealed records: JSON files that carry a SHA-256 of their content, so a damaged one is detected and named.

Evaluation cells and tuning records are written with :func:`write_sealed` and read back with
:func:`read_sealed` (by the evaluation, by :func:`learned_opt.evaluation.results.read_cells` and by
experiments that read an evaluation's tuning records).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from ..utils import atomic_write_text


def _digest(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_sealed(record: dict, path: Path, indent: int | None = None) -> None:
    """Write ``record`` as JSON with a ``sha256`` of its content, atomically."""
    atomic_write_text(json.dumps({**record, "sha256": _digest(record)}, indent=indent), path)


def read_sealed(path: Path, expect: dict | None = None) -> dict | None:
    """The record in ``path``; None (with a warning naming the file and why) when it is damaged: not JSON,
    not a mapping, a hash that does not match, or entries other than ``expect``. Records written
    before they carried a hash are taken as they are. The hash is not part of the record returned."""
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError(f"a {type(record).__name__}, not a mapping")
        if "sha256" in record and record["sha256"] != _digest(record):
            raise ValueError("its content does not match its hash")
        for k, v in (expect or {}).items():
            if record.get(k) != v:
                raise ValueError(f"{k}={record.get(k)!r}, expected {v!r}")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        warnings.warn(f"{path} is damaged ({e}); computing it again", RuntimeWarning, stacklevel=2)
        return None
    record.pop("sha256", None)
    return record
