"""One meta-parameter set per population member: a learned rule run with batched meta-parameters.

    flat = meta_vector(rule)                          # (D,) the trainable meta-parameters, flattened
    thetas = flat + noise                             # (N, D): one set per member
    member_rule = MemberRule(rule, thetas)            # an UpdateRule over population params (N, ...)
    res = unroll(population, member_rule, params, member_rule.init(params), K, gens)

Member ``i`` of the population (the slice ``[i]`` of every params/state tensor) is updated by
``rule`` with the meta-parameters ``thetas[i]``: exactly what ``rule.update`` gives on that
member alone after loading ``thetas[i]`` into the rule. It is computed with
``torch.func.vmap`` over ``torch.func.functional_call`` (one batched call for all members:
the per-coordinate MLP/LSTM matmuls become batched matmuls), so any rule whose ``update`` is
written with ordinary differentiable tensor ops works: the LSTM, the MLP rule, learned
Adam/SGD. Each member sees its own tensors only (per-tensor normalisations are per member;
the rule's ``population_dim`` must be left unset). While it runs, the rule's attribute
``member_batched`` is True (see :func:`linear`): a rule may then prefer formulations that
batch well over meta-parameter sets. Non-tensor state entries (the step count)
must be the same for every member, as they are in a population.

A rule may also define ``update_members(meta, grads, state, params, workspace)``, the same
computation written directly over the member dim (:meth:`~.mlp.MLPOptimizer.update_members`);
under ``no_grad`` MemberRule calls it instead of ``vmap`` (with grad enabled it keeps ``vmap``, which
differentiates). ``workspace`` is a dict of scratch buffers the rule may reuse from one step to the next.

This is what the evolution-strategies estimators (:mod:`learned_opt.meta.es`,
:mod:`learned_opt.meta.pes`) run under ``no_grad``: many perturbed copies of one rule at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from baselines.base import Params, State

__all__ = ["MemberRule", "linear", "meta_vector", "meta_named", "unflatten_meta"]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, member_batched: bool = False) -> Tensor:
    """``F.linear``, or with ``member_batched`` the same product as ``x @ weight.T + bias``: under
    ``vmap`` over per-member weights this becomes one batched matmul, about twice as fast on CPU as
    ``F.linear``'s batching rule (the plain path keeps ``F.linear``'s exact numerics)."""
    if not member_batched:
        return torch.nn.functional.linear(x, weight, bias)
    out = x @ weight.transpose(-1, -2)
    return out if bias is None else out + bias


def meta_named(rule: nn.Module) -> list[tuple[str, Tensor]]:
    """The rule's trainable meta-parameters (``requires_grad``), by name, in ``parameters()`` order."""
    return [(k, p) for k, p in rule.named_parameters() if p.requires_grad]


def meta_vector(rule: nn.Module) -> Tensor:
    """The trainable meta-parameters flattened into one vector ``(D,)`` (detached)."""
    named = meta_named(rule)
    if not named:
        raise ValueError(f"{type(rule).__name__} has no trainable meta-parameters")
    return torch.cat([p.detach().reshape(-1) for _, p in named])


def unflatten_meta(rule: nn.Module, flat: Tensor) -> dict[str, Tensor]:
    """Split ``flat`` (``(..., D)``) into the rule's trainable meta-parameters (``(..., *shape)`` each)."""
    out, i = {}, 0
    lead = flat.shape[:-1]
    for k, p in meta_named(rule):
        n = p.numel()
        out[k] = flat[..., i:i + n].reshape(tuple(lead) + tuple(p.shape))
        i += n
    if i != flat.shape[-1]:
        raise ValueError(f"meta-parameter vector has {flat.shape[-1]} entries; the rule has {i}")
    return out


class _Call(nn.Module):
    """``forward`` calls one method of the wrapped rule (what ``functional_call`` needs)."""

    def __init__(self, rule: nn.Module, method: str):
        super().__init__()
        self.rule, self.method = rule, method

    def forward(self, *args: Any) -> Any:
        return getattr(self.rule, self.method)(*args)


