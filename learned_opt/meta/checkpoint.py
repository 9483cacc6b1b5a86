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
     ... anything else the trainer adds (meta-optimizer state, RNG states, inner slots),
     "sha256": "<content hash of everything above>"}

Integrity: :func:`content_hash` is a SHA-256 over the whole payload (every tensor's dtype,
shape and bytes, every other value exactly), stored in the file and verified by
:func:`load_checkpoint`, so a byte flipped anywhere (tensor data included, which ``torch.load``
alone does not notice) is reported as corruption. Files written before the hash existed
(``pretrained/``) load as legacy, unverified; a hash that is present and does not match is
always an error. Every entry is type-checked on load, so a damaged or hand-edited file gives
a :class:`CheckpointError` naming the entry, never an ``AttributeError`` deep inside.
"""
from __future__ import annotations

import hashlib
import json
import math
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


HASH_KEY = "sha256"
# What a checkpoint needs beyond the meta-parameters for meta-training to continue from it.
TRAINING_STATE = ("meta_opt", "torch_rng", "counters")


def content_hash(payload: dict) -> str:
    """SHA-256 of everything in ``payload`` but its own hash entry (see the module docstring)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != HASH_KEY})
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k, v in sorted(obj.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0]))):
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, str):
        b = obj.encode("utf-8")
        h.update(f"S{len(b)}:".encode() + b)
    elif isinstance(obj, bool) or obj is None:
        h.update(f"B{obj}:".encode())
    elif isinstance(obj, int):
        h.update(f"I{obj}:".encode())
    elif isinstance(obj, float):
        h.update(f"F{obj.hex() if math.isfinite(obj) else obj}:".encode())
    else:
        h.update(f"O{type(obj).__name__}{obj!r}:".encode())


def save_checkpoint(path: str | Path, rule: nn.Module, meta_step: int, config: dict, **extra: Any) -> Path:
    """Write a checkpoint atomically (temp file + rename); an existing file is only replaced whole."""
    payload = {"format": FORMAT, "rule": {"name": rule_name(rule), "config": rule.config()},
               "meta_params": {k: v.detach().cpu() for k, v in rule.state_dict().items()},
               "meta_step": int(meta_step), "config": json.dumps(config), **extra}
    payload[HASH_KEY] = content_hash(payload)
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
    _check_entries(ckpt, path)
    if HASH_KEY in ckpt:  # absent: written before checkpoints carried a hash (legacy, unverified)
        found = content_hash(ckpt)
        if ckpt[HASH_KEY] != found:
            raise CheckpointError(f"checkpoint {path} is corrupt: its content does not match the hash it was "
                                  f"written with (sha256 {str(ckpt[HASH_KEY])[:16]}... recorded, {found[:16]}... "
                                  f"now); the file was damaged after it was written")
    return ckpt


def _check_entries(ckpt: dict, path: Path) -> None:
    """Each entry has the type the loaders rely on; otherwise a CheckpointError naming it."""
    def bad(key: str, expected: str) -> CheckpointError:
        value = ckpt[key]
        return CheckpointError(f"checkpoint {path}: entry {key!r} is a {type(value).__name__} "
                               f"({str(value)[:60]!r}); expected {expected}")
    rule = ckpt["rule"]
    if not (isinstance(rule, dict) and isinstance(rule.get("name"), str) and isinstance(rule.get("config"), dict)):
        raise bad("rule", "a mapping {name: str, config: mapping}")
    params = ckpt["meta_params"]
    if not (isinstance(params, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in params.items())):
        raise bad("meta_params", "a mapping of names to tensors")
    if isinstance(ckpt["meta_step"], bool) or not isinstance(ckpt["meta_step"], int) or ckpt["meta_step"] < 0:
        raise bad("meta_step", "an integer >= 0")
    try:
        ok = isinstance(ckpt["config"], str) and isinstance(json.loads(ckpt["config"]), dict)
    except ValueError:
        ok = False
    if not ok:
        raise bad("config", "the run's config as a JSON object")
    if HASH_KEY in ckpt and not isinstance(ckpt[HASH_KEY], str):
        raise bad(HASH_KEY, "a hex string")


