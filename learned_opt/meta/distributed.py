"""Data-parallel meta-training over many workers with ``torch.distributed``.

Start it with ``torchrun`` (one process per worker; ``torchrun`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``)::

    torchrun --nproc_per_node=2 experiments/meta_train.py distributed=true
    torchrun --nproc_per_node=4 experiments/meta_train.py distributed=true device=cuda   # one GPU each

What each worker does (see :func:`learned_opt.meta.trainer.meta_train`):

- the same meta-parameters everywhere: the rule is built from the config's seed on
  every worker and broadcast from rank 0 once (on resume every worker loads the
  same checkpoint);
- different tasks: worker ``r`` runs ``meta.tasks_per_step`` inner problems, the
  global slots ``r * tasks_per_step ... (r + 1) * tasks_per_step - 1``. Slot seeds
  come from per-slot streams (:class:`~learned_opt.meta.truncated.TruncatedBPTT`),
  so the union of the workers' tasks is exactly the tasks of ONE process with
  ``world_size * tasks_per_step`` tasks: N workers compute what that one process
  computes (up to the order of floating-point sums);
- one meta-gradient: the workers' sums of per-task meta-gradients, task counts and
  losses are summed with ``all_reduce`` (:func:`all_reduce_estimate`) and divided by
  the global count, BEFORE clipping, so every worker clips and applies the same
  averaged gradient and the meta-parameters stay identical without further syncs;
- rank 0 alone validates, logs (JSONL, W&B, progress bar) and writes checkpoints; a
  checkpoint holds every worker's inner problems (gathered to rank 0), so a run
  resumes exactly with the same number of workers.

Backend: ``gloo`` on CPU, ``nccl`` on CUDA (each worker uses ``cuda:LOCAL_RANK``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .inner import Estimate

__all__ = ["DistContext", "init_distributed", "synchronize", "shutdown", "broadcast_parameters", "all_reduce_estimate",
           "all_gather_objects", "ENV_VARS"]

ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistContext:
    """This worker's place in the run."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    owns_group: bool  # whether init_distributed created the process group (and shutdown destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | torch.device = "cpu") -> DistContext:
    """Join the process group described by the ``torchrun`` environment variables.

    ``device`` is the config's device: ``cpu`` gives the gloo backend; ``cuda`` gives nccl
    and this worker's GPU ``cuda:LOCAL_RANK``. An existing default process group is reused.
    """
    if not dist.is_available():
        raise RuntimeError("distributed=true but this torch build has no torch.distributed")
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing and not dist.is_initialized():
        raise RuntimeError(f"distributed=true needs the torchrun environment; missing {', '.join(missing)}. "
                           f"Start with: torchrun --nproc_per_node=N experiments/meta_train.py distributed=true")
    device = torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("distributed=true with device=cuda, but CUDA is not available here")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]))
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, dist.get_backend(), owns)


def synchronize(ctx: DistContext | None) -> None:
    """A barrier across the workers (nothing without a process group): called after a run's last
    collective, so that no worker destroys its group while a peer is still using it (gloo may abort a
    worker whose peer tears the connection down first)."""
    if ctx is not None and dist.is_initialized():
        dist.barrier()


def shutdown(ctx: DistContext | None) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if ctx is not None and ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_parameters(module: nn.Module, src: int = 0) -> None:
    """Make every worker's parameters (and buffers) equal to those of rank ``src``."""
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src)


def all_reduce_estimate(est: Estimate, meta_params: list[Tensor], device: torch.device) -> Estimate:
    """The global estimate: sums of meta-gradients, counts and losses over all workers, then the means.

    A worker whose tasks all diverged contributes zeros. Every worker returns the same numbers.
    """
    grads = est.grad_sum if est.grad_sum is not None else [torch.zeros_like(p) for p in meta_params]
    dtype = grads[0].dtype if grads else torch.float32
    flat = torch.cat([g.reshape(-1).to(dtype) for g in grads]) if grads else torch.zeros(0, dtype=dtype, device=device)
    stats = torch.tensor([est.counted, est.diverged, est.meta_loss_sum, est.inner_loss_sum],
                         dtype=torch.float64, device=device)
    dist.all_reduce(flat)
    dist.all_reduce(stats)
    counted, diverged = int(round(stats[0].item())), int(round(stats[1].item()))
    if counted == 0:
        return Estimate(None, None, 0, diverged, None)
    total = [part.view_as(g).to(g.dtype) for part, g in zip(flat.split([g.numel() for g in grads]), grads)]
    loss_sum, inner_sum = stats[2].item(), stats[3].item()
    return Estimate(loss_sum / counted, [g / counted for g in total], counted, diverged, inner_sum / counted,
                    total, loss_sum, inner_sum)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every worker's ``obj`` (picklable), in rank order, on every worker."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_max(value: int, device: torch.device) -> int:
    """The largest of every worker's ``value`` (e.g. a stop signal one worker received), on every worker."""
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())
