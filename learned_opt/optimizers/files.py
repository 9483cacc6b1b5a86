"""The rule file format: tensors plus a JSON-able config, written atomically, read with ``weights_only=True``.

A rule file names the rule's registry name and constructor config, so :func:`load_rule` (exported as
``learned_opt.load``) rebuilds the optimizer from the file alone. Layout (a plain dict; every leaf a
tensor, number, string, list or dict)::

    {"format": "learned-opt/1",
     "rule": {"name": "celo", "config": {...}},   # make_learned_rule(name, **config); "controlled" for a core
                                                  # with controllers: {"core": {...}, "controllers": [...], "lr"}
     "meta_params": rule.state_dict(),
     "meta_step": int,
     "config": "<the run's config as JSON>",
     ... anything else the writer adds (derived_from; a meta-training run adds its training state),
     "sha256": "<content hash of everything above>"}

Integrity: :func:`content_hash` is a SHA-256 over the whole payload (every tensor's dtype, shape and bytes,
every other value exactly), stored in the file and verified by :func:`load_checkpoint`, so a byte flipped
anywhere is reported as corruption. Files written before the hash existed load as legacy, unverified; a
hash that is present and does not match is always an error. Every entry is type-checked on load.

Files written before the learned core and its controllers were separate classes (``celo`` with
``hypergradient``, ``radial_gain``, ... in its config, e.g. the shipped ``celo_hd``, ``celo_backoff``,
``celo_radial``) are read through :func:`upgrade`: the same rule, as a core with controllers, giving the same
steps (``tests/test_shipped_steps.py``). Options that only losing candidates used were removed; a file that
sets one names the commit that still has them.

Short names: :func:`resolve_pretrained` finds the files shipped in ``learned_opt/pretrained/`` (package data)
by their stem or an alias (``"celo"``, ``"general"``: the recommended general-purpose optimizer).
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

from ..utils import atomic_save
from . import LEARNED_RULES, make_learned_rule

__all__ = ["CheckpointError", "FORMAT", "HASH_KEY", "PRETRAINED_ALIASES", "PRETRAINED_DIR", "content_hash",
           "derive_checkpoint", "load_checkpoint", "load_rule", "resolve_pretrained", "rule_from_checkpoint",
           "rule_name", "save_checkpoint", "upgrade"]

FORMAT = "learned-opt/1"
HASH_KEY = "sha256"
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
# short names of the shipped optimizers; any other file in learned_opt/pretrained/ is found by its stem too
PRETRAINED_ALIASES = {"celo": "celo_radial", "general": "celo_radial"}


class CheckpointError(RuntimeError):
    """A rule file or checkpoint is missing, corrupt, or does not fit what it is loaded into."""


def rule_name(rule: nn.Module) -> str:
    for name, cls in LEARNED_RULES.items():
        if type(rule) is cls:
            return name
    raise CheckpointError(f"{type(rule).__name__} is not a registered learned rule; "
                          f"registered: {', '.join(LEARNED_RULES)}")


# --------------------------------------------------------------------------- hashing
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


# --------------------------------------------------------------------------- writing and reading
def save_checkpoint(path: str | Path, rule: nn.Module, meta_step: int = 0, config: dict | None = None,
                    **extra: Any) -> Path:
    """Write a rule file atomically (temp file + rename); an existing file is only replaced whole."""
    payload = {"format": FORMAT, "rule": {"name": rule_name(rule), "config": rule.config()},
               "meta_params": {k: v.detach().cpu() for k, v in rule.state_dict().items()},
               "meta_step": int(meta_step), "config": json.dumps(config or {}), **extra}
    payload[HASH_KEY] = content_hash(payload)
    return atomic_save(payload, path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a rule file with ``weights_only=True``; a clear :class:`CheckpointError` otherwise."""
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


# --------------------------------------------------------------------------- files of the single-class rule
# The commit whose ``celo`` rule still had the options removed when it was split into a core and controllers.
BEFORE_SPLIT = "c6c1de9"
# option of the single-class ``celo`` -> (controller, its option); hypergradient_shrink also set the radial's
LEGACY_CONTROLLER_OPTIONS = {
    "hypergradient": ("hypergradient", "gain"), "hypergradient_range": ("hypergradient", "range"),
    "hypergradient_momentum": ("hypergradient", "momentum"), "hypergradient_shrink": ("hypergradient", "shrink"),
    "hypergradient_floor": ("hypergradient", "floor"), "radial_gain": ("radial", "gain"),
    "radial_range": ("radial", "range"), "snr_step": ("snr", None)}
LEGACY_OFF = {"hypergradient": 0.0, "radial_gain": 0.0, "snr_step": False}
# options only losing candidates used, removed from the core: their value in a rule that did not use them
REMOVED_OPTIONS = {"magnitude_log_range": None, "bias_rule": "mlp", "relative_step": False, "orthogonalize": False}
LEGACY_PARAMS = {"log_hyper_gain": "controllers.hypergradient.log_gain"}   # other core names get "core."


