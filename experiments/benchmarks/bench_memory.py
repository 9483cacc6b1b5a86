"""Memory and time of a meta-step, with and without gradient checkpointing over truncation segments.

    python experiments/benchmarks/bench_memory.py [--horizon 100] [--truncation 100] [--device cpu] [--quick] [--out DIR]

Setting (Andrychowicz et al. 2016, "L2L"): MLP 784-20-10 sigmoid on MNIST (the bundled 5k
subset), batch 128, float32; the coordinatewise LSTM optimizer (2 layers, 20 units);
truncated BPTT with horizon T and truncation K (default T = K = 100: one meta-step is a
full 100-step second-order unroll and its meta-gradient).

Memory, measured in separate runs from the timings:

- graph per inner step (no checkpointing): bytes of the distinct tensors that autograd
  saves for the meta-backward during the unroll (``torch.autograd.graph.saved_tensors_hooks``),
  divided by K;
- peak during the meta-step: on CUDA ``torch.cuda.max_memory_allocated`` above the start;
  on CPU the peak of live tensor storage allocated during the meta-step, tracked per aten op
  by a ``TorchDispatchMode`` (a tracemalloc for tensors; the forward AND backward, the
  recomputation of checkpointed segments included).

Time: median of interleaved rounds, every variant in the same process.
``checkpoint_segments = S`` splits the truncation into S segments recomputed in the backward
pass (``TruncatedBPTT(checkpoint_segments=S)``).
"""
from __future__ import annotations

import gc
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from learned_opt.meta.bptt import TruncatedBPTT
from learned_opt.optimizers import LSTMOptimizer
from learned_opt.tasks import SingleTaskFamily, make_task

from common import emit, interleaved, machine_line, parse_args, parser, sync, write_table


class LiveTensorBytes(TorchDispatchMode):
    """Live bytes of the tensor storages created while active, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += self.live[key]
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


class SavedTensorBytes:
    """Bytes of the distinct storages autograd saves for backward while active."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        self.storages[s.data_ptr()] = s.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def l2l(device: torch.device, quick: bool):
    if quick:
        return make_task("mlp", dataset="digits", hidden_sizes=[20], activation="sigmoid", batch_size=128, device=device)
    return make_task("mlp", dataset="mnist5k", hidden_sizes=[20], activation="sigmoid", batch_size=128, device=device)


def meta_step(task, rule, horizon: int, truncation: int, segments: int, device: torch.device):
    est = TruncatedBPTT(SingleTaskFamily(task), horizon=horizon, truncation=truncation, num_tasks=1, device=device,
                        generator=torch.Generator().manual_seed(0), meta_loss="log_mean",
                        checkpoint_segments=segments)
    return est.estimate(rule)


def measure_memory(task, rule, horizon, truncation, segments, device) -> tuple[float, float | None]:
    """(peak bytes above the start, graph bytes saved for backward or None when checkpointed)."""
    gc.collect()
    saved = None
    if segments == 1:
        counter = SavedTensorBytes()
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
            meta_step(task, rule, horizon, truncation, segments, device)
        saved = counter.total
        gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        meta_step(task, rule, horizon, truncation, segments, device)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - start, saved
    tracker = LiveTensorBytes()
    with tracker:
        meta_step(task, rule, horizon, truncation, segments, device)
    return tracker.peak, saved


def main() -> None:
    ap = parser(__doc__, rounds_default=3, quick_help="digits instead of MNIST, T = K = 6, one round: a smoke run")
    ap.add_argument("--horizon", type=int, default=100)
    ap.add_argument("--truncation", type=int, default=100)
    ap.add_argument("--segments", type=int, nargs="+", default=[1, 4, 10, 20], help="checkpoint_segments to compare")
    args, device = parse_args(ap, quick={"horizon": 6, "truncation": 6, "segments": [1, 3], "rounds": 1})
    K = args.truncation
    task = l2l(device, args.quick)
    torch.manual_seed(0)
    rule = LSTMOptimizer(hidden_size=20).to(device)
    n_params = sum(p.numel() for p in task.init_params(torch.Generator(device=device).manual_seed(0)).values())
    lines = [f"{machine_line(device)} Task: {task.name} MLP "
             f"{task.dataset.num_features}-20-10 sigmoid, batch 128, {n_params} parameters; LSTM optimizer "
             f"(2 x 20 units); T = {args.horizon}, K = {K}, second order; median of {args.rounds} interleaved "
             f"rounds.\n",
             "| checkpoint_segments | time / meta-step (s) | x time | peak memory (MB) | per inner step (MB) "
             "| x memory | graph saved for backward (MB, per inner step) |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    memory = {s: measure_memory(task, rule, args.horizon, K, s, device) for s in args.segments}
    meta_step(task, rule, args.horizon, K, 1, device)  # warm-up
    times = interleaved({s: (lambda s=s: meta_step(task, rule, args.horizon, K, s, device)) for s in args.segments},
                        args.rounds, device, warmup=False)
    base_t = times[args.segments[0]]
    base_m = memory[args.segments[0]][0]
    for s in args.segments:
        t, (peak, saved) = times[s], memory[s]
        graph = f"{saved / 2**20:.1f} ({saved / K / 2**20:.2f})" if saved is not None else "(recomputed)"
        emit(lines, f"| {s if s > 1 else '1 (none)'} | {t:.2f} | {t / base_t:.2f} | {peak / 2**20:.1f} | "
                    f"{peak / K / 2**20:.2f} | {peak / base_m:.2f} | {graph} |")
    best = min(args.segments, key=lambda s: memory[s][0])
    emit(lines, f"\nTrade-off: checkpoint_segments={best} needs {memory[best][0] / base_m:.2f}x the memory of no "
                f"checkpointing for {times[best] / base_t:.2f}x the time.")
    write_table(args.out, lines)


if __name__ == "__main__":
    main()
