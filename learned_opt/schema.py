"""One validation idiom for every entry point: a config is checked against a schema before any work.

A schema is a dict ``key -> Field`` (nested dicts are sections). :func:`check` walks the config
once and raises :class:`ConfigError` (a ``ValueError``) naming the field, the value and what is
allowed, for a wrong type, a value out of range, a missing required key, or a key nothing reads
(with the closest allowed key as a hint)::

    SCHEMA = {"seed": Field(integer(0)), "meta": {"lr": Field(number(0, low_open=True))}}
    check(cfg, SCHEMA)

Groups whose options belong to a class chosen by name (a learned rule, a task family, a task, a
hand-crafted rule) are not listed here: :func:`check_call` checks them against the constructor's
own signature and then runs the constructor, which range-checks its arguments.
"""
from __future__ import annotations

import difflib
import inspect
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .runlog import WANDB_MODES

Checker = Callable[[str, Any], None]


class ConfigError(ValueError):
    """A config value or key is not allowed; the message names the field, the value and what is allowed."""


@dataclass(frozen=True)
class Field:
    """A config entry: its checker, and whether it must be present."""
    checker: Checker
    required: bool = False


# --------------------------------------------------------------------------- checkers
def integer(low: int | None = None, high: int | None = None) -> Checker:
    def check_int(path: str, value: Any) -> None:
        ok = isinstance(value, int) and not isinstance(value, bool) \
            and (low is None or value >= low) and (high is None or value <= high)
        if not ok:
            rng = (f" >= {low}" if high is None else f" in [{low}, {high}]") if low is not None else \
                (f" <= {high}" if high is not None else "")
            raise ConfigError(f"{path}={value!r} is not allowed; allowed: an integer{rng}")
    return check_int


def number(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False, high_open: bool = False,
           finite: bool = True) -> Checker:
    """A real number (an int is fine, a bool or a string is not) in the given interval; NaN never."""
    def check_number(path: str, value: Any) -> None:
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        v = float(value) if real else math.nan
        ok = real and not math.isnan(v) and (math.isfinite(v) or not finite) \
            and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        if not ok:
            lb = "(" if low_open or low == -math.inf else "["
            rb = ")" if high_open or high == math.inf else "]"
            what = "a finite number" if finite else "a number (not NaN)"
            raise ConfigError(f"{path}={value!r} is not allowed; allowed: {what} in {lb}{low}, {high}{rb}")
    return check_number


def boolean(path: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}={value!r} is not allowed; allowed: true or false")


def string(path: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{path}={value!r} is not allowed; allowed: a string")


def choice(*allowed: Any) -> Checker:
    def check_choice(path: str, value: Any) -> None:
        if isinstance(value, bool) or value not in allowed:
            raise ConfigError(f"{path}={value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")
    return check_choice


def optional(checker: Checker) -> Checker:
    """``checker``, or null."""
    def check_optional(path: str, value: Any) -> None:
        if value is not None:
            checker(path, value)
    return check_optional


def list_of(checker: Checker, *, nonempty: bool = False, distinct: bool = False) -> Checker:
    def check_list(path: str, value: Any) -> None:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={value!r} is not allowed; allowed: a list")
        if nonempty and not value:
            raise ConfigError(f"{path}=[] is not allowed; allowed: a non-empty list")
        for i, v in enumerate(value):
            checker(f"{path}[{i}]", v)
        if distinct and len(set(map(repr, value))) != len(value):
            raise ConfigError(f"{path}={value!r} is not allowed; allowed: distinct values")
    return check_list


def delegated(path: str, value: Any) -> None:
    """A group checked elsewhere, by the constructor of the class it names (see :func:`check_call`)."""


def device(path: str, value: Any) -> None:
    """``cpu``, ``cuda`` or ``cuda:N`` (a missing GPU is a warning at run time, not an error here)."""
    ok = isinstance(value, str) and (value in ("cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()))
    if not ok:
        raise ConfigError(f"{path}={value!r} is not allowed; allowed: cpu, cuda, cuda:N")


def section(schema: Mapping[str, Any]) -> Checker:
    """A nested mapping checked against ``schema`` (as a checker, e.g. inside :func:`optional`)."""
    def check_section(path: str, value: Any) -> None:
        check(value, schema, path)
    return check_section


# The ``wandb:`` block every entry point shares (read by learned_opt.runlog.RunLogger).
WANDB = {"mode": Field(choice(*WANDB_MODES)), "project": Field(string), "entity": Field(optional(string))}


# --------------------------------------------------------------------------- walking a config
def check(cfg: Any, schema: Mapping[str, Any], path: str = "") -> None:
    """Check ``cfg`` against ``schema``; see the module docstring."""
    where = path or "the config"
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where}={cfg!r} is not allowed; allowed: a mapping with keys {', '.join(schema)}")
    unknown = [k for k in cfg if k not in schema]
    if unknown:
        k = unknown[0]
        hint = difflib.get_close_matches(str(k), [str(s) for s in schema], n=1)
        raise ConfigError(f"{_join(path, k)}={cfg[k]!r}: unknown key (nothing reads it)"
                          + (f"; did you mean {_join(path, hint[0])}?" if hint else "")
                          + f" Allowed keys{' under ' + path if path else ''}: {', '.join(map(str, schema))}")
    for key, spec in schema.items():
        sub = _join(path, key)
        if isinstance(spec, Mapping):
            if key not in cfg:
                raise ConfigError(f"{sub} is missing; it needs the keys {', '.join(spec)}")
            check(cfg[key], spec, sub)
        elif key not in cfg:
            if spec.required:
                raise ConfigError(f"{sub} is missing (required)")
        else:
            spec.checker(sub, cfg[key])


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def accepted_arguments(fn: Callable) -> set[str] | None:
    """Keyword arguments ``fn`` (a function or a class) accepts, following ``**kwargs`` up a class's
    bases; None when they cannot be known (a ``**kwargs`` that goes nowhere inspectable)."""
    names: set[str] = set()
    targets = [c.__init__ for c in fn.__mro__ if "__init__" in vars(c)] if inspect.isclass(fn) else [fn]
    for target in targets:
        try:
            params = inspect.signature(target).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
        if not inspect.isclass(fn):
            return None
    return None


def check_call(path: str, what: str, fn: Callable, kwargs: Mapping[str, Any],
               inject: Mapping[str, Any] | None = None) -> Any:
    """``fn(**kwargs, **inject)`` with every error turned into a :class:`ConfigError` that names ``path``.

    Keys of ``kwargs`` (the config's) that ``fn`` does not take are rejected first, as are those the
    caller passes itself (``inject``, e.g. ``device``); then the constructor checks the values.
    """
    inject = dict(inject or {})
    allowed = accepted_arguments(fn)
    if allowed is not None:
        shown = sorted(allowed - set(inject))
        for k in kwargs:
            if k not in allowed or k in inject:
                hint = difflib.get_close_matches(str(k), shown, n=1)
                raise ConfigError(f"{path}.{k}={kwargs[k]!r}: {what} takes no option {k!r}"
                                  + (f"; did you mean {path}.{hint[0]}?" if hint else "")
                                  + f" Allowed: {', '.join(shown)}")
    elif any(k in inject for k in kwargs):
        k = next(k for k in kwargs if k in inject)
        raise ConfigError(f"{path}.{k}={kwargs[k]!r}: {what} takes no option {k!r} here (it is set for you)")
    try:
        return fn(**kwargs, **inject)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path} ({what}): {e}") from e
