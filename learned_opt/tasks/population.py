"""Batched populations: N inner tasks of one shape, trained at once as one task.

    pop = PopulationTask([task_0, ..., task_{N-1}])
    params = pop.init_params([g_0, ..., g_{N-1}])        # {name: Tensor(N, *shape)}
    batch = pop.sample_batch([g_0, ..., g_{N-1}])        # members' batches, stacked on dim 0
    pop.loss(params, batch)                              # Tensor(N,): one loss per member
    res = unroll(pop, rule, params, rule.init(params), steps, [g_0, ..., g_{N-1}])
    res.losses                                           # (steps, N)

Members must have the same parameter names and shapes, dtype and device. The
parameters of the population are the members' parameters stacked along a new
leading dim (the *population dim*); member ``i`` is ``{k: v[i] for k, v in params.items()}``.

Gradients: :func:`~learned_opt.unroll.unroll` differentiates ``loss.sum()``; the
members share no parameters, so this gives every member exactly its own gradient.
Hand-crafted rules are elementwise and the LSTM optimizer is coordinatewise, so they
run on stacked parameters as they are; a rule that normalises over a tensor (the MLP
optimizer) must skip the population dim: :func:`population_rule` sets its
``population_dim`` to 0 for the duration of a ``with`` block.

Batches: ``sample_batch`` takes either one generator per member (member ``i`` draws
exactly what ``tasks[i].sample_batch(generators[i])`` would draw, so a population
reproduces N separate runs) or a single generator, from which the members draw in
turn (deterministic, but not the same numbers as separate runs).

How the loss is batched (``mode``):

``"mlp"``        MLP / logistic-regression members with the same layer sizes and
                 activation: batched matmuls (``torch.baddbmm``), one cross-entropy.
``"quadratic"``  quadratics of one dimension: their ``W`` and ``y`` are stacked once,
                 ``f_i = ||W_i theta_i - y_i||^2`` with one batched matmul.
``"vmap"``       ``torch.func.vmap`` of the first member's ``loss`` over stacked params and
                 batches. Valid only when the members' losses are the same function of
                 ``(params, batch)`` (e.g. conv nets of one architecture); chosen
                 automatically for conv nets, may be forced for other tasks.
``"loop"``       a Python loop over the members' own ``loss`` (any tasks of one shape); what
                 ``"auto"`` picks for :class:`~learned_opt.tasks.module.ModuleTask` members whose
                 module ``vmap`` cannot run.
``"reparam"``    augmented members (:class:`~learned_opt.tasks.augment.ReparamTask`, each with its
                 own scales): the params are rescaled by the stacked scales, then the wrapped
                 tasks' population (itself batched by any mode above) gives the losses.
                 Chosen automatically when every member is a ``ReparamTask``; forcing ``"vmap"``,
                 ``"mlp"`` or ``"quadratic"`` on such members picks that mode for the wrapped
                 tasks (``"loop"`` loops over the members themselves).
``"auto"``       (default) the first of these that applies.

All modes give the same numbers up to floating-point rounding (the tests check it).

Shared batches (``same_batches=M > 1``, what the evolution-strategies estimators use: the particles of
one inner problem are one task under perturbed rules, fed the same batches): the members form
consecutive groups of ``M`` that are one task object, and the caller guarantees that the generators
of a group are in the same state. ``sample_batch`` then draws each group's batch once, from the
group's first generator (the group's other generators are not advanced), and gives member ``i`` the
batch of group ``i // M``, so the numbers are those of drawing for every member. In mode ``"mlp"``
with members sharing one dataset (no dropout) the batch is not copied ``M`` times: ``x`` comes as an
expanded view ``(G, M, B, features)`` and the first layer of every group's ``M`` members is one
matmul against the group's inputs.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.checks import check_int

from .augment import ReparamTask
from .base import Batch, Params, Task, check_split, randint
from .conv import ConvTask
from .mlp import ACTIVATIONS, MLPTask
from .module import ModuleTask
from .noisy_quadratic import NoisyQuadraticTask
from .quadratic import QuadraticTask
from .regression import MSETask

__all__ = ["PopulationTask", "population_rule", "stack_trees", "unstack_tree", "MODES"]

MODES = ("auto", "mlp", "quadratic", "vmap", "loop", "reparam")


# --------------------------------------------------------------------------- pytrees of tensors

def stack_trees(trees: Sequence[Any]) -> Any:
    """Stack matching pytrees (dicts / lists / tuples of tensors) along a new leading dim.

    Non-tensor leaves (e.g. a state's ``"step"``) must be equal in every tree and are kept as they are.
    """
    if not trees:
        raise ValueError("stack_trees needs at least one tree")
    first = trees[0]
    if isinstance(first, Tensor):
        return torch.stack(list(trees))
    if isinstance(first, dict):
        for t in trees[1:]:
            if not isinstance(t, dict) or t.keys() != first.keys():
                raise ValueError(f"population members disagree in structure: keys {sorted(first)} vs "
                                 f"{sorted(t) if isinstance(t, dict) else type(t).__name__}")
        return {k: stack_trees([t[k] for t in trees]) for k in first}
    if isinstance(first, (list, tuple)):
        if any(len(t) != len(first) for t in trees):
            raise ValueError("population members disagree in structure: sequences of different lengths")
        return type(first)(stack_trees([t[i] for t in trees]) for i in range(len(first)))
    if any(t != first for t in trees[1:]):
        raise ValueError(f"population members disagree on a non-tensor value: {[t for t in trees]!r}")
    return first


def unstack_tree(tree: Any, n: int) -> list[Any]:
    """Inverse of :func:`stack_trees`: ``n`` trees, tensor leaves indexed along dim 0."""
    if isinstance(tree, Tensor):
        return list(tree.unbind(0))
    if isinstance(tree, dict):
        parts = {k: unstack_tree(v, n) for k, v in tree.items()}
        return [{k: parts[k][i] for k in tree} for i in range(n)]
    if isinstance(tree, (list, tuple)):
        parts = [unstack_tree(v, n) for v in tree]
        return [type(tree)(p[i] for p in parts) for i in range(n)]
    return [tree] * n


@contextlib.contextmanager
def population_rule(rule: Any, dim: int = 0) -> Iterator[Any]:
    """Within the block, a rule with a ``population_dim`` attribute (the MLP optimizer) skips ``dim``
    in its per-tensor normalisation; other rules are left alone (elementwise or coordinatewise)."""
    if not hasattr(rule, "population_dim"):
        yield rule
        return
    had = "population_dim" in vars(rule)
    old = rule.population_dim
    rule.population_dim = dim
    try:
        yield rule
    finally:
        if had:
            rule.population_dim = old
        else:
            del rule.population_dim


# --------------------------------------------------------------------------- the task

def _signature(task: Task) -> tuple | None:
    """What a member's loss depends on besides (params, batch); equal signatures allow batching."""
    if isinstance(task, MLPTask):
        return ("mlp", type(task), task.hidden_sizes, task.activation, task.dataset.num_features,
                task.dataset.num_classes)
    if isinstance(task, QuadraticTask):
        return ("quadratic", type(task), task.dim)
    if isinstance(task, NoisyQuadraticTask):
        return ("vmap", type(task), task.dim, task.decay, task.noise, task.dtype)
    if isinstance(task, ConvTask):
        return ("vmap", type(task), task.channels, tuple(task.dataset.input_shape), task.dataset.num_classes)
    if isinstance(task, MSETask):
        return ("vmap", type(task), task.hidden_sizes, task.activation, task.dataset.num_features, task.num_outputs)
    if isinstance(task, ReparamTask):
        return ("reparam", tuple(task.scales), _signature(task.task))
    if isinstance(task, ModuleTask):
        return ("vmap" if task.vmappable() else "loop", type(task), task.signature)
    return None


class PopulationTask(Task):
    """``N`` tasks of one shape as one task whose loss is the vector of member losses.

    Args:
        tasks: the members (at least one). Same parameter names/shapes, dtype and device.
        mode: how the loss is batched; see the module docstring (``"auto"`` by default).

    Attributes: ``tasks``, ``population_size`` (N), ``mode`` (the resolved mode), and
    the usual ``name``, ``device``, ``dtype``, ``batch_size``, ``is_classifier``.
    """

    def __init__(self, tasks: Sequence[Task], mode: str = "auto", same_batches: int = 1):
        tasks = list(tasks)
        if not tasks:
            raise ValueError("PopulationTask needs at least one task; got an empty list")
        check_int("same_batches", same_batches, 1)
        if len(tasks) % same_batches or any(tasks[i] is not tasks[i - i % same_batches] for i in range(len(tasks))):
            raise ValueError(f"same_batches={same_batches} needs the members in consecutive groups of "
                             f"{same_batches} that are one task object each; got {len(tasks)} members that are not")
        self.same_batches = same_batches
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not allowed; allowed: {', '.join(MODES)}")
        first = tasks[0]
        for i, t in enumerate(tasks[1:], 1):
            if t.device != first.device or t.dtype != first.dtype:
                raise ValueError(f"population members must share device and dtype: tasks[0] is "
                                 f"{first.device}/{first.dtype}, tasks[{i}] is {t.device}/{t.dtype}")
        self.tasks = tasks
        self.population_size = len(tasks)
        self.device, self.dtype = first.device, first.dtype
        self.batch_size = first.batch_size
        self.is_classifier = all(t.is_classifier for t in tasks)
        self.buffer_names = getattr(first, "buffer_names", frozenset())
        for i, t in enumerate(tasks[1:], 1):
            if getattr(t, "buffer_names", frozenset()) != self.buffer_names:
                raise ValueError(f"population members must have the same buffers: tasks[0] has "
                                 f"{sorted(self.buffer_names)}, tasks[{i}] has "
                                 f"{sorted(getattr(t, 'buffer_names', ()))}")
        self.name = f"population{len(tasks)}_{first.name}"
        self._inner: PopulationTask | None = None
        if mode != "loop" and all(isinstance(t, ReparamTask) for t in tasks):
            names = list(first.scales)
            for i, t in enumerate(tasks):
                if list(t.scales) != names:
                    raise ValueError(f"augmented members must scale the same tensors: tasks[0] scales {names}, "
                                     f"tasks[{i}] scales {list(t.scales)}")
            # the wrapped tasks' population does the batching; the members differ only in their scales
            self._inner = PopulationTask([t.task for t in tasks], "auto" if mode in ("auto", "reparam") else mode,
                                         same_batches)
            self._scales = {k: torch.stack([t.scales[k] for t in tasks]) for k in names}   # (N,) each
            mode = "reparam"
        elif mode == "reparam":
            raise ValueError("mode='reparam' needs members that are all ReparamTask (augmented tasks)")
        sigs = {_signature(t) for t in tasks}
        sig = next(iter(sigs)) if len(sigs) == 1 else None
        auto = sig[0] if sig is not None else "loop"
        if mode == "auto":
            mode = auto
        elif mode in ("mlp", "quadratic") and mode != auto:
            raise ValueError(f"mode={mode!r} needs members that are all {mode} tasks of one configuration; "
                             f"these members allow {auto!r} (or 'vmap' / 'loop')")
        self.mode = mode
        self._act = ACTIVATIONS[first.activation] if mode == "mlp" else None
        if mode == "quadratic":
            self._W = torch.stack([t.W for t in tasks])          # (N, d, d)
            self._y = torch.stack([t.y for t in tasks])          # (N, d)
        # members drawing from one shared data tensor: gather all batches with one index op
        self._shared_data = mode == "mlp" and first.batch_size is not None and all(
            t.dropout == 0 and t.batch_size == first.batch_size and t.dataset is first.dataset for t in tasks)

    def __repr__(self) -> str:
        inner = f", inner mode={self._inner.mode!r}" if self._inner is not None else ""
        return f"PopulationTask(n={self.population_size}, mode={self.mode!r}{inner}, member={self.tasks[0]!r})"

    # ------------------------------------------------------------------ params and batches
    def _generators(self, generator: Any) -> list[torch.Generator] | None:
        """One generator per member, or ``None`` for a single shared one."""
        if isinstance(generator, (list, tuple)):
            if len(generator) != self.population_size:
                raise ValueError(f"got {len(generator)} generators for a population of {self.population_size}")
            return list(generator)
        return None

    def init_params(self, generator: Any) -> Params:
        """Members' ``init_params`` (one generator each, or one shared in turn), stacked."""
        gens = self._generators(generator)
        return stack_trees([t.init_params(gens[i] if gens else generator) for i, t in enumerate(self.tasks)])

    def stack(self, member_params: Sequence[Params]) -> Params:
        """Stack per-member parameter (or state) dicts into population ones."""
        return stack_trees(list(member_params))

    def unstack(self, params: Any) -> list[Any]:
        """Split population params (or a rule state) into one tree per member."""
        return unstack_tree(params, self.population_size)

    def sample_batch(self, generator: Any, split: str = "train") -> Batch:
        """Members' batches stacked along dim 0: ``(x (N, B, ...), y (N, B), ...)``; ``()`` for quadratics."""
        check_split(split)
        if self._inner is not None:  # a ReparamTask's batches are its wrapped task's
            return self._inner.sample_batch(generator, split)
        gens = self._generators(generator)
        M = self.same_batches
        tasks = self.tasks[::M]                      # each group's task (every member when M = 1)
        gens = gens[::M] if gens else None           # each group's generator
        G = len(tasks)
        if self._shared_data:
            # the same draws as ClassificationTask.sample_batch, in the same order, one gather for all
            x, y = self.tasks[0]._data[split]
            idx = torch.cat([_index(t, len(y), gens[i] if gens else generator) for i, t in enumerate(tasks)])
            x, y = x.index_select(0, idx).view(G, -1, x.shape[1]), y.index_select(0, idx).view(G, -1)
            if M == 1:
                return x, y
            return x.unsqueeze(1).expand(G, M, *x.shape[1:]), y.unsqueeze(1).expand(G, M, y.shape[1])
        batches = [t.sample_batch(gens[i] if gens else generator, split) for i, t in enumerate(tasks)]
        return tuple(torch.stack(parts).repeat_interleave(M, dim=0) if M > 1 else torch.stack(parts)
                     for parts in zip(*batches))

    # ------------------------------------------------------------------ the loss
    def loss(self, params: Params, batch: Batch) -> Tensor:
        """Per-member losses, shape ``(N,)``."""
        if self.mode == "reparam":
            return self._inner.loss(self.original_params(params), batch)
        if self.mode == "mlp":
            return self._mlp_loss(params, batch)
        if self.mode == "quadratic":
            theta = params["theta"]
            residual = torch.bmm(self._W, theta.unsqueeze(-1)).squeeze(-1) - self._y
            return (residual * residual).sum(-1)
        if self.mode == "vmap":
            return torch.func.vmap(self.tasks[0].loss)(params, tuple(batch))
        members = self.unstack(params)
        parts = [tuple(b[i] for b in batch) for i in range(self.population_size)]
        return torch.stack([t.loss(p, b) for t, p, b in zip(self.tasks, members, parts)])

    def loss_and_buffers(self, params: Params, batch: Batch) -> tuple[Tensor, Params]:
        """Per-member losses ``(N,)`` and the members' new buffers, stacked (tasks with ``buffer_names``)."""
        if not self.buffer_names:
            return self.loss(params, batch), {}
        if self.mode == "vmap":
            return torch.func.vmap(self.tasks[0].loss_and_buffers)(params, tuple(batch))
        parts = [tuple(b[i] for b in batch) for i in range(self.population_size)]
        out = [t.loss_and_buffers(p, b) for t, p, b in zip(self.tasks, self.unstack(params), parts)]
        return torch.stack([loss for loss, _ in out]), stack_trees([bufs for _, bufs in out])

    def original_params(self, params: Params) -> Params:
        """Mode ``"reparam"``: the wrapped tasks' stacked parameters, ``c_k[i] * w'_k[i]`` for member ``i``."""
        return {k: self._scales[k].view(-1, *([1] * (w.dim() - 1))) * w for k, w in params.items()}

    def logits(self, params: Params, x: Tensor, *masks: Tensor) -> Tensor:
        """Batched MLP logits ``(N, B, classes)`` for inputs ``x`` of shape ``(N, B, features)`` (mode ``"mlp"``)."""
        if self.mode != "mlp":
            raise ValueError(f"logits is only defined for mode 'mlp', not {self.mode!r}")
        return self._logits_t(params, x, masks).transpose(1, 2)

    def _logits_t(self, params: Params, x: Tensor, masks: tuple, groups: int = 0) -> Tensor:
        """Logits as ``(N, classes, B)``. Computing in this layout, features before examples
        (``h^T = act(W h_prev^T + b)``), is ~2.5x faster on CPU than examples first: the batched
        matmuls are better shaped and the cross-entropy reduces over a non-last dim, which is
        much faster than over a last dim of ~10 classes. ``groups=G > 0``: ``x`` is ``(G, B, features)``,
        the inputs of ``N / G`` consecutive members each, and the first layer is one matmul per group."""
        hidden = self.tasks[0].hidden_sizes
        h = x.transpose(1, 2)                                    # (N or G, features, B)
        for i in range(len(hidden)):
            w, b = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
            if i == 0 and groups:                                # (G, M * width, features) @ (G, features, B)
                n, width = w.shape[:2]
                h = torch.baddbmm(b.reshape(groups, -1, 1), w.reshape(groups, -1, w.shape[2]), h)
                h = self._act(h.view(n, width, -1))             # (N, width, B)
            else:
                h = self._act(torch.baddbmm(b.unsqueeze(2), w, h))  # (N, width, B)
            if masks:
                h = h * masks[i].transpose(1, 2)
        out = len(hidden)
        w, b = params[f"layers.{out}.weight"], params[f"layers.{out}.bias"]
        return torch.baddbmm(b.unsqueeze(2), w, h)

    def _mlp_loss(self, params: Params, batch: Batch) -> Tensor:
        x, y, *masks = batch
        n, groups = self.population_size, 0
        if x.dim() == 2:  # full-batch members share one (B, F) split: broadcast it (no copy)
            x, y = x.expand(n, *x.shape), y.expand(n, *y.shape)
        elif x.dim() == 4:  # same_batches: (G, M, B, F), an expanded view of each group's batch
            groups, x, y = x.shape[0], x[:, 0], y.reshape(n, -1)
        logits = self._logits_t(params, x, tuple(masks), groups)        # (N, C, B)
        return F.cross_entropy(logits, y, reduction="none").mean(1)

    # ------------------------------------------------------------------ metrics
    def member_metrics(self, params: Params, split: str = "test", max_examples: int | None = None) -> list[dict]:
        """Each member's own ``metrics``."""
        return [t.metrics(p, split, max_examples) for t, p in zip(self.tasks, self.unstack(params))]

    def metrics(self, params: Params, split: str = "test", max_examples: int | None = None) -> dict[str, float]:
        """Mean over members of each metric (``member_metrics`` has them one by one)."""
        rows = self.member_metrics(params, split, max_examples)
        return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def _index(task: Task, n: int, generator: torch.Generator) -> Tensor:
    """The example indices ``ClassificationTask.sample_batch`` draws (same call, same numbers)."""
    return randint(n, (task.batch_size,), generator, task.device)
