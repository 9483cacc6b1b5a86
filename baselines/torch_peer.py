"""Any ``torch.optim.Optimizer`` as an update rule: the optimizers a user would reach for, as peers in a line-up.

    rule = TorchOptimRule("prodigyopt.Prodigy", lr=1.0)            # a class or its import path
    rule = TorchOptimRule("schedulefree.AdamWScheduleFree", lr=0.0025)
    rule = TorchOptimRule("torch.optim.Muon", lr=0.02, rest={"lr": 3e-4})   # matrices Muon, the rest AdamW
    state = rule.init(params)
    new_params, state = rule.update(grads, state, params)
    rule.eval_params(new_params)          # the point to evaluate (schedule-free: x, not the gradient point y)

How it works. ``init`` copies the params into leaf tensors that it owns and builds the optimizer over
them; ``update`` copies the incoming params into those leaves, sets their ``.grad`` to ``grads``, calls
``optimizer.step()`` and returns copies of the leaves. The optimizer object (with its own per-tensor
state) travels in the rule state under ``"torch_optim"``, beside ``"step"``.

What differs from the other rules, by necessity (torch.optim steps in place):

* not differentiable: an unroll that needs a graph through the update (a meta-gradient) is refused;
  this rule is for evaluation;
* a state can be advanced once: ``update`` steps the optimizer held in ``state`` in place, so the
  state it was given is spent (a second ``update`` from it raises). The inputs ``grads`` and ``params``
  are never written, and the params it returns are its own copies;
* ``eval_params``: an optimizer with a ``train()``/``eval()`` switch (schedule-free) trains at one
  point and is evaluated at another; ``eval_params(params)`` is the evaluation point of the latest
  state (the leaves are switched to ``eval()``, copied, and put back exactly as they were). Other
  optimizers evaluate at the params themselves.

Muon (``torch.optim.Muon``) takes only 2-D tensors: every 2-D tensor of the params goes to Muon with
the entry's options, every other tensor to ``torch.optim.AdamW`` with the options in ``rest``.
(A params dict does not say which matrix is an embedding or an output head; they go to Muon too.)
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from torch import Tensor

from .base import Params, State
from .checks import ConfigError

__all__ = ["TorchOptimRule", "resolve_optimizer", "PEER_PACKAGES"]

#: import name -> the package to install for it (the ``peers`` extra of pyproject.toml lists them)
PEER_PACKAGES = {"prodigyopt": "prodigyopt", "schedulefree": "schedulefree", "heavyball": "heavyball",
                 "lion_pytorch": "lion-pytorch", "timm": "timm", "bitsandbytes": "bitsandbytes"}


def resolve_optimizer(path: str | type, field: str = "torch_optim") -> type:
    """The ``torch.optim.Optimizer`` subclass at import path ``path`` (``package.module.Class`` or
    ``package.module:Class``); a :class:`ConfigError` naming ``field`` and which package to install when
    its module is missing."""
    if isinstance(path, type):
        cls = path
    elif isinstance(path, str) and ("." in path or ":" in path):
        module_name, _, attr = path.rpartition(":") if ":" in path else path.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            top = (e.name or module_name).split(".")[0]
            package = PEER_PACKAGES.get(top, top)
            raise ConfigError(f"{field}={path!r}: module {top!r} is not installed; install it with "
                              f"`pip install {package}`"
                              + (" (or `pip install learned-opt[peers]`)" if top in PEER_PACKAGES else "")) from e
        if not hasattr(module, attr):
            raise ConfigError(f"{field}={path!r}: module {module_name!r} has no attribute {attr!r}")
        cls = getattr(module, attr)
    else:
        raise ConfigError(f"{field}={path!r} is not allowed; allowed: the import path of a torch.optim.Optimizer "
                          f"class, e.g. 'torch.optim.AdamW' or 'prodigyopt.Prodigy'")
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"{field}={path!r} is not allowed; allowed: a torch.optim.Optimizer subclass "
                          f"(got {cls!r})")
    return cls


def _is_muon(cls: type) -> bool:
    return getattr(torch.optim, "Muon", None) is not None and issubclass(cls, torch.optim.Muon)


class _Live:
    """The optimizers and the leaf tensors they step, and how many steps they have taken."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], leaves: dict[str, Tensor]):
        self.optimizers, self.leaves, self.step = optimizers, leaves, 0

    def switchable(self) -> bool:
        return any(hasattr(o, "eval") and hasattr(o, "train") for o in self.optimizers)


