"""Online controllers: small mechanisms that act on any update rule's per-tensor steps, composed in order.

    from learned_opt.optimizers.controllers import Controlled, HypergradientStepSize, RadialGain
    rule = Controlled(baselines.Adam(lr=1e-3), [RadialGain(0.1), HypergradientStepSize(0.1, shrink=2.0)])

Each lives in its own file with its formula: :mod:`.hypergradient` (a step size adapted by the sign of the
hypergradient, with shrink, floor and momentum), :mod:`.radial` (the part of the step along the tensor
itself), :mod:`.snr` (Adam's signal-to-noise ratio). :mod:`.base` holds the seam (:class:`Controller`,
:class:`Controlled`). ``CONTROLLERS`` lists them in their canonical order (the order a derived rule
gets them in).
"""
from collections.abc import Mapping, Sequence
from typing import Any

from .base import Controlled, Controller
from .hypergradient import HypergradientStepSize
from .radial import RadialGain
from .snr import SNRScale

__all__ = ["CONTROLLERS", "Controlled", "Controller", "HypergradientStepSize", "RadialGain", "SNRScale",
           "controller_specs"]

CONTROLLERS: dict[str, type[Controller]] = {c.name: c for c in (SNRScale, RadialGain, HypergradientStepSize)}


def controller_specs(value: Any, path: str = "controllers") -> list[Any]:
    """The controllers a config names, in order, as ``[Controller | {"name": ..., **options}]``.

    ``value``: ``None`` or an empty list (none); a list of controllers or ``{"name": ..., **options}``; or a
    mapping ``{name: {"enabled": bool, **options}}`` (the config group's form, which command-line overrides
    can switch on and tune: ``optimizer.controllers.hypergradient.enabled=true``), whose entries with
    ``enabled: false`` are left out, in the mapping's order."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        out = []
        for name, options in value.items():
            if not isinstance(options, Mapping) or not isinstance(options.get("enabled", None), bool):
                raise ValueError(f"{path}.{name}={options!r} is not allowed; allowed: a mapping with enabled: "
                                 f"true|false and the controller's options")
            if options["enabled"]:
                out.append({"name": name, **{k: v for k, v in options.items() if k != "enabled"}})
        return out
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{path}={value!r} is not allowed; allowed: a list of controllers, or a mapping "
                         f"name -> {{enabled: bool, ...options}}")
    return list(value)
