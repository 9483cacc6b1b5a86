"""Line-up entries that name a ``torch.optim.Optimizer`` class: the peers of the evaluation.

    optimizers:
      prodigy: {torch_optim: prodigyopt.Prodigy, lr: 1.0}
      sf_adamw: {torch_optim: schedulefree.AdamWScheduleFree, lr: 0.0025, tune: {lr: [1.0e-4, 1.0e-2]}}
      muon: {torch_optim: torch.optim.Muon, lr: 0.02, rest: {lr: 3.0e-4}}    # 2-D tensors Muon, the rest AdamW

An entry is ``torch_optim`` (the class's import path), its keyword arguments, optionally ``tune`` (keyword
-> ``[low, high]`` searched on a log scale, or a list of values) and, for Muon, ``rest`` (the AdamW
options of the tensors that are not matrices). It runs through the same cells, tuning and reports as a
hand-crafted rule (``<label>@default``, ``<label>@tuned``), as :class:`baselines.torch_peer.TorchOptimRule`.
Everything is checked before any cell runs: a module that is not installed names the package to install,
an unknown keyword or a bad value names the entry, every tuning candidate is built once.
"""
from __future__ import annotations

from baselines.torch_peer import TorchOptimRule, resolve_optimizer

from ..schema import ConfigError

__all__ = ["parse_peer"]


def parse_peer(label: str, entry: dict, tuning: dict | None):
    """The :class:`~learned_opt.evaluation.suite.OptimizerSpec` of a ``torch_optim`` entry, checked."""
    from .suite import OptimizerSpec, candidates
    entry = dict(entry)
    path = entry.pop("torch_optim")
    cls = resolve_optimizer(path, f"optimizers.{label}.torch_optim")
    tune = entry.pop("tune", None) or {}
    if not isinstance(tune, dict):
        raise ConfigError(f"optimizers.{label}.tune={tune!r} is not allowed; allowed: a mapping "
                          f"keyword -> [low, high] or a list of values")
    for name in [*entry, *tune]:
        if name != "rest" and not TorchOptimRule.accepts(cls, name):
            raise ConfigError(f"optimizers.{label}.{name}: {path} takes no keyword {name!r}")
    for name, space in tune.items():
        if not isinstance(space, (list, tuple)) or len(space) < 2:
            raise ConfigError(f"optimizers.{label}.tune.{name}={space!r}: give [low, high] or a list of values")
    try:
        TorchOptimRule(cls, **entry)
    except ConfigError as e:
        raise ConfigError(f"optimizers.{label}: {e}") from e
    if tune and tuning is not None:
        for cand in candidates(tune, tuning.get("method", "grid"), int(tuning.get("budget", 8)),
                               int(tuning.get("seed", 0))):
            try:
                TorchOptimRule(cls, **{**entry, **cand})
            except ConfigError as e:
                raise ConfigError(f"optimizers.{label}.tune={tune!r}: the search would try {cand}, which {path} "
                                  f"rejects: {e}") from e
    return OptimizerSpec(label, hparams=entry, tune=dict(tune), torch_optim=path)