class TorchOptimRule:
    """A ``torch.optim.Optimizer`` class as an update rule (evaluation only); see the module docstring.

    Args:
        optimizer: the class, or its import path.
        rest: Muon only: the ``torch.optim.AdamW`` options for the tensors that are not 2-D.
        **hparams: the optimizer's keyword arguments (checked now, by building it on a dummy tensor).
    """

    differentiable = False

    def __init__(self, optimizer: str | type, rest: dict | None = None, **hparams: Any):
        self.cls = resolve_optimizer(optimizer)
        self.name = f"{self.cls.__module__}.{self.cls.__qualname__}"
        self.options = dict(hparams)
        self.split = _is_muon(self.cls)
        if rest is not None and not self.split:
            raise ConfigError(f"rest={rest!r}: only torch.optim.Muon takes `rest` (the AdamW options for the "
                              f"tensors that are not matrices); {self.name} steps every tensor")
        if rest is not None and not isinstance(rest, dict):
            raise ConfigError(f"rest={rest!r} is not allowed; allowed: a mapping of torch.optim.AdamW options")
        self.rest = dict(rest or {})
        self.hparam_names = tuple(self.options)
        self._latest: _Live | None = None
        self._build({"w": torch.zeros(2, 2), "b": torch.zeros(2)})   # bad options fail here, not at a later step

    def __repr__(self) -> str:
        rest = f", rest={self.rest}" if self.split else ""
        return f"TorchOptimRule({self.name}, {self.options}{rest})"

    def _build(self, params: Params) -> _Live:
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        try:
            if self.split:
                matrices = [t for t in leaves.values() if t.dim() == 2]
                others = [t for t in leaves.values() if t.dim() != 2]
                optimizers = ([self.cls(matrices, **self.options)] if matrices else []) + \
                    ([torch.optim.AdamW(others, **self.rest)] if others else [])
            else:
                optimizers = [self.cls(list(leaves.values()), **self.options)]
        except (TypeError, ValueError) as e:
            raise ConfigError(f"torch_optim={self.name!r} with {self.options}"
                              + (f" and rest={self.rest}" if self.split else "") + f" is not allowed: {e}") from e
        for opt in optimizers:
            if hasattr(opt, "train") and hasattr(opt, "eval"):
                opt.train()
        return _Live(optimizers, leaves)

    # ------------------------------------------------------------------ the rule
    def init(self, params: Params) -> State:
        live = self._build(params)
        self._latest = live
        return {"step": 0, "torch_optim": live}

    def update(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        if torch.is_grad_enabled() and any(g.requires_grad for g in grads.values()):
            raise RuntimeError(f"{self!r} is not differentiable (torch.optim steps in place): use it in an "
                               f"evaluation (an unroll without a graph), not to take a meta-gradient")
        live: _Live = state["torch_optim"]
        if live.step != state["step"]:
            raise RuntimeError(f"{self!r}: this state (step {state['step']}) was already advanced to step "
                               f"{live.step}; a torch.optim peer's state can be advanced once")
        with torch.no_grad():
            for k, leaf in live.leaves.items():
                leaf.copy_(params[k])
                leaf.grad = grads[k].detach().to(leaf.dtype).clone()
            for opt in live.optimizers:
                opt.step()
            new = {k: leaf.detach().clone() for k, leaf in live.leaves.items()}
        live.step += 1
        self._latest = live
        return new, {"step": state["step"] + 1, "torch_optim": live}

    @torch.no_grad()
    def eval_params(self, params: Params, state: State | None = None) -> Params:
        """Where to evaluate ``params`` (those of ``state``, by default the latest state): for a
        ``train()``/``eval()`` optimizer its eval point, otherwise ``params`` themselves."""
        live = state["torch_optim"] if state is not None else self._latest
        if live is None or not live.switchable():
            return params
        for k, leaf in live.leaves.items():
            leaf.copy_(params[k])
        saved = {k: leaf.clone() for k, leaf in live.leaves.items()}
        for opt in live.optimizers:
            if hasattr(opt, "eval"):
                opt.eval()
        out = {**params, **{k: leaf.detach().clone() for k, leaf in live.leaves.items()}}  # buffers as they are
        for opt in live.optimizers:
            if hasattr(opt, "train"):
                opt.train()
        for k, leaf in live.leaves.items():   # exactly the training point again (train() rounds)
            leaf.copy_(saved[k])
        return out

    @classmethod
    def accepts(cls, optimizer: type, name: str) -> bool:
        """Whether ``optimizer``'s constructor takes keyword ``name``."""
        params = inspect.signature(optimizer.__init__).parameters
        return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
