"""One validation idiom for numbers, ranges, choices and configs, shared by ``baselines`` and ``learned_opt``.

Every message has one form, naming the field, the value and what is allowed::

    lr=-1 is not allowed; allowed: a finite number in [0, inf)

Two ways to use it:

- a value at a time, in constructors and functions: ``check_int("num_steps", n, 2)``,
  ``check_number("smooth", s, 0, 1, low_open=True)``, ``check_choice("mode", m, ("exp", "linear"))``
  each return the value or raise :class:`ConfigError` (a ``ValueError``);
- a whole config at once, in entry points, before any work: a schema is a dict ``key -> Field``
  (nested dicts are sections) and :func:`check` walks the config once, rejecting a wrong type, a
  value out of range, a missing required key, or a key nothing reads (with the closest allowed key
  as a hint)::

      SCHEMA = {"seed": Field(integer(0)), "meta": {"lr": Field(number(0, low_open=True))}}
      check(cfg, SCHEMA)

This module depends on the standard library only (``baselines`` imports nothing from
``learned_opt``; ``learned_opt.schema`` adds the entry-point fields built on it).
"""
from __future__ import annotations

import difflib
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

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
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) \
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


def section(schema: Mapping[str, Any]) -> Checker:
    """A nested mapping checked against ``schema`` (as a checker, e.g. inside :func:`optional`)."""
    def check_section(path: str, value: Any) -> None:
        check(value, schema, path)
    return check_section


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


# --------------------------------------------------------------------------- one value at a time
def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) in ``[low, high]``; otherwise a :class:`ConfigError`."""
    integer(low, high)(name, value)
    return value


def check_number(name: str, value: Any, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
                 high_open: bool = False) -> float:
    """``float(value)`` if it is a finite real number (not a bool) in the interval; otherwise a :class:`ConfigError`."""
    number(low, high, low_open=low_open, high_open=high_open)(name, value)
    return float(value)


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """``value`` if it is one of ``allowed``; otherwise a :class:`ConfigError` listing them."""
    choice(*allowed)(name, value)
    return value


def check_lr_range(name: str, value: Any) -> list[float]:
    """``[low, high]`` with ``0 < low < high`` (the ends of a log grid), as floats."""
    ok = isinstance(value, (list, tuple)) and len(value) == 2 \
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value) \
        and 0 < value[0] < value[1]
    if not ok:
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: [low, high] with 0 < low < high "
                          f"(the ends of a log grid)")
    return [float(v) for v in value]
