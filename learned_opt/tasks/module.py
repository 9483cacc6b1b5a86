"""Any ``nn.Module`` as a task: a model factory, a data source and a loss, through ``torch.func.functional_call``.

    task = ModuleTask(lambda: nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)),
                      data={"train": (x, y), "test": (x_test, y_test)}, loss="cross_entropy", batch_size=32)
    params = task.init_params(generator)        # the module's parameters AND its buffers, by their names
    res = unroll(task, rule, params, init_state(rule, params, steps, task), steps, generator)
    task.metrics(res.params, "test")            # eval mode: BatchNorm uses the running statistics carried along

Parameters and buffers. ``init_params`` builds a fresh module with ``model()`` under torch's global RNG
seeded from the generator (``torch.random.fork_rng``: the global RNG is left as it was), moves it to
``device`` and ``dtype`` (floating tensors only), and returns its parameters and persistent buffers
as one dictionary keyed like its ``state_dict``. The buffers, and any parameter with
``requires_grad=False``, are the task's ``buffer_names``: no rule trains them; the loss updates them
(BatchNorm's running statistics) and :func:`~learned_opt.unroll.unroll` carries them from step to
step in the params dict (see :mod:`learned_opt.tasks.base`). The buffers are copied before each
forward, so the module's in-place updates never reach the caller's tensors.

Modes. The training loss runs the module in train mode (``module.train()``); ``metrics`` in eval mode
(``module.eval()``), without gradients, over the whole split in chunks of ``eval_chunk`` examples.

Data (``data``), one of:

* a dataset name or :class:`~learned_opt.tasks.datasets.Dataset`: its splits, inputs reshaped to
  ``input_shape`` (default: the dataset's own, e.g. ``(1, 28, 28)``; ``[-1]`` keeps them flat);
* ``{"train": (x, ..., y), "test": (x, ..., y)}``: tensors with one example per row; a batch is
  ``batch_size`` rows drawn with replacement (``None``: all of them);
* a sampler ``sampler(generator, split, batch_size) -> (x, ..., y)`` that draws from the generator it
  is given. ``metrics`` then averages ``eval_batches`` batches drawn from a generator seeded with
  ``eval_seed`` (the same batches every call).

A batch is ``(*inputs, target)``: the model is called as ``model(*inputs)`` and the loss as
``loss(output, target)``. ``loss`` is ``"cross_entropy"`` (class scores in the last dim; any
leading dims, e.g. a language model's ``(B, T, V)`` against ``(B, T)`` targets, are averaged), ``"mse"``
or a callable returning a scalar mean. Accuracy (``is_classifier``) is reported for cross-entropy.

Populations: :class:`~learned_opt.tasks.population.PopulationTask` batches members of one
``signature`` (same model factory, loss and dtype) with ``torch.func.vmap`` when the module allows it
(:meth:`ModuleTask.vmappable` tries it once on two copies of an initialisation) and loops over them
otherwise.

Randomness inside the forward (dropout) draws from torch's global RNG, not from the task's
generators: use modules without it where runs must be reproducible.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from baselines.checks import ConfigError, check_int

from .base import Batch, Params, Task, check_float_dtype, check_split, randint
from .datasets import Dataset, make_dataset

__all__ = ["ModuleTask", "LOSSES"]

EVAL_CHUNK = 1024


def _cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


def _mse(output: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(output, target)


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"cross_entropy": _cross_entropy, "mse": _mse}


class ModuleTask(Task):
    """See the module docstring.

    Args:
        model: a callable returning a fresh ``nn.Module`` (a class, a function, a ``functools.partial``).
        data: a dataset name, a :class:`Dataset`, ``{"train": tensors, "test": tensors}`` or a sampler.
        loss: ``"cross_entropy"``, ``"mse"`` or ``loss(output, target) -> scalar``.
        batch_size: examples per training batch (``None``: the whole split; tensors and datasets only).
        device, dtype: where and in which floating precision params, buffers and floating data live.
        input_shape: datasets only: the shape of one input (default: the dataset's ``input_shape``).
        eval_batches, eval_seed: samplers only: how ``metrics`` draws its batches.
        eval_chunk: examples per forward pass in ``metrics``.
        name: task name (default ``"module_<model name>"``).
        signature: what makes two tasks' losses the same function of ``(params, batch)`` (default:
            ``(model, loss, dtype)``); equal signatures let a population use ``vmap``.
        root: where a dataset read from files (the idx datasets) lives.
    """

    def __init__(self, model: Callable[[], nn.Module], data: Any, loss: str | Callable = "cross_entropy",
                 batch_size: int | None = 128, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str = torch.float32, input_shape: tuple[int, ...] | None = None,
                 eval_batches: int = 8, eval_seed: int = 0, eval_chunk: int = EVAL_CHUNK, name: str | None = None,
                 signature: Any = None, root: str | None = None):
        if not callable(model):
            raise ConfigError(f"model={model!r} is not allowed; allowed: a callable returning a fresh nn.Module")
        self.model = model
        self.device = torch.device(device)
        self.dtype = check_float_dtype(dtype)
        self.batch_size = None if batch_size is None else check_int("batch_size", batch_size, 1)
        self.eval_batches = check_int("eval_batches", eval_batches, 1)
        self.eval_seed = check_int("eval_seed", eval_seed, 0)
        self.eval_chunk = check_int("eval_chunk", eval_chunk, 1)
        if isinstance(loss, str):
            if loss not in LOSSES:
                raise ConfigError(f"loss={loss!r} is not allowed; allowed: {', '.join(LOSSES)} or a callable "
                                  f"loss(output, target)")
            self.loss_name, self._loss = loss, LOSSES[loss]
        elif callable(loss):
            self.loss_name, self._loss = getattr(loss, "__name__", "custom"), loss
        else:
            raise ConfigError(f"loss={loss!r} is not allowed; allowed: {', '.join(LOSSES)} or a callable "
                              f"loss(output, target)")
        self.is_classifier = loss == "cross_entropy"
        self.dataset: Dataset | None = None
        self._sampler: Callable | None = None
        self._data: dict[str, tuple[Tensor, ...]] | None = None
        if isinstance(data, (str, Dataset)):
            ds = data if isinstance(data, Dataset) else make_dataset(data, root=root, device=self.device)
            self.dataset = ds
            shape = tuple(input_shape) if input_shape is not None else tuple(ds.input_shape)
            self._data = {s: (x.to(self.device, self.dtype).reshape(len(x), *shape), y.to(self.device))
                          for s, (x, y) in (("train", ds.split("train")), ("test", ds.split("test")))}
        elif isinstance(data, Mapping):
            if set(data) != {"train", "test"}:
                raise ConfigError(f"data has splits {sorted(data)}; allowed: exactly 'train' and 'test'")
            self._data = {}
            for split in ("train", "test"):
                tensors = data[split]
                if not isinstance(tensors, (list, tuple)) or len(tensors) < 2 or \
                        not all(isinstance(t, Tensor) for t in tensors) or len({len(t) for t in tensors}) != 1:
                    raise ConfigError(f"data[{split!r}] must be a tuple of tensors with one example per row "
                                      f"(inputs..., target), all of one length")
                self._data[split] = tuple(self._cast(t) for t in tensors)
        elif callable(data):
            self._sampler = data
        else:
            raise ConfigError(f"data={data!r} is not allowed; allowed: a dataset name, a Dataset, "
                              f"{{'train': tensors, 'test': tensors}} or a sampler(generator, split, batch_size)")
        if self._sampler is not None and self.batch_size is None:
            raise ConfigError("batch_size=None (full batch) needs data given as tensors or a dataset, not a sampler")
        self.module = self._build(None).to(self.device)
        self.name = name if name is not None else f"module_{getattr(model, '__name__', type(self.module).__name__)}"
        self.signature = signature if signature is not None else (model, self.loss_name, self.dtype)
        #: the trained entries: parameters with requires_grad; every other state_dict entry is a buffer
        self.param_names = tuple(n for n, p in self.module.named_parameters() if p.requires_grad)
        self.buffer_names = frozenset(self._state(self.module)) - frozenset(self.param_names)
        self.module.requires_grad_(False)   # the module is only a skeleton: its own tensors are never used
        if not self.param_names:
            raise ConfigError(f"model {self.name}: the module has no trainable parameters")
        self._vmappable: bool | None = None
        self._probe()

    def _probe(self) -> None:
        """One training loss on one batch, so that a model that does not fit its data (an input size, a number
        of classes) fails here, before any run starts, with both named."""
        g = torch.Generator().manual_seed(0)
        try:
            with torch.no_grad():
                self.loss(self.init_params(g), self.sample_batch(g, "train"))
        except (RuntimeError, ValueError, IndexError) as e:
            raise ConfigError(f"model {self.name} does not run on its data: {str(e).splitlines()[0]}") from e

    # ------------------------------------------------------------------ building
    def _cast(self, t: Tensor) -> Tensor:
        return t.to(self.device, self.dtype) if t.is_floating_point() else t.to(self.device)

    def _build(self, seed: int | None) -> nn.Module:
        """A fresh module from the factory (under the global RNG seeded with ``seed``), in ``dtype``."""
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            module = self.model()
        if not isinstance(module, nn.Module):
            raise ConfigError(f"model: the factory returned a {type(module).__name__}; allowed: an nn.Module")
        return module.to(self.dtype)

    @staticmethod
    def _state(module: nn.Module) -> Params:
        """Parameters (a tied one once, under its first name: ``functional_call`` ties the others) and
        persistent buffers, by their ``state_dict`` names."""
        persistent = module.state_dict(keep_vars=True).keys()
        return {**{k: v.detach() for k, v in module.named_parameters()},
                **{k: v.detach() for k, v in module.named_buffers() if k in persistent}}

    def init_params(self, generator: torch.Generator) -> Params:
        """A fresh module's parameters and buffers (see the module docstring)."""
        seed = int(randint(2**62, (), generator, torch.device("cpu")))
        module = self._build(seed).to(self.device)
        return {k: v.clone() for k, v in self._state(module).items()}

    def state_dict(self, params: Params) -> dict[str, Tensor]:
        """``params`` as a state dict for ``model().load_state_dict`` (tied parameters under all their names)."""
        entries = self.module.state_dict(keep_vars=True)
        first: dict[int, str] = {}   # a tensor -> its first name, the one it has in params
        for k, v in entries.items():
            first.setdefault(id(v), k)
        return {k: params[first[id(v)]].detach() for k, v in entries.items()}

    # ------------------------------------------------------------------ batches
    def sample_batch(self, generator: torch.Generator, split: str = "train") -> Batch:
        check_split(split)
        if self._sampler is not None:
            return tuple(self._sampler(generator, split, self.batch_size))
        tensors = self._data[split]
        if self.batch_size is None:
            return tensors
        index = randint(len(tensors[0]), (self.batch_size,), generator, self.device)
        return tuple(t[index] for t in tensors)

    # ------------------------------------------------------------------ the loss
    def _forward(self, params: Params, inputs: tuple, train: bool) -> Tensor:
        self.module.train(train)
        return functional_call(self.module, params, tuple(inputs))

    def loss_and_buffers(self, params: Params, batch: Batch) -> tuple[Tensor, Params]:
        """Train-mode loss on ``batch`` and the buffers' values after the forward (copies: the module's
        in-place updates never touch ``params``)."""
        *inputs, target = batch
        buffers = {k: params[k].clone() for k in self.buffer_names}
        output = self._forward({**params, **buffers}, inputs, train=True)
        return self._loss(output, target), buffers

    def loss(self, params: Params, batch: Batch) -> Tensor:
        """Train-mode loss on ``batch`` (the buffers' updates are dropped; see ``loss_and_buffers``)."""
        return self.loss_and_buffers(params, batch)[0]

    # ------------------------------------------------------------------ metrics
    def _eval_batches(self, split: str, max_examples: int | None):
        if self._sampler is not None:
            g = torch.Generator().manual_seed(self.eval_seed)
            batches = max(1, math.ceil(max_examples / self.batch_size)) if max_examples else self.eval_batches
            for _ in range(batches):
                yield tuple(self._sampler(g, split, self.batch_size))
            return
        tensors = self._data[split]
        n = len(tensors[0]) if max_examples is None else min(check_int("max_examples", max_examples, 1),
                                                             len(tensors[0]))
        for start in range(0, n, self.eval_chunk):
            yield tuple(t[start:min(start + self.eval_chunk, n)] for t in tensors)

    @torch.no_grad()
    def metrics(self, params: Params, split: str = "test", max_examples: int | None = None) -> dict[str, float]:
        """Eval-mode mean loss (and accuracy for cross-entropy) over ``split``: see the module docstring."""
        check_split(split)
        total, correct, count, targets = 0.0, 0, 0, 0
        for *inputs, target in self._eval_batches(split, max_examples):
            output = self._forward(params, inputs, train=False)
            n = len(target)
            total += float(self._loss(output, target)) * n
            count += n
            if self.is_classifier:
                correct += int((output.argmax(-1) == target).sum())
                targets += target.numel()
        self.module.train(True)
        out = {"loss": total / count}
        if self.is_classifier:
            out["accuracy"] = correct / targets
        return out

    # ------------------------------------------------------------------ tuning
    def validation_split(self, fraction: float, seed: int) -> "ModuleTask":
        """This task with its training data cut in two: train' and a validation split playing "test"
        (a random ``fraction`` of the training rows, drawn with ``seed``; a sampler's own ``validation(fraction)``
        for sampled data). Tuning scores candidates on it, never on the test split."""
        twin = copy.copy(self)
        if self._sampler is not None:
            if not hasattr(self._sampler, "validation"):
                raise ConfigError(f"task {self.name}: its sampler has no validation(fraction) split, so it cannot "
                                  f"be tuned on held-out training data")
            twin._sampler = self._sampler.validation(fraction)
            return twin
        train = self._data["train"]
        n = len(train[0])
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(self.device)
        n_val = max(1, int(round(fraction * n)))
        twin._data = {"train": tuple(t[perm[n_val:]] for t in train), "test": tuple(t[perm[:n_val]] for t in train)}
        twin.dataset = None
        return twin

    # ------------------------------------------------------------------ populations
    def vmappable(self) -> bool:
        """Whether ``torch.func.vmap`` runs this task's loss over stacked params (tried once, then cached)."""
        if self._vmappable is None:
            from .population import stack_trees
            g = torch.Generator().manual_seed(0)
            params = stack_trees([self.init_params(g), self.init_params(g)])
            batch = self.sample_batch(g, "train")
            batch = tuple(torch.stack([t[:2], t[:2]]) for t in batch)
            try:
                torch.func.vmap(self.loss_and_buffers)(params, batch)
                self._vmappable = True
            except Exception:   # any failure: populations loop over the members instead
                self._vmappable = False
        return self._vmappable
