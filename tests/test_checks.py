"""One validation idiom (baselines.checks): value checks and config schemas share one message form."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import baselines as B
from baselines.checks import (ConfigError, Field, check, check_choice, check_int, check_lr_range, check_number,
                              choice, integer, list_of, number, optional)
from learned_opt.tasks import make_task

FORM = r"^{name}={value} is not allowed; allowed: "


@pytest.mark.parametrize("value, low, high, ok", [
    (3, 1, None, True), (1, 1, None, True), (0, 1, None, False), (5, 1, 4, False), (np.int64(2), 0, None, True),
    (True, None, None, False), (2.0, None, None, False), ("2", None, None, False), (None, None, None, False)])
def test_check_int_accepts_integers_in_range_only(value, low, high, ok):
    if ok:
        assert check_int("n", value, low, high) == value
    else:
        with pytest.raises(ConfigError, match=FORM.format(name="n", value=repr(value).replace("(", r"\(")
                                                          .replace(")", r"\)"))):
            check_int("n", value, low, high)


@pytest.mark.parametrize("value, kwargs, ok", [
    (0.5, dict(low=0, high=1), True), (0, dict(low=0, high=1), True), (0, dict(low=0, high=1, low_open=True), False),
    (1, dict(low=0, high=1, high_open=True), False), (math.nan, {}, False), (math.inf, {}, False),
    (False, {}, False), ("0.1", {}, False), (-1e-9, dict(low=0), False)])
def test_check_number_interval_ends_and_non_numbers(value, kwargs, ok):
    if ok:
        assert check_number("x", value, **kwargs) == float(value)
    else:
        with pytest.raises(ConfigError, match=r"^x=.* is not allowed; allowed: a finite number in "):
            check_number("x", value, **kwargs)


def test_choice_and_lr_range_messages_list_what_is_allowed():
    assert check_choice("mode", "exp", ("exp", "linear")) == "exp"
    with pytest.raises(ConfigError, match=r"^mode='cos' is not allowed; allowed: exp, linear$"):
        check_choice("mode", "cos", ("exp", "linear"))
    assert check_lr_range("grid", [1e-3, 1]) == [1e-3, 1.0]
    for bad in ([1, 1e-3], [0, 1], [1e-3], "1e-3,1", [1e-3, math.inf]):
        with pytest.raises(ConfigError, match=r"^grid=.* is not allowed; allowed: \[low, high\] with 0 < low < high"):
            check_lr_range("grid", bad)


def test_a_schema_rejects_unknown_keys_with_a_hint_wrong_types_and_missing_sections():
    schema = {"seed": Field(integer(0)), "opt": {"lr": Field(number(0, low_open=True)),
                                                 "betas": Field(list_of(number(0, 1, high_open=True)))},
              "mode": Field(optional(choice("a", "b")))}
    check({"seed": 0, "opt": {"lr": 0.1, "betas": [0.9, 0.99]}, "mode": None}, schema)
    with pytest.raises(ConfigError, match=r"opt\.lrr=0\.1: unknown key \(nothing reads it\); did you mean opt\.lr\?"):
        check({"seed": 0, "opt": {"lrr": 0.1, "betas": []}}, schema)
    with pytest.raises(ConfigError, match=r"^opt\.betas\[1\]=1\.0 is not allowed; allowed: a finite number in \[0, 1\)"):
        check({"seed": 0, "opt": {"lr": 0.1, "betas": [0.9, 1.0]}}, schema)
    with pytest.raises(ConfigError, match=r"^opt is missing; it needs the keys lr, betas"):
        check({"seed": 0}, schema)


def test_rules_schedules_and_tasks_speak_the_same_form():
    """The hand-crafted rules (tensor-aware), the schedules and the tasks raise the one ConfigError form."""
    cases = [(lambda: B.SGD(lr=-1.0), r"^lr=-1\.0 is not allowed; allowed: a number in \[0\.0, inf\)"),
             (lambda: B.Adam(lr=torch.tensor(float("nan"))), r"^lr=nan is not allowed; allowed: a number in "),
             (lambda: B.CyclicLR(0.1, 1.0, step_size_up=0), r"^step_size_up=0 is not allowed; allowed: an integer >= 1"),
             (lambda: B.CyclicLR(0.1, 1.0, 10, mode="cos"), r"^mode='cos' is not allowed; allowed: triangular, "),
             (lambda: make_task("mlp", dataset="digits", hidden_sizes=[8, 0]),
              r"^hidden_sizes\[1\]=0 is not allowed; allowed: an integer >= 1"),
             (lambda: make_task("mlp", dataset="digits", activation="swish"),
              r"^activation='swish' is not allowed; allowed: "),
             (lambda: make_task("mlp", dataset="digits", dropout=1.0),
              r"^dropout=1\.0 is not allowed; allowed: a finite number in \[0\.0, 1\.0\)")]
    for build, message in cases:
        with pytest.raises(ConfigError, match=message):
            build()
