"""Shared parts of the benchmark scripts: timing, the common options, the machine line and the table file.

The scripts run as ``python experiments/benchmarks/bench_x.py``, so this folder is on ``sys.path``
and they import it as ``common``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, TypeVar

import torch

from learned_opt.entry import add_threads, input_errors, set_threads

Key = TypeVar("Key", bound=Hashable)

def sync(device: torch.device) -> None:
    """Wait for the work queued on a CUDA device, so that wall-clock times include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(cases: Mapping[Key, Callable[[], object]], rounds: int, device: torch.device, repeats: int = 1,
                warmup: bool = True) -> dict[Key, float]:
    """Median seconds per call of each case; the cases alternate within every round.

    Each round times ``repeats`` calls of every case in turn. With ``warmup``, every case is first
    called once untimed (the caller warms up otherwise).
    """
    if warmup:
        for fn in cases.values():
            fn()
        sync(device)
    samples: dict[Key, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for k, fn in cases.items():
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                sync(device)
                samples[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def parser(description: str, rounds_default: int, quick_help: str,
           out_help: str = "also write the table to OUT/table.md") -> argparse.ArgumentParser:
    """An argument parser with the shared options: --rounds, --device (CUDA when available), --quick,
    --threads and --out; a script adds its own and parses with ``parse_args``."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=rounds_default)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help=quick_help)
    add_threads(ap)
    ap.add_argument("--out", type=Path, help=out_help)
    return ap


def parse_args(ap: argparse.ArgumentParser, quick: Mapping[str, Any]) -> tuple[argparse.Namespace, torch.device]:
    """Parse the command line; with --quick, the values of ``quick`` replace the options of those names (a smoke
    run). Sets torch's CPU threads to --threads (default 1); returns the options and the device."""
    args = ap.parse_args()
    with input_errors(ap.prog):
        set_threads(args.threads)
    if args.quick:
        for name, value in quick.items():
            if not hasattr(args, name):
                raise ValueError(f"--quick sets {name!r}, which is not an option")
            setattr(args, name, value)
    return args, torch.device(args.device)


def machine_line(device: torch.device) -> str:
    """``Machine: <arch> with <n> cores, <t> threads, torch <version>, device <device>.``"""
    return (f"Machine: {platform.machine()} with {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, device {device}.")


def emit(lines: list[str], line: str) -> None:
    """Append ``line`` to the report and print it at once."""
    lines.append(line)
    print(line, flush=True)


def write_table(out: Path | None, lines: list[str]) -> None:
    """Write the lines to ``OUT/table.md`` when ``out`` is given."""
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text("\n".join(lines) + "\n")


def step_models() -> dict[str, torch.nn.Module]:
    """The two models an optimizer step is timed on: an MLP of ~1M parameters in 6 large tensors, and 200
    small tensors (where per-tensor overheads dominate), keyed by a description."""
    from torch import nn
    big = nn.Sequential(nn.Linear(1024, 768), nn.ReLU(), nn.Linear(768, 384), nn.ReLU(), nn.Linear(384, 10))
    small = nn.Sequential(*[nn.Linear(16, 16) for _ in range(100)])
    return {f"MLP {sum(p.numel() for p in big.parameters()) / 1e6:.2f}M params, "
            f"{len(list(big.parameters()))} tensors": big,
            f"{len(list(small.parameters()))} small tensors, "
            f"{sum(p.numel() for p in small.parameters()) / 1e3:.0f}k params": small}
