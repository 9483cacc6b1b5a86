"""What every entry point under ``experiments/`` shares: torch's CPU threads set before any work, and input
errors reported as one line (no traceback, exit status 2) with no run directory left behind.

A Hydra entry point::

    @hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
    @hydra_entry("evaluate.py")
    def main(cfg): ...

reads ``threads`` (``configs/shared/run.yaml``: 1 by default, null for torch's own choice) and removes it from
``cfg`` before ``main`` sees it, so no other part of the code base reads it. An argparse entry point calls
:func:`add_threads` on its parser and :func:`set_threads` with the parsed value, inside
``with input_errors("name.py"):``.
"""
from __future__ import annotations

import functools
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from .runlock import RunLocked
from .schema import ConfigError

# What a user's input can cause: a value outside what is allowed (ConfigError is a ValueError), a missing or
# existing file, a checkpoint that cannot be read, a run directory held by another process, a config that does
# not resolve. Anything else is a bug and keeps its traceback.
_INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, RunLocked,
                                                  OmegaConfBaseException, HydraException)


def input_error_types() -> tuple[type[BaseException], ...]:
    from .optimizers.files import CheckpointError
    return (*_INPUT_ERRORS, CheckpointError)


def set_threads(threads: Any) -> None:
    """``torch.set_num_threads(threads)``; None leaves torch's default. Checked first: an integer >= 1.

    One thread is the default of every entry point: two intra-op threads on a CPU whose two cores are busy
    with other jobs make every step slower, not faster."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads={threads!r} is not allowed; allowed: an integer >= 1, or null (torch's default)")
    torch.set_num_threads(threads)


def add_threads(parser: Any) -> None:
    """The ``--threads`` option of an argparse entry point (default 1)."""
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")


def only_hydra_files(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds nothing but what Hydra writes when a job starts (``.hydra/`` and its log)."""
    return run_dir.is_dir() and all(p.name == ".hydra" or (p.is_file() and p.suffix == ".log")
                                    for p in run_dir.iterdir())


def remove_run_dir(run_dir: Path) -> None:
    """Remove ``run_dir`` and then each folder above it that is left empty (``runs/meta_train/<rule>_<family>/``),
    up to the working directory."""
    shutil.rmtree(run_dir, ignore_errors=True)
    cwd = Path.cwd().resolve()
    for parent in run_dir.resolve().parents:
        if parent == cwd or cwd not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()


@contextmanager
def input_errors(name: str, run_dir: Path | None = None) -> Iterator[None]:
    """Report an input error raised inside as ``<name>: error: <message>`` on stderr and exit with status 2;
    ``run_dir``, when it holds only what Hydra wrote at the start, is removed first (a resumed or finished
    run's directory holds more and is never touched)."""
    try:
        yield
    except input_error_types() as e:
        if run_dir is not None and only_hydra_files(run_dir):
            remove_run_dir(run_dir)
        print(f"{name}: error: {e}", file=sys.stderr)
        sys.exit(2)


def hydra_entry(name: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Decorate a Hydra task function (below ``@hydra.main``): threads first, then the function, its input
    errors reported by :func:`input_errors` with the job's run directory."""
    def wrap(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        @functools.wraps(fn)
        def run(cfg: Any) -> Any:
            from hydra.core.hydra_config import HydraConfig
            from omegaconf import open_dict
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            with input_errors(name, run_dir):
                with open_dict(cfg):
                    threads = cfg.pop("threads", 1)
                set_threads(threads)
                return fn(cfg)
        return run
    return wrap