def is_legacy(name: str, config: dict) -> bool:
    """Whether a file's rule is the single-class ``celo`` (controller options in the core's config)."""
    return name == "celo" and any(k in config for k in (*LEGACY_CONTROLLER_OPTIONS, *REMOVED_OPTIONS))


def upgrade(name: str, config: dict, meta_params: dict[str, torch.Tensor] | None = None,
            where: str = "checkpoint") -> tuple[str, dict, dict[str, torch.Tensor] | None]:
    """A single-class ``celo`` file's (name, config, meta-parameters) as the core with its controllers (the
    same steps); any other file's unchanged. A removed option at a value that changes the rule is a
    :class:`CheckpointError` naming the commit that has it."""
    if not is_legacy(name, config):
        return name, config, meta_params
    used = {k: config[k] for k, off in REMOVED_OPTIONS.items() if k in config and config[k] != off}
    if used:
        raise CheckpointError(f"{where}: the rule sets {used}, options the celo core no longer has (only "
                              f"candidates that lost used them; their results stay in the reports). Load this file "
                              f"with learned-opt at commit {BEFORE_SPLIT}")
    core = {k: v for k, v in config.items() if k not in LEGACY_CONTROLLER_OPTIONS and k not in REMOVED_OPTIONS}
    on = [c for c in ("snr", "radial", "hypergradient")            # the order the single class applied them in
          if any(config.get(k, LEGACY_OFF[k]) != LEGACY_OFF[k] for k in LEGACY_OFF
                 if LEGACY_CONTROLLER_OPTIONS[k][0] == c)]
    controllers = []
    for c in on:
        opts = {opt: config[k] for k, (ctrl, opt) in LEGACY_CONTROLLER_OPTIONS.items()
                if ctrl == c and opt is not None and k in config}
        if c == "hypergradient":
            opts["learn_gain"] = bool(config.get("learn_scale", True))
        if c == "radial":
            opts["shrink"] = config.get("hypergradient_shrink", 1.0)   # the single class shared one shrink
        controllers.append({"name": c, **opts})
    if not controllers:
        return "celo", core, meta_params
    new_config = {"core": {"kind": "learned", "name": "celo", "config": core}, "controllers": controllers, "lr": 1.0}
    if meta_params is None:
        return "controlled", new_config, None
    renamed = {LEGACY_PARAMS.get(k, f"core.{k}"): v for k, v in meta_params.items()}
    return "controlled", new_config, renamed


def rule_from_checkpoint(ckpt: dict, path: str | Path = "<checkpoint>") -> nn.Module:
    spec = ckpt["rule"]
    name, config, meta_params = upgrade(spec["name"], spec["config"], ckpt["meta_params"], f"checkpoint {path}")
    try:
        rule = make_learned_rule(name, **config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: cannot rebuild rule {spec.get('name')!r}: {e}") from e
    state = rule.state_dict()
    if name != spec["name"]:   # upgraded: a gain the single class kept as a buffer is a fixed number now
        meta_params = {k: v for k, v in meta_params.items() if k in state}
    try:
        rule.load_state_dict(meta_params)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: meta-parameters do not fit {type(rule).__name__}"
                              f"({spec['config']}): {str(e).splitlines()[0]}") from e
    return rule