def split_tree(tree: Any) -> tuple[list[Tensor], Callable[[list[Tensor]], Any]]:
    """The tensor leaves of a pytree (nested dicts, lists and tuples; anything else is kept as it is), and
    a function that rebuilds the tree with new leaves in their places."""
    leaves: list[Tensor] = []

    def spec(obj: Any) -> Any:
        if isinstance(obj, Tensor):
            leaves.append(obj)
            return _Leaf(len(leaves) - 1)
        if isinstance(obj, dict):
            return {k: spec(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(spec(v) for v in obj)
        return obj

    structure = spec(tree)

    def rebuild(new: list[Tensor], node: Any = structure) -> Any:
        if isinstance(node, _Leaf):
            return new[node.index]
        if isinstance(node, dict):
            return {k: rebuild(new, v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(rebuild(new, v) for v in node)
        return node

    return leaves, rebuild


@dataclass(frozen=True)
class _Leaf:
    index: int


class MemberRule:
    """``rule`` with the meta-parameters ``thetas[i]`` on population member ``i``; see the module docstring.

    Args:
        rule: a learned rule (``nn.Module`` with ``init``/``update``).
        thetas: ``(N, D)`` flattened trainable meta-parameters, one row per member (:func:`meta_vector`
            layout), or a dict ``{name: (N, *shape)}``.
    """

    def __init__(self, rule: nn.Module, thetas: Tensor | dict[str, Tensor]):
        if getattr(rule, "population_dim", None) is not None:
            raise ValueError("MemberRule gives each member its own tensors: leave the rule's population_dim unset")
        self.rule = rule
        named = thetas if isinstance(thetas, dict) else unflatten_meta(rule, thetas)
        self.named = dict(named)                                 # by the rule's own names (update_members)
        self.meta = {f"rule.{k}": v for k, v in named.items()}  # by functional_call's names (vmap)
        self.size = next(iter(self.meta.values())).shape[0]
        self._calls = {m: _Call(rule, m) for m in ("init", "update")}
        self._workspace: dict = {}   # update_members' scratch buffers, reused across the steps of an unroll

    def __getattr__(self, name: str) -> Any:  # config(), hparam_names, ... of the wrapped rule
        if name in ("rule", "named", "meta", "size", "_calls", "_workspace", "_check_members"):
            raise AttributeError(name)
        return getattr(self.rule, name)

    def _check_members(self, tensors: Any) -> None:
        for t in tensors:
            if t.dim() == 0 or t.shape[0] != self.size:
                raise ValueError(f"MemberRule: every tensor needs a leading population dim of {self.size}, "
                                 f"got shape {tuple(t.shape)}")

    def _map(self, method: str, *trees: Any) -> Any:
        flat = [split_tree(t) for t in trees]
        leaves = [f[0] for f in flat]
        counts = [len(x) for x in leaves]
        self._check_members(t for x in leaves for t in x)
        out_rebuild: list[Callable] = []
        call = self._calls[method]

        def one(meta: dict[str, Tensor], *member_leaves: Tensor) -> list[Tensor]:
            args, i = [], 0
            for (_, rebuild), n in zip(flat, counts):
                args.append(rebuild(list(member_leaves[i:i + n])))
                i += n
            out = torch.func.functional_call(call, meta, tuple(args))
            out_leaves, rebuild_out = split_tree(out)
            out_rebuild[:] = [rebuild_out]
            return out_leaves

        all_leaves = [t for x in leaves for t in x]
        had = "member_batched" in vars(self.rule)
        self.rule.member_batched = True
        try:
            result = torch.func.vmap(one, in_dims=(0, *([0] * len(all_leaves))))(self.meta, *all_leaves)
        finally:
            if had:
                self.rule.member_batched = False
            else:
                del self.rule.member_batched
        return out_rebuild[0](list(result))

    def init(self, params: Params) -> State:
        return self._map("init", params)

    def update(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        native = getattr(self.rule, "update_members", None)
        if native is not None and not torch.is_grad_enabled():
            self._check_members((*grads.values(), *params.values()))   # the state is what init/update made of them
            return native(self.named, grads, state, params, self._workspace)
        return self._map("update", grads, state, params)
