"""Small shared helpers: devices, generators, atomic checkpoint writes."""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; falls back to CPU with a clear warning when CUDA is absent."""
    if not isinstance(name, str) or not (name == "cpu" or name.startswith("cuda")):
        raise ValueError(f"device={name!r} is not allowed; allowed: cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(f"device={name!r} was asked for but CUDA is not available here; running on CPU instead",
                      RuntimeWarning, stacklevel=2)
        return torch.device("cpu")
    return torch.device(name)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(int(seed))


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: str | Path, write: Callable[[Any], None], mode: str) -> Path:
    """Write through ``write(file)`` into a temporary file in the same folder, then rename it over
    ``path``: readers see the old file or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it owner-only; give it an ordinary file's mode
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` atomically (temporary file, then rename)."""
    return _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write a text file atomically (temporary file, then rename)."""
    return _atomic_write(path, lambda f: f.write(text), "w")