def check_resumable(ckpt: dict, path: str | Path) -> None:
    """Raise unless ``ckpt`` holds a meta-training state to continue (not only meta-parameters)."""
    missing = [k for k in TRAINING_STATE if k not in ckpt]
    if "estimator" not in ckpt and "estimator_ranks" not in ckpt:
        missing.append("estimator")
    if missing:
        raise CheckpointError(f"checkpoint {path} cannot be resumed: it holds the meta-parameters only (like a run's "
                              f"best.pt), not the training state (it lacks {', '.join(missing)}). Resume from the "
                              f"run's checkpoint.pt; load this file with learned_opt.load to use the optimizer")
    for key, kind in (("meta_opt", dict), ("counters", dict), ("torch_rng", torch.Tensor)):
        if not isinstance(ckpt[key], kind):
            raise CheckpointError(f"checkpoint {path}: entry {key!r} is a {type(ckpt[key]).__name__}; "
                                  f"expected a {kind.__name__}")


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


def derive_checkpoint(source: str | Path, dest: str | Path, set_config: dict[str, Any] | None = None,
                      shift: dict[str, float] | None = None) -> Path:
    """Write ``dest``: the optimizer of ``source`` (a file or a short name) with some constructor options
    changed (``set_config``, e.g. ``{"hypergradient_shrink": 2.0}``) and some scalar meta-parameters moved
    by a constant (``shift``, e.g. ``{"log_scale": 1.0}``: steps ``e`` times larger). Every other
    meta-parameter is copied; one that the changed options add keeps its initial value. The result
    records where it came from (``derived_from``: the source file, its hash, the changes) and is a
    meta-parameters-only checkpoint, like a run's ``best.pt``. A clear :class:`CheckpointError` or
    ``ValueError`` for an unknown option, a parameter that does not exist or is not a scalar, or
    options the source's weights do not fit."""
    set_config, shift = dict(set_config or {}), {k: float(v) for k, v in (shift or {}).items()}
    path = resolve_pretrained(source)
    ckpt = load_checkpoint(path)
    name = ckpt["rule"]["name"]
    config = {**ckpt["rule"]["config"], **set_config}
    try:
        rule = make_learned_rule(name, **config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"cannot rebuild {name!r} from {path} with {set_config}: {e}") from e
    state = rule.state_dict()
    unexpected = sorted(set(ckpt["meta_params"]) - set(state))
    mismatched = sorted(k for k, v in ckpt["meta_params"].items() if k in state and state[k].shape != v.shape)
    if unexpected or mismatched:
        raise CheckpointError(f"{path}'s meta-parameters do not fit {name!r} with {set_config}: "
                              f"not in the new rule {unexpected}, other shape {mismatched}")
    state.update(ckpt["meta_params"])
    for key, delta in shift.items():
        if key not in state:
            raise ValueError(f"shift: {key!r} is not a meta-parameter of {name!r}; its scalars: "
                             f"{', '.join(k for k, v in state.items() if v.numel() == 1)}")
        if state[key].numel() != 1:
            raise ValueError(f"shift: {key!r} has shape {tuple(state[key].shape)}; only scalars can be shifted")
        state[key] = state[key] + delta
    rule.load_state_dict(state)
    origin = {"source": str(source), "source_sha256": str(ckpt.get(HASH_KEY, "legacy")),
              "set": {k: v for k, v in set_config.items()}, "shift": shift}
    return save_checkpoint(dest, rule, ckpt["meta_step"], json.loads(ckpt["config"]), derived_from=origin)


PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
# short names of the shipped optimizers; any other file in pretrained/ is found by its stem too
PRETRAINED_ALIASES = {"celo": "celo_radial", "general": "celo_radial"}


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
