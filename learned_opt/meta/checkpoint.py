"""Checkpoints: tensors plus a JSON-able config, written atomically, read with ``weights_only=True``.

A checkpoint names the rule's registry name and constructor config, so
:func:`load_rule` (exported as ``learned_opt.load``) rebuilds the trained
optimizer from the file alone.

Layout (a plain dict; every leaf a tensor, number, string, list or dict)::

    {"format": "learned-opt/1",
     "rule": {"name": "mlp", "config": {...}},   # make_learned_rule(name, **config)
     "meta_params": rule.state_dict(),
     "meta_step": int,
     "config": "<the run's config as JSON>",
     ... anything else the trainer adds (meta-optimizer state, RNG states, inner slots)}
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..optimizers import LEARNED_RULES, make_learned_rule
from ..utils import atomic_save

FORMAT = "learned-opt/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit what it is loaded into."""


def rule_name(rule: nn.Module) -> str:
    for name, cls in LEARNED_RULES.items():
        if type(rule) is cls:
            return name
    raise CheckpointError(f"{type(rule).__name__} is not a registered learned rule; "
                          f"registered: {', '.join(LEARNED_RULES)}")


def save_checkpoint(path: str | Path, rule: nn.Module, meta_step: int, config: dict, **extra: Any) -> Path:
    """Write a checkpoint atomically (temp file + rename); an existing file is only replaced whole."""
    payload = {"format": FORMAT, "rule": {"name": rule_name(rule), "config": rule.config()},
               "meta_params": {k: v.detach().cpu() for k, v in rule.state_dict().items()},
               "meta_step": int(meta_step), "config": json.dumps(config), **extra}
    return atomic_save(payload, path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint with ``weights_only=True``; a clear :class:`CheckpointError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (no such file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a learned-opt checkpoint "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError for non-weights content
        raise CheckpointError(f"checkpoint {path} could not be read safely with weights_only=True "
                              f"({type(e).__name__})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a learned-opt checkpoint: format {found!r}, expected {FORMAT!r}")
    for key in ("rule", "meta_params", "meta_step", "config"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} lacks the entry {key!r}")
    return ckpt


def rule_from_checkpoint(ckpt: dict, path: str | Path = "<checkpoint>") -> nn.Module:
    spec = ckpt["rule"]
    try:
        rule = make_learned_rule(spec["name"], **spec["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: cannot rebuild rule {spec.get('name')!r}: {e}") from e
    try:
        rule.load_state_dict(ckpt["meta_params"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: meta-parameters do not fit {type(rule).__name__}"
                              f"({spec['config']}): {str(e).splitlines()[0]}") from e
    return rule


def load_rule(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained learned optimizer from its checkpoint alone.

    ``path``: a checkpoint file, or the short name of a shipped optimizer (``"celo"`` for the
    general-purpose one; see :func:`resolve_pretrained`).

    The result is an :class:`~baselines.base.UpdateRule` (use it in ``unroll``) and works
    with :class:`baselines.RuleOptimizer` on any ``nn.Module``. Its meta-parameters are
    frozen (``requires_grad=False``); call ``.requires_grad_()`` to meta-train further.
    """
    path = resolve_pretrained(path)
    rule = rule_from_checkpoint(load_checkpoint(path), path).to(device)
    return rule.requires_grad_(False)


PRETRAINED_DIR = Path(__file__).resolve().parents[2] / "pretrained"
# short names of the shipped optimizers; any other file in pretrained/ is found by its stem too
PRETRAINED_ALIASES = {"celo": "celo_general", "general": "celo_general"}


def resolve_pretrained(path: str | Path) -> Path:
    """``path`` itself when it names a file; otherwise a short name of a shipped optimizer
    (``"celo"``, or the stem of any file in ``pretrained/``, e.g. ``"lstm_l2l_mnist"``)."""
    p = Path(path)
    if p.is_file() or len(p.parts) != 1 or p.suffix:
        return p
    stem = PRETRAINED_ALIASES.get(str(path), str(path))
    candidate = PRETRAINED_DIR / f"{stem}.pt"
    if candidate.is_file():
        return candidate
    known = sorted({*PRETRAINED_ALIASES, *(f.stem for f in PRETRAINED_DIR.glob("*.pt"))})
    raise CheckpointError(f"{path!r} is neither a checkpoint file nor the short name of a shipped optimizer; "
                          f"short names: {', '.join(known) or '(none: no pretrained/ folder here)'}")
