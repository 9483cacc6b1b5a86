"""Config schemas for the entry points: the idiom of :mod:`baselines.checks` plus the fields they share.

Every entry point checks its whole config against a schema before any work (see
:mod:`baselines.checks` for ``Field``, ``check`` and the checkers, re-exported here), using the
shared ``WANDB`` block and ``device`` field below.

Groups whose options belong to a class chosen by name (a learned rule, a task family, a task, a
hand-crafted rule) are not listed here: :func:`check_call` checks them against the constructor's
own signature and then runs the constructor, which range-checks its arguments.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Mapping

from baselines.checks import (Checker, ConfigError, Field, boolean, check, check_choice, check_int, check_lr_range,
                              check_number, choice, integer, list_of, number, optional, section, string)

from .runlog import WANDB_MODES

__all__ = ["Checker", "ConfigError", "Field", "boolean", "check", "check_choice", "check_int", "check_lr_range",
           "check_number", "choice", "integer", "list_of", "number", "optional", "section", "string", "WANDB",
           "delegated", "device", "RUN", "accepted_arguments", "check_call"]


def delegated(path: str, value: Any) -> None:
    """A group checked elsewhere, by the constructor of the class it names (see :func:`check_call`)."""


def device(path: str, value: Any) -> None:
    """``cpu``, ``cuda`` or ``cuda:N`` (a missing GPU is a warning at run time, not an error here)."""
    ok = isinstance(value, str) and (value in ("cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()))
    if not ok:
        raise ConfigError(f"{path}={value!r} is not allowed; allowed: cpu, cuda, cuda:N")


# The run fields of an experiment: device and evaluation seeds (CPU threads are set by learned_opt.entry before
# the entry point reads its config).
RUN = {"device": Field(device), "seeds": Field(list_of(integer(), nonempty=True, distinct=True))}

# The ``wandb:`` block every entry point shares (read by learned_opt.runlog.RunLogger).
WANDB = {"mode": Field(choice(*WANDB_MODES)), "project": Field(string), "entity": Field(optional(string))}


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
    except (ValueError, TypeError) as e:  # (a ConfigError of the constructor's own included: this adds the path)
        raise ConfigError(f"{path} ({what}): {e}") from e