def load_rule(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained learned optimizer from its file alone.

    ``path``: a rule file, or the short name of a shipped optimizer (``"celo"`` for the general-purpose one;
    see :func:`resolve_pretrained`). The result is an :class:`~baselines.base.UpdateRule` (use it in
    ``unroll``) and works with :class:`baselines.RuleOptimizer` on any ``nn.Module``. Its meta-parameters
    are frozen (``requires_grad=False``); call ``.requires_grad_()`` to meta-train further.
    """
    path = resolve_pretrained(path)
    rule = rule_from_checkpoint(load_checkpoint(path), path).to(device)
    return rule.requires_grad_(False)


# --------------------------------------------------------------------------- deriving a rule from another
def _set(config: dict, name: str, key: str, value: Any) -> tuple[str, dict]:
    """``config`` of rule ``name`` with ``key`` set: ``core.<option>`` (or a bare core option) on the core,
    ``<controller>.<option>`` on that controller (added with its defaults if the rule lacks it)."""
    from .controllers import CONTROLLERS
    head, _, opt = key.partition(".")
    if head in CONTROLLERS and opt:
        if name != "controlled":
            config, name = {"core": {"kind": "learned", "name": name, "config": config}, "controllers": [],
                            "lr": 1.0}, "controlled"
        controllers = [dict(c) for c in config["controllers"]]
        mine = [c for c in controllers if c["name"] == head]
        if mine:
            mine[0][opt] = value
        else:   # a new controller goes where the canonical order puts it
            controllers.append({"name": head, opt: value})
            controllers.sort(key=lambda c: list(CONTROLLERS).index(c["name"]))
        return name, {**config, "controllers": controllers}
    opt = key[len("core."):] if key.startswith("core.") else key
    if name == "controlled":
        if opt == "lr" and not key.startswith("core."):
            return name, {**config, "lr": value}
        core = dict(config["core"])
        core["config"] = {**core["config"], opt: value}
        return name, {**config, "core": core}
    return name, {**config, opt: value}


def derive_checkpoint(source: str | Path, dest: str | Path, set_config: dict[str, Any] | None = None,
                      shift: dict[str, float] | None = None, reset: list[str] | tuple[str, ...] = (),
                      seed: int = 0) -> Path:
    """Write ``dest``: the optimizer of ``source`` (a file or a short name) with some options changed, some
    scalar meta-parameters moved and some meta-parameters reset to their initial values.

    ``set_config``: ``{"<controller>.<option>": value}`` (e.g. ``{"radial.gain": 0.1}``: adds the radial
    controller if the rule has none) or ``{"core.<option>": value}``; a single-class file's own option
    names (``{"hypergradient_shrink": 2}``) apply to it as they did before the split. ``shift``: scalar
    meta-parameters moved by a constant (``{"core.log_scale": 1.0}``: steps ``e`` times larger).
    ``reset``: meta-parameter name prefixes (``["core.layers", "core.skip"]``) that take the values of the
    rule built afresh with ``torch.manual_seed(seed)`` (the core at its initialisation). Every other
    meta-parameter is copied; one that the changed options add keeps its initial value. The result records
    where it came from (``derived_from``: the source file, its hash, the changes) and is a meta-parameters-
    only file, like a run's ``best.pt``. A clear :class:`CheckpointError` or ``ValueError`` for an unknown
    option, a parameter that does not exist or is not a scalar, or options the source's weights do not fit."""
    set_config, shift = dict(set_config or {}), {k: float(v) for k, v in (shift or {}).items()}
    requested = {"set": dict(set_config), "shift": dict(shift)}
    path = resolve_pretrained(source)
    ckpt = load_checkpoint(path)
    name, config, params = ckpt["rule"]["name"], dict(ckpt["rule"]["config"]), dict(ckpt["meta_params"])
    if is_legacy(name, config):   # its own option names first, as before the split
        own = {k: v for k, v in set_config.items() if k in config or k in LEGACY_CONTROLLER_OPTIONS}
        config = {**config, **own}
        set_config = {k: v for k, v in set_config.items() if k not in own}
        shift = {(f"core.{k}" if k in params and k not in LEGACY_PARAMS else LEGACY_PARAMS.get(k, k)): v
                 for k, v in shift.items()}
    name, config, params = upgrade(name, config, params, f"{path} with {set_config}")
    for key, value in set_config.items():
        name, config = _set(config, name, key, value)
        if name == "controlled" and not any(k.startswith("core.") for k in params):
            params = {f"core.{k}": v for k, v in params.items()}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            rule = make_learned_rule(name, **config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"cannot rebuild {name!r} from {path} with {set_config}: {e}") from e
    state = rule.state_dict()
    unexpected = sorted(set(params) - set(state))
    mismatched = sorted(k for k, v in params.items() if k in state and state[k].shape != v.shape)
    if unexpected or mismatched:
        raise CheckpointError(f"{path}'s meta-parameters do not fit {name!r} with {set_config}: "
                              f"not in the new rule {unexpected}, other shape {mismatched}")
    for prefix in reset:
        hits = [k for k in params if k == prefix or k.startswith(prefix + ".")]
        if not hits:
            raise ValueError(f"reset: no meta-parameter of {name!r} starts with {prefix!r}; its meta-parameters: "
                             f"{', '.join(state)}")
        for k in hits:
            del params[k]
    state.update(params)
    for key, delta in shift.items():
        if key not in state:
            raise ValueError(f"shift: {key!r} is not a meta-parameter of {name!r}; its scalars: "
                             f"{', '.join(k for k, v in state.items() if v.numel() == 1)}")
        if state[key].numel() != 1:
            raise ValueError(f"shift: {key!r} has shape {tuple(state[key].shape)}; only scalars can be shifted")
        state[key] = state[key] + delta
    rule.load_state_dict(state)
    origin = {"source": str(source), "source_sha256": str(ckpt.get(HASH_KEY, "legacy")), **requested}
    if reset:
        origin.update(reset=list(reset), seed=int(seed))
    return save_checkpoint(dest, rule, ckpt["meta_step"], json.loads(ckpt["config"]), derived_from=origin)


def resolve_pretrained(path: str | Path) -> Path:
    """``path`` itself when it names a file; otherwise a short name of a shipped optimizer
    (``"celo"``, or the stem of any file in ``learned_opt/pretrained/``, e.g. ``"lstm_l2l_mnist"``)."""
    p = Path(path)
    if p.is_file() or len(p.parts) != 1 or p.suffix:
        return p
    stem = PRETRAINED_ALIASES.get(str(path), str(path))
    candidate = PRETRAINED_DIR / f"{stem}.pt"
    if candidate.is_file():
        return candidate
    known = sorted({*PRETRAINED_ALIASES, *(f.stem for f in PRETRAINED_DIR.glob("*.pt"))})
    raise CheckpointError(f"{path!r} is neither a checkpoint file nor the short name of a shipped optimizer; "
                          f"short names: {', '.join(known) or '(none: no learned_opt/pretrained/ folder here)'}")
