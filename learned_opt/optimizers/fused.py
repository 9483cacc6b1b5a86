"""The normalised MLP rule (celo) applied fast, under ``no_grad``: one step with no per-coordinate feature tensor.

:func:`fused_celo_step` computes exactly the step of the :class:`.celo.Celo` core (the module docstring there
has the formula) with its two shipped controllers (:mod:`.controllers`), the hypergradient step size and the radial gain, from plain lists of tensors. It is for
applying a rule (evaluation, a ``torch.optim`` optimizer, forward-only population members), not for
meta-gradients: nothing in it is differentiable.

How. Every feature is normalised by its RMS over the tensor, and the MLP's first layer is linear, so
each feature's ``1 / RMS`` folds into that layer's weights (and into the skip), per tensor; the time
features are the same for every coordinate and fold into the first layer's bias. What is left per
coordinate is the raw features (the momenta, the second moments and their ratios), one small MLP and
a few dot products. Three passes over each tensor:

1. the new momenta and second moments, and the per-tensor sums of the 19 squared features (and of
   ``g * last_dir``, ``last_dir^2``, ``g * w`` for the controllers);
2. the folded MLP on every coordinate: the new momenta and second moments and the direction ``d``
   are written, and the sums of ``d^2``, of the magnitude output and of ``d * w`` taken;
3. per tensor, the output normalisation, the magnitude and the controllers make the step
   ``u = a * d + b * w`` (the radial gain adds a multiple of ``w``); the new parameters and the new
   ``last_dir = u`` are written.

Two implementations of the same passes:

- ``"c"``: a C kernel (``fused_celo.c``: GCC vectors of 8 floats or 4 doubles, float32 and float64, one
  CPU thread), compiled with the system C compiler on first use (about 1 s) into a per-user cache
  (``LEARNED_OPT_CACHE``, default ``~/.cache/learned_opt``) and called through ``ctypes``. It serves
  the shipped architecture (5 decays, 2 rms decays, hidden sizes (8, 8), 5 step timescales) on
  contiguous CPU tensors. In float32 it takes ``1 / sqrt`` from the hardware estimate and one Newton
  step (a few ulps from the correctly rounded value; the step still agrees with ``update`` to 1e-5).
- ``"torch"``: the same passes written with torch ops, per tensor (features in chunks of ``chunk``
  coordinates, so no ``(coordinates x features)`` tensor of a whole large tensor is made); any device,
  dtype and architecture of the rule. On the CPU it is a slow fallback; on CUDA it is the path.

``backend="auto"`` takes the C kernel where it applies and a compiler is found, else the torch
formulation. ``LEARNED_OPT_FUSED=torch`` in the environment turns the C kernel off.

Also here: :func:`fused_celo_members` (``P`` population members with their own meta-parameters in one
kernel call: what ``update_members`` computes for the evolution-strategies estimators), and
:class:`FusedCeloOptimizer` (a ``torch.optim`` optimizer over the fused step, state in place).
Not implemented (``celo_inputs`` raises): ``orthogonalize``, ``relative_step``, ``snr_step``,
``bias_rule="adam"``, ``hypergradient_momentum``, a population dim.

State layout (per tensor ``p``; 8 floats per coordinate with both controllers, the rest per tensor)::

    momenta[i][k]      Tensor(p.shape)   the momentum with decays[i] of tensor k
    rms[i][k]          Tensor(p.shape)   the second moment with rms_decays[i]
    Hyper.log_step[k]  Tensor(keepdim)   the adapted log step size: shape (1,) * p.dim() (() for a 0-d p)
    Hyper.last_dir[k]  Tensor(p.shape)   the last step direction u (zero at the first step)
    Radial.log_radial[k], Radial.last_radial[k]   Tensor(keepdim)   r and the last radial coefficient c
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

__all__ = ["CeloOptions", "Hyper", "Radial", "FusedStep", "FusedCeloOptimizer", "fused_celo_step", "fused_celo_members",
           "celo_inputs", "kernel_available", "pack_weights", "BACKENDS", "CHUNK", "CHUNK_CUDA"]

EPS = 1e-20                 # as in celo.py: every normalisation
BACKENDS = ("auto", "c", "torch")
CHUNK = 1 << 16             # the torch formulation builds features for this many coordinates at a time (CPU)
CHUNK_CUDA = 1 << 22        # and on a GPU, where fewer, larger kernels are faster
WEIGHT_NAMES = ("layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "layers.2.weight",
                "layers.2.bias", "skip")
_KERNEL_SHAPE = {"decays": 5, "rms_decays": 2, "timescales": 5, "hidden": (8, 8)}   # what fused_celo.c is built for


@dataclass(frozen=True)
class CeloOptions:
    """The core's options (:class:`.celo.Celo`'s of the same names; ``timescales`` = ``step_timescales``)."""
    step_mult: float = 1e-3
    lr: float = 1.0
    magnitude: bool = True
    output_norm: bool = True
    weight_decay: float = 0.0
    decays: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99, 0.999)
    rms_decays: tuple[float, ...] = (0.95, 0.999)
    timescales: tuple[float, ...] = (1, 10, 100, 1000, 10000)


@dataclass
class Hyper:
    """The hypergradient step size: its per-tensor state and its settings. ``log_gain`` is the
    meta-parameter ``log_hyper_gain`` (a number or a 0-d tensor); the log step size stays in
    ``[floor, range]`` (``floor=None``: ``-range``); negative signals are multiplied by ``shrink``."""
    log_step: list[Tensor]
    last_dir: list[Tensor]
    log_gain: Tensor | float
    range: float = 3.0
    shrink: float = 1.0
    floor: float | None = None


@dataclass
class Radial:
    """The radial gain: its per-tensor state and its settings (``r`` in ``[-range, 0]``, moved by
    ``gain * tanh(z) * sign(c_last)``, negative signals times ``shrink``)."""
    log_radial: list[Tensor]
    last_radial: list[Tensor]
    gain: float = 0.1
    range: float = 4.0
    shrink: float = 1.0


class FusedStep(NamedTuple):
    """What :func:`fused_celo_step` returns: the new parameters, momenta, second moments and controller
    states (``None`` for a controller that was not given)."""
    params: list[Tensor]
    momenta: list[list[Tensor]]
    rms: list[list[Tensor]]
    hyper: Hyper | None
    radial: Radial | None


# ---------------------------------------------------------------------------------------------- checks
def _check(params, grads, momenta, rms, weights, options, hyper, radial, backend) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} must be one of {list(BACKENDS)}")
    n = len(params)
    if len(grads) != n:
        raise ValueError(f"grads has {len(grads)} tensors and params {n}: one gradient per parameter")
    for field_name, groups, count in (("momenta", momenta, len(options.decays)), ("rms", rms, len(options.rms_decays))):
        if len(groups) != count:
            raise ValueError(f"{field_name} has {len(groups)} lists, options give {count} decays")
        for i, group in enumerate(groups):
            if len(group) != n:
                raise ValueError(f"{field_name}[{i}] has {len(group)} tensors, params {n}")
    layers = sum(1 for k in weights if k.startswith("layers.") and k.endswith(".weight"))
    needed = [f"layers.{i}.{kind}" for i in range(max(layers, 1)) for kind in ("weight", "bias")] + ["skip", "log_scale"]
    missing = [k for k in needed if k not in weights]
    if missing:
        raise ValueError(f"weights lacks {missing}; needs {needed}")
    shapes = [p.shape for p in params]
    keep = [(1,) * len(sh) for sh in shapes]
    columns = [("grads", grads, shapes)]
    columns += [(f"momenta[{i}]", group, shapes) for i, group in enumerate(momenta)]
    columns += [(f"rms[{i}]", group, shapes) for i, group in enumerate(rms)]
    if hyper is not None:
        columns += [("hyper.log_step", hyper.log_step, keep), ("hyper.last_dir", hyper.last_dir, shapes)]
    if radial is not None:
        columns += [("radial.log_radial", radial.log_radial, keep), ("radial.last_radial", radial.last_radial, keep)]
    for name, values, want in columns:   # one list comparison per column; the loop below only names the culprit
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} tensors, params {n}")
        if [tuple(t.shape) for t in values] != [tuple(sh) for sh in want]:
            k = next(k for k, t in enumerate(values) if tuple(t.shape) != tuple(want[k]))
            raise ValueError(f"{name}[{k}] has shape {tuple(values[k].shape)}, expected {tuple(want[k])} "
                             f"(params[{k}] has shape {tuple(shapes[k])})")
    if hyper is not None:
        low = -hyper.range if hyper.floor is None else hyper.floor
        if not (hyper.range > 0 and low <= 0 and hyper.shrink > 0):
            raise ValueError(f"hyper: range={hyper.range} must be > 0, floor={hyper.floor} in [-range, 0], "
                             f"shrink={hyper.shrink} > 0")
    if radial is not None and not (radial.range > 0 and radial.gain >= 0 and radial.shrink > 0):
        raise ValueError(f"radial: range={radial.range} must be > 0, gain={radial.gain} >= 0, shrink={radial.shrink} > 0")


_INV_TIMESCALES: dict[tuple[float, ...], list[float]] = {}


def _time_features(step: int, horizon: int | None, timescales: Sequence[float]) -> list[float]:
    """``[tanh(step / s)..., min(step / horizon, 1), 1]`` (``[..., 0, 0]`` without a horizon), as floats.
    ``1 / s`` is rounded to float32 first, as the rule's ``inv_timescales`` buffer is made."""
    key = tuple(timescales)
    inv = _INV_TIMESCALES.get(key)
    if inv is None:
        inv = _INV_TIMESCALES[key] = torch.tensor([1.0 / s for s in key], dtype=torch.float32).tolist()
    frac = [min(step / horizon, 1.0), 1.0] if horizon else [0.0, 0.0]
    return [math.tanh(i * step) for i in inv] + frac


def _scalar(x: Tensor | float) -> float:
    return float(x.detach().double().item()) if isinstance(x, Tensor) else float(x)


# ---------------------------------------------------------------------------------------------- C kernel
_SOURCE = Path(__file__).with_name("fused_celo.c")
_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_error: str | None = None


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the machine and its CPU flags."""
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {platform.processor()} {flags}"


def _cache_dir() -> Path:
    root = os.environ.get("LEARNED_OPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "learned_opt")
    return Path(root)


def _load_kernel() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use into the cache (keyed by source, flags and CPU); ``None``
    when no C compiler works or ``LEARNED_OPT_FUSED=torch`` (the reason is in :func:`kernel_available`)."""
    global _lib, _lib_error
    if os.environ.get("LEARNED_OPT_FUSED", "").lower() == "torch":
        _lib_error = "LEARNED_OPT_FUSED=torch"
        return None
    with _lock:
        if _lib is not None or _lib_error is not None:
            return _lib
        source = _SOURCE.read_bytes()
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            _lib_error = "no C compiler (cc, gcc or clang) on PATH"
            return None
        key = hashlib.sha256(source + " ".join([cc, *_FLAGS, _cpu_id()]).encode()).hexdigest()[:16]
        target = _cache_dir() / f"fused_celo_{key}.so"
        try:
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
                os.close(fd)
                try:
                    out = subprocess.run([cc, *_FLAGS, "-o", tmp, str(_SOURCE), "-lm"], capture_output=True, text=True)
                    if out.returncode != 0:
                        raise OSError(f"{cc} failed: {out.stderr[-2000:]}")
                    os.replace(tmp, target)   # atomic: a concurrent build of the same key writes the same file
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            lib = ctypes.CDLL(str(target))
        except OSError as e:
            _lib_error = f"building the C kernel failed: {e}"
            return None
        layout = (ctypes.c_int64 * 7)()
        lib.celo_layout(layout)
        expected = (20, 3, 28, 332, 19, 8, 8)
        if tuple(layout) != expected:
            _lib_error = f"the C kernel's layout {tuple(layout)} is not the expected {expected}"
            return None
        for fn in (lib.celo_step_f32, lib.celo_step_f64):
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 8
        _lib = lib
        return _lib


def kernel_available() -> tuple[bool, str]:
    """Whether the C kernel can be used here, and if not, why."""
    lib = _load_kernel()
    return lib is not None, "" if lib is not None else (_lib_error or "unknown")


_PACKED = "_packed_float64"   # pack_weights' key: the C kernel's weights, flattened once


def pack_weights(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """``weights`` plus the C kernel's float64 copy of them, so that repeated calls of :func:`fused_celo_step`
    with the same (unchanged) weights skip that copy; make it again after the weights change."""
    out = dict(weights)
    out.pop(_PACKED, None)
    out[_PACKED] = torch.cat([out[k].detach().reshape(-1).to(device="cpu", dtype=torch.float64) for k in WEIGHT_NAMES])
    return out


def _shipped_architecture(weights: dict[str, Tensor], options: CeloOptions) -> bool:
    """Whether the rule has the architecture the C kernel is built for (``_KERNEL_SHAPE``)."""
    if (len(options.decays), len(options.rms_decays), len(options.timescales)) != (5, 2, 5):
        return False
    shapes = [tuple(weights[k].shape) if k in weights else None for k in ("layers.0.weight", "layers.1.weight",
                                                                         "layers.2.weight", "layers.3.weight")]
    return shapes == [(8, 26), (8, 8), (2, 8), None]


def _kernel_applies(params, grads, states, weights, options) -> bool:
    """Whether the C kernel serves this call: CPU, float32 or float64 throughout, contiguous, shipped architecture."""
    if not params:
        return False
    dtype = params[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    if not _shipped_architecture(weights, options):
        return False
    tensors = (*params, *grads, *states)
    return {(t.device.type, t.dtype) for t in tensors} == {("cpu", dtype)} and all(t.is_contiguous() for t in tensors)


def _config(options: CeloOptions, tf: list[float], log_scale: float, log_gain: float | None, hyper, radial) -> list[float]:
    """The kernel's config vector (``fused_celo.c``'s ``cfg`` layout) for one set of meta-parameters."""
    alpha = options.step_mult * options.lr
    cfg = [*options.decays, *options.rms_decays, *tf, math.exp(log_scale) * alpha, 1 - alpha * options.weight_decay,
           float(options.weight_decay != 0), float(options.output_norm), float(options.magnitude)]
    if hyper is not None:
        low = -hyper.range if hyper.floor is None else hyper.floor
        cfg += [1.0, math.exp(log_gain), low, hyper.range, hyper.shrink]
    else:
        cfg += [0.0, 0.0, 0.0, 0.0, 1.0]
    return cfg + ([1.0, radial.gain, radial.range, radial.shrink] if radial is not None else [0.0, 0.0, 1.0, 1.0])


def _c_step(params, grads, momenta, rms, tf, weights, options, hyper, radial, inplace) -> FusedStep:
    lib = _load_kernel()
    nt, dtype = len(params), params[0].dtype
    cfg_t = torch.tensor(_config(options, tf, _scalar(weights["log_scale"]),
                                 None if hyper is None else _scalar(hyper.log_gain), hyper, radial), dtype=torch.float64)
    wt = weights.get(_PACKED)
    if wt is None:
        wt = torch.cat([weights[k].detach().reshape(-1).to(device="cpu", dtype=torch.float64) for k in WEIGHT_NAMES])

    def fresh(ts):
        return list(ts) if inplace else [torch.empty_like(t) for t in ts]

    new_params = fresh(params)
    new_m = [fresh(ms) for ms in momenta]
    new_v = [fresh(vs) for vs in rms]
    last = hyper.last_dir if hyper is not None else grads          # pass 1 reads g where no last_dir exists
    new_last = fresh(hyper.last_dir) if hyper is not None else None
    numel = [p.numel() for p in params]
    scratch = None if hyper is not None else torch.empty(max(numel), dtype=dtype)

    columns = [grads, params, *momenta, *rms, last, new_params, *new_m, *new_v]
    ptr_rows = [[t.data_ptr() for t in col] for col in columns]
    ptr_rows.append([t.data_ptr() for t in new_last] if new_last is not None else [0] * nt)
    ptr_rows.append([scratch.data_ptr()] * nt if scratch is not None else [0] * nt)
    ptrs = torch.tensor(ptr_rows, dtype=torch.int64).T.contiguous()   # (nt, 20): fused_celo.c's NPTR layout

    ctl_in = torch.zeros(nt, 3, dtype=torch.float64)
    if hyper is not None:
        ctl_in[:, 0] = torch.cat([t.view(1) for t in hyper.log_step]).to("cpu", torch.float64)
    if radial is not None:
        ctl_in[:, 1] = torch.cat([t.view(1) for t in radial.log_radial]).to("cpu", torch.float64)
        ctl_in[:, 2] = torch.cat([t.view(1) for t in radial.last_radial]).to("cpu", torch.float64)
    ctl_out = torch.empty_like(ctl_in)
    numel_t = torch.tensor(numel, dtype=torch.int64)
    zero_dim = torch.tensor([p.dim() == 0 for p in params], dtype=torch.int64)
    fn = lib.celo_step_f32 if dtype == torch.float32 else lib.celo_step_f64
    sets = torch.zeros(nt, dtype=torch.int64)
    fn(nt, numel_t.data_ptr(), zero_dim.data_ptr(), sets.data_ptr(), ptrs.data_ptr(), cfg_t.data_ptr(), wt.data_ptr(),
       ctl_in.data_ptr(), ctl_out.data_ptr())

    def per_tensor(column: int, old: list[Tensor]) -> list[Tensor]:
        values = ctl_out[:, column].to(dtype)
        if inplace:
            torch._foreach_copy_(list(old), list(values.unbind()))   # 0-d values broadcast into the keepdim shapes
            return list(old)
        return [v.reshape(t.shape) for v, t in zip(values.split(1), old)]

    new_hyper = new_radial = None
    if hyper is not None:
        new_hyper = Hyper(per_tensor(0, hyper.log_step), new_last, hyper.log_gain, hyper.range, hyper.shrink,
                          hyper.floor)
    if radial is not None:
        new_radial = Radial(per_tensor(1, radial.log_radial), per_tensor(2, radial.last_radial), radial.gain,
                            radial.range, radial.shrink)
    return FusedStep(new_params, new_m, new_v, new_hyper, new_radial)


# ---------------------------------------------------------------------------------------------- torch formulation
def _features(g: Tensor, w: Tensor, ms: Sequence[Tensor], vs: Sequence[Tensor]) -> Tensor:
    """The raw (unnormalised) features of some coordinates: ``(n, features)``, for one chunk at a time."""
    raw = [g, w, *ms]
    for v in vs:
        inv = torch.rsqrt(v + EPS)
        raw += [g * inv, *(m * inv for m in ms)]
    return torch.stack(raw, dim=-1)


def _chunks(n: int, chunk: int | None):
    step = n if chunk is None else max(chunk, 1)
    return [(i, min(i + step, n)) for i in range(0, max(n, 1), step)] if n else []


def _step_scale(weights: dict[str, Tensor], options: CeloOptions, like: Tensor) -> Tensor:
    """``exp(log_scale) * step_mult * lr``: the step ``s = scale * u`` before the controllers' step size."""
    return torch.exp(torch.as_tensor(weights["log_scale"]).to(device=like.device, dtype=like.dtype)) * (
        options.step_mult * options.lr)


def _torch_tensor(g, w, ms_old, vs_old, last, log_step, log_radial, last_radial, tf, weights, options, hyper, radial,
                  chunk, radial_on):
    """One tensor's step with torch ops (flattened; ``g``, ``w`` are 1-d). Returns the new w, momenta,
    second moments, last_dir and the per-tensor scalars (0-d)."""
    dt = w.dtype
    n = w.numel()
    count = max(n, 1)
    ms = [d * m + (1 - d) * g for d, m in zip(options.decays, ms_old)]
    vs = [b * v + (1 - b) * g * g for b, v in zip(options.rms_decays, vs_old)]
    nf = 2 + len(ms) + len(vs) * (1 + len(ms))
    sq = torch.zeros(nf, dtype=dt, device=w.device)
    for i0, i1 in _chunks(n, chunk):
        x = _features(g[i0:i1], w[i0:i1], [m[i0:i1] for m in ms], [v[i0:i1] for v in vs])
        sq = sq + (x * x).sum(0)
    inv_rms = torch.rsqrt(sq / count + EPS)
    w1, b1 = weights["layers.0.weight"].to(dt), weights["layers.0.bias"].to(dt)
    tft = torch.tensor(tf, dtype=dt, device=w.device)
    w1f = w1[:, :nf] * inv_rms                       # 1 / RMS of each feature folded into the first layer
    b1f = b1 + w1[:, nf:] @ tft                      # the time features into its bias
    skip = weights["skip"].to(dt)
    skf, c0 = skip[:nf] * inv_rms, skip[nf:] @ tft
    layers = [(weights[f"layers.{i}.weight"].to(dt), weights[f"layers.{i}.bias"].to(dt))
              for i in range(1, sum(1 for k in weights if k.startswith("layers.") and k.endswith(".weight")))]
    d = torch.empty_like(w)
    mag_sum = torch.zeros((), dtype=dt, device=w.device)
    for i0, i1 in _chunks(n, chunk):
        x = _features(g[i0:i1], w[i0:i1], [m[i0:i1] for m in ms], [v[i0:i1] for v in vs])
        h = torch.addmm(b1f, x, w1f.T)
        for lw, lb in layers:
            h = torch.addmm(lb, h.relu(), lw.T)
        d[i0:i1] = h[:, 0] + x @ skf + c0
        mag_sum = mag_sum + h[:, 1].sum()
    a = torch.rsqrt((d * d).sum() / count + EPS) if options.output_norm else torch.ones((), dtype=dt, device=w.device)
    if options.magnitude:
        mean = mag_sum / count
        a = a * (2 * torch.sigmoid(mean))
    u = a * d
    sqrt_n = math.sqrt(n)
    if radial is not None and radial_on:
        ww, gg = (w * w).sum(), (g * g).sum()
        signal = torch.tanh((g * w).sum() * sqrt_n * torch.rsqrt(gg * ww + EPS)) * torch.sign(last_radial)
        signal = torch.where(signal < 0, radial.shrink * signal, signal)
        log_radial = torch.clamp(log_radial + radial.gain * signal, -radial.range, 0.0)
        w_hat = w * torch.rsqrt(ww + EPS)
        c = (u * w_hat).sum()
        u = u + (torch.exp(log_radial) - 1) * c * w_hat
        last_radial = c * _step_scale(weights, options, w)          # the coefficient of the step s = scale * u
    if hyper is not None:
        z = (g * last).sum() * sqrt_n * torch.rsqrt((g * g).sum() * (last * last).sum() + EPS)
        signal = torch.tanh(z)
        signal = torch.where(signal < 0, hyper.shrink * signal, signal)
        low = -hyper.range if hyper.floor is None else hyper.floor
        gain = torch.exp(torch.as_tensor(hyper.log_gain).to(device=w.device, dtype=dt))
        log_step = torch.clamp(log_step + gain * signal, low, hyper.range)
        s = _step_scale(weights, options, w) * u
        last = s * torch.rsqrt((s * s).sum() / count + EPS)        # s / rms(s), the controller's state
        u = u * torch.exp(log_step)
    scale = _step_scale(weights, options, w)
    decay = 1 - options.step_mult * options.lr * options.weight_decay
    new_w = (w * decay if options.weight_decay else w) - scale * u
    return new_w, ms, vs, last, log_step, log_radial, last_radial


def _torch_step(params, grads, momenta, rms, tf, weights, options, hyper, radial, inplace, chunk) -> FusedStep:
    nt = len(params)
    out_p, out_m, out_v = [], [[] for _ in momenta], [[] for _ in rms]
    out_ls, out_last, out_lr, out_lc = [], [], [], []
    for k in range(nt):
        p = params[k]
        flat = (lambda t: t.detach().reshape(-1))
        res = _torch_tensor(
            flat(grads[k]).to(p.dtype), flat(p), [flat(m[k]) for m in momenta], [flat(v[k]) for v in rms],
            flat(hyper.last_dir[k]) if hyper is not None else None,
            hyper.log_step[k].reshape(()) if hyper is not None else None,
            radial.log_radial[k].reshape(()) if radial is not None else None,
            radial.last_radial[k].reshape(()) if radial is not None else None,
            tf, weights, options, hyper, radial, chunk, radial_on=p.dim() > 0)
        new_w, ms, vs, last, log_step, log_radial, last_radial = res
        out_p.append(new_w.reshape(p.shape))
        for i, m in enumerate(ms):
            out_m[i].append(m.reshape(p.shape))
        for i, v in enumerate(vs):
            out_v[i].append(v.reshape(p.shape))
        keep = (1,) * p.dim()
        if hyper is not None:
            out_ls.append(log_step.reshape(keep))
            out_last.append(last.reshape(p.shape))
        if radial is not None:
            out_lr.append(log_radial.reshape(keep))
            out_lc.append(last_radial.reshape(keep))
    if inplace:
        torch._foreach_copy_(list(params), out_p)
        for old, new in zip([*momenta, *rms], [*out_m, *out_v]):
            torch._foreach_copy_(list(old), new)
        out_p, out_m, out_v = list(params), [list(m) for m in momenta], [list(v) for v in rms]
        if hyper is not None:
            torch._foreach_copy_(list(hyper.log_step), out_ls)
            torch._foreach_copy_(list(hyper.last_dir), out_last)
            out_ls, out_last = list(hyper.log_step), list(hyper.last_dir)
        if radial is not None:
            torch._foreach_copy_(list(radial.log_radial), out_lr)
            torch._foreach_copy_(list(radial.last_radial), out_lc)
            out_lr, out_lc = list(radial.log_radial), list(radial.last_radial)
    new_hyper = None if hyper is None else Hyper(out_ls, out_last, hyper.log_gain, hyper.range, hyper.shrink, hyper.floor)
    new_radial = None if radial is None else Radial(out_lr, out_lc, radial.gain, radial.range, radial.shrink)
    return FusedStep(out_p, out_m, out_v, new_hyper, new_radial)


# ---------------------------------------------------------------------------------------------- the function
@torch.no_grad()
def fused_celo_step(params: Sequence[Tensor], grads: Sequence[Tensor], momenta: Sequence[Sequence[Tensor]],
                    rms: Sequence[Sequence[Tensor]], step: int, horizon: int | None, weights: dict[str, Tensor],
                    options: CeloOptions, hyper: Hyper | None = None, radial: Radial | None = None, *,
                    inplace: bool = False, backend: str = "auto", chunk: int | None = None) -> FusedStep:
    """One step of the normalised MLP rule on every tensor of ``params``: the numbers of
    the celo core's update with its radial and hypergradient controllers, fast.

    Args:
        params, grads: one tensor each per parameter tensor, any shapes (0-d included), one dtype.
        momenta, rms: ``momenta[i][k]`` is tensor ``k``'s momentum with ``options.decays[i]`` (before
            this step), ``rms[i][k]`` its second moment with ``options.rms_decays[i]``; parameter shape.
        step: the number of updates made before this one (``state["step"]``); ``horizon``: the one given
            to ``init`` (or ``None``).
        weights: the rule's meta-parameters by name: ``layers.{i}.weight``/``bias``, ``skip``,
            ``log_scale`` (the core's ``state_dict()`` has them; :func:`celo_inputs`); through
            :func:`pack_weights` once for many calls with the same weights.
        options: the core's options. ``hyper``, ``radial``: the controllers with their per-tensor state
            (module docstring), or ``None`` where the rule has none.
        inplace: write the results into the given params and state tensors (and return them); otherwise
            every returned tensor is new and the inputs are left alone.
        backend: ``"auto"``, ``"c"`` (raise if the C kernel cannot serve the call) or ``"torch"``.
        chunk: coordinates per feature chunk in the torch formulation (``None``: ``CHUNK`` on the CPU,
            ``CHUNK_CUDA`` elsewhere).

    Returns:
        :class:`FusedStep`: the new params, momenta, second moments and controller states.

    Raises ``ValueError`` (naming the field) on mismatched lists or shapes, and on ``backend="c"``
    where the kernel does not apply (not CPU, float32/float64 and contiguous throughout, or another
    architecture than the shipped one) or cannot be built.
    """
    _check(params, grads, momenta, rms, weights, options, hyper, radial, backend)
    tf = _time_features(step, horizon, options.timescales)
    states = [t for group in (*momenta, *rms) for t in group]
    if hyper is not None:
        states += list(hyper.last_dir)
    if not params:
        return FusedStep([], [[] for _ in momenta], [[] for _ in rms],
                         None if hyper is None else Hyper([], [], hyper.log_gain, hyper.range, hyper.shrink, hyper.floor),
                         None if radial is None else Radial([], [], radial.gain, radial.range, radial.shrink))
    use_c = False
    if backend != "torch":
        applies = _kernel_applies(params, grads, states, weights, options)
        lib = _load_kernel() if applies else None
        if backend == "c" and lib is None:
            why = _lib_error if applies else ("the C kernel serves contiguous float32/float64 CPU tensors of one dtype "
                                              f"and the shipped architecture {_KERNEL_SHAPE}")
            raise ValueError(f"backend='c' cannot serve this call: {why}")
        use_c = lib is not None
    if use_c:
        return _c_step(params, grads, momenta, rms, tf, weights, options, hyper, radial, inplace)
    if chunk is None:
        chunk = CHUNK if params[0].device.type == "cpu" else CHUNK_CUDA
    return _torch_step(params, grads, momenta, rms, tf, weights, options, hyper, radial, inplace, chunk)


@torch.no_grad()
def fused_celo_members(params: Sequence[Tensor], grads: Sequence[Tensor], momenta: Sequence[Sequence[Tensor]],
                       rms: Sequence[Sequence[Tensor]], step: int, horizon: int | None, weights: dict[str, Tensor],
                       options: CeloOptions, hyper: Hyper | None = None, radial: Radial | None = None) -> FusedStep:
    """:func:`fused_celo_step` for ``P`` population members at once, member ``i`` with its own meta-parameters
    (what ``update_members`` computes for the evolution-strategies estimators), in one
    call of the C kernel.

    Every tensor has a leading member dim ``P``: params, grads, momenta, rms and ``last_dir`` of shape
    ``(P, *shape)``; the per-tensor controller state ``(P, 1, ...)`` (one value per member and tensor);
    every weight ``(P, *weight_shape)`` (``expand`` the shared ones) and ``hyper.log_gain`` ``(P,)``.
    Returns new tensors in the same layout. Raises ``ValueError`` where the C kernel cannot serve the call
    (it needs contiguous float32/float64 CPU tensors and the shipped architecture)."""
    if not params:
        raise ValueError("fused_celo_members needs at least one parameter tensor")
    P = params[0].shape[0] if params[0].dim() else 0
    for name, t in [("params", p) for p in params] + [(f"weights[{k!r}]", weights[k]) for k in (*WEIGHT_NAMES, "log_scale")]:
        if t.dim() == 0 or t.shape[0] != P:
            raise ValueError(f"{name} has shape {tuple(t.shape)}: every tensor needs the leading member dim {P}")
    member = [p[0] for p in params]
    _check(member, [g[0] for g in grads], [[t[0] for t in g] for g in momenta], [[t[0] for t in g] for g in rms],
           {k: v[0] for k, v in weights.items() if k in (*WEIGHT_NAMES, "log_scale")}, options,
           None if hyper is None else Hyper([t[0] for t in hyper.log_step], [t[0] for t in hyper.last_dir], 0.0,
                                            hyper.range, hyper.shrink, hyper.floor),
           None if radial is None else Radial([t[0] for t in radial.log_radial], [t[0] for t in radial.last_radial],
                                              radial.gain, radial.range, radial.shrink), "c")
    states = [t for group in (*momenta, *rms) for t in group] + (list(hyper.last_dir) if hyper is not None else [])
    packed = {k: weights[k][0] for k in (*WEIGHT_NAMES, "log_scale")}
    if not _kernel_applies(params, grads, states, packed, options) or _load_kernel() is None:
        raise ValueError("fused_celo_members runs on the C kernel: contiguous float32/float64 CPU tensors, the shipped "
                         f"architecture {_KERNEL_SHAPE}, and a C compiler ({_lib_error or 'found'})")
    lib, dtype, T = _load_kernel(), params[0].dtype, len(params)
    tf = _time_features(step, horizon, options.timescales)
    log_scale = weights["log_scale"].reshape(P).double().tolist()
    gains = hyper.log_gain.reshape(P).double().tolist() if hyper is not None else [None] * P
    cfg = torch.tensor([_config(options, tf, log_scale[i], gains[i], hyper, radial) for i in range(P)],
                       dtype=torch.float64)
    wt = torch.cat([weights[k].reshape(P, -1).to(torch.float64) for k in WEIGHT_NAMES], dim=1).contiguous()
    new_params = [torch.empty_like(p) for p in params]
    new_m = [[torch.empty_like(t) for t in group] for group in momenta]
    new_v = [[torch.empty_like(t) for t in group] for group in rms]
    last = hyper.last_dir if hyper is not None else grads
    new_last = [torch.empty_like(t) for t in hyper.last_dir] if hyper is not None else None
    numel = [p[0].numel() for p in params]
    scratch = torch.empty(max(numel), dtype=dtype) if hyper is None else None
    columns = [grads, params, *momenta, *rms, last, new_params, *new_m, *new_v]
    base = [[t.data_ptr() for t in col] for col in columns]
    base.append([t.data_ptr() for t in new_last] if new_last is not None else [0] * T)
    base.append([scratch.data_ptr()] * T if scratch is not None else [0] * T)
    base_t = torch.tensor(base, dtype=torch.int64).T                                  # (T, 20)
    stride = torch.tensor([n * params[0].element_size() for n in numel], dtype=torch.int64)
    moving = torch.ones(20, dtype=torch.int64)
    moving[19] = 0                                                                    # the scratch is shared
    if new_last is None:
        moving[18] = 0
    offsets = torch.arange(P, dtype=torch.int64)[:, None, None] * stride[None, :, None] * moving   # (P, T, 20)
    ptrs = (base_t[None] + offsets).contiguous()
    ctl_in = torch.zeros(P, T, 3, dtype=torch.float64)
    if hyper is not None:
        ctl_in[..., 0] = torch.stack([t.reshape(P) for t in hyper.log_step], 1)
    if radial is not None:
        ctl_in[..., 1] = torch.stack([t.reshape(P) for t in radial.log_radial], 1)
        ctl_in[..., 2] = torch.stack([t.reshape(P) for t in radial.last_radial], 1)
    ctl_out = torch.empty_like(ctl_in)
    numel_t = torch.tensor(numel * P, dtype=torch.int64)
    zero_dim = torch.tensor([p.dim() == 1 for p in params] * P, dtype=torch.int64)
    sets = torch.arange(P, dtype=torch.int64).repeat_interleave(T)
    fn = lib.celo_step_f32 if dtype == torch.float32 else lib.celo_step_f64
    fn(P * T, numel_t.data_ptr(), zero_dim.data_ptr(), sets.data_ptr(), ptrs.data_ptr(), cfg.data_ptr(), wt.data_ptr(),
       ctl_in.data_ptr(), ctl_out.data_ptr())

    def per_tensor(column: int, like: list[Tensor]) -> list[Tensor]:
        return [ctl_out[:, k, column].to(dtype).reshape(t.shape) for k, t in enumerate(like)]

    new_hyper = new_radial = None
    if hyper is not None:
        new_hyper = Hyper(per_tensor(0, hyper.log_step), new_last, hyper.log_gain, hyper.range, hyper.shrink, hyper.floor)
    if radial is not None:
        new_radial = Radial(per_tensor(1, radial.log_radial), per_tensor(2, radial.last_radial), radial.gain,
                            radial.range, radial.shrink)
    return FusedStep(new_params, new_m, new_v, new_hyper, new_radial)


def celo_inputs(rule) -> tuple[dict[str, Tensor], CeloOptions, dict]:
    """The weights, the options and the controllers' settings of a celo rule (a :class:`~.celo.Celo` core,
    alone or in a :class:`~.controllers.Controlled` with the radial gain and/or the hypergradient step size,
    in that order): ``(weights, options, {"hyper": {...} or None, "radial": {...} or None})``. The outer
    ``lr`` of a controlled rule is folded into ``options.lr``. Raises ``ValueError`` for what the fused step
    does not implement (other controllers or orders, the hypergradient's momentum, weight decay under
    controllers, a population dim)."""
    from .celo import Celo
    from .controllers import Controlled
    core, controllers, outer = rule, {}, 1.0
    if isinstance(rule, Controlled):
        core, controllers, outer = rule.core, dict(rule.controllers), rule.lr
    if not isinstance(core, Celo):
        raise ValueError(f"the fused step applies the celo core, not {type(core).__name__}; use the rule's update")
    order = list(controllers)
    if order not in ([], ["radial"], ["hypergradient"], ["radial", "hypergradient"]):
        raise ValueError(f"the fused step implements the radial gain and the hypergradient step size (in that order), "
                         f"not the controllers {order}; use the rule's update")
    hd, rad = controllers.get("hypergradient"), controllers.get("radial")
    if hd is not None and hd.momentum > 0:
        raise ValueError("the fused step does not implement the hypergradient's momentum; use the rule's update")
    if controllers and core.weight_decay:
        raise ValueError("the fused step applies weight decay outside the controllers: with controllers, use the "
                         "rule's update")
    if getattr(rule, "population_dim", None) is not None or getattr(core, "population_dim", None) is not None:
        raise ValueError("the fused step runs one problem at a time: population_dim must be unset")
    weights = {k: v.detach() for k, v in core.state_dict().items()}
    options = CeloOptions(step_mult=core.step_mult, lr=float(core.lr) * float(outer), magnitude=core.magnitude,
                          output_norm=core.output_norm, weight_decay=core.weight_decay,
                          decays=tuple(core.decays), rms_decays=tuple(core.rms_decays),
                          timescales=tuple(core.step_timescales))

    def gain(c) -> float:
        return float(torch.exp(c.log_gain.detach().double())) if c.learn_gain else c.gain_value

    ctl = {"hyper": None, "radial": None}
    if hd is not None:
        ctl["hyper"] = {"log_gain": hd.log_gain.detach() if hd.learn_gain else math.log(hd.gain_value),
                        "range": hd.range, "shrink": hd.shrink, "floor": hd.floor}
    if rad is not None:
        ctl["radial"] = {"gain": gain(rad), "range": rad.range, "shrink": rad.shrink}
    return weights, options, ctl


_RULE_CACHE: dict[int, tuple] = {}   # id(rule) -> (key, packed weights, options, controllers): see rule_step


def _rule_inputs(rule) -> tuple[dict[str, Tensor], CeloOptions, dict]:
    """:func:`celo_inputs` with the weights packed once, cached while the rule's tensors are unchanged."""
    tensors = list(rule.state_dict(keep_vars=True).values())
    key = (rule.lr if hasattr(rule, "lr") else None, tuple((t.data_ptr(), t._version, t.dtype) for t in tensors))
    hit = _RULE_CACHE.get(id(rule))
    if hit is not None and hit[0] == key:
        return hit[1:]
    weights, options, ctl = celo_inputs(rule)
    if not _shipped_architecture(weights, options):
        raise ValueError(f"the C kernel is built for the architecture {_KERNEL_SHAPE}")
    packed = pack_weights(weights)
    if len(_RULE_CACHE) > 64:
        _RULE_CACHE.clear()
    _RULE_CACHE[id(rule)] = (key, packed, options, ctl)
    return packed, options, ctl


def _has_storage(t: Tensor) -> bool:
    try:
        t.data_ptr()
    except RuntimeError:
        return False
    return True


def _rule_call(rule, p_list: list[Tensor], g_list: list[Tensor], bufs: dict[str, list[Tensor]], step: int,
               horizon: int | None, inplace: bool) -> dict[str, list[Tensor]] | None:
    """The fused step of ``rule`` on lists (``bufs``: the rule's state entries, one list each); the new params
    under ``"params"`` and the new state entries by their keys, or ``None`` where it does not apply."""
    if not p_list or not _serves(rule):
        return None
    if not all(_has_storage(t) for t in (*p_list, *g_list)):
        return None   # under vmap or another transform: the rule's own update
    try:
        weights, options, ctl = _rule_inputs(rule)
    except (ValueError, RuntimeError):   # options it does not implement; transformed meta-parameters
        return None
    core = getattr(rule, "core", rule)
    hyper = radial = None
    if ctl["hyper"] is not None:
        hyper = Hyper(bufs["hypergradient.log_step"], bufs["hypergradient.last_dir"], **ctl["hyper"])
    if ctl["radial"] is not None:
        radial = Radial(bufs["radial.log_radial"], bufs["radial.last_radial"], **ctl["radial"])
    momenta = [bufs[k] for k in core.momentum_keys]
    rms = [bufs[k] for k in core.rms_keys]
    g_list = [g if g.dtype == p.dtype else g.to(p.dtype) for g, p in zip(g_list, p_list)]
    states = [t for group in (*momenta, *rms) for t in group] + (list(hyper.last_dir) if hyper is not None else [])
    if not _kernel_applies(p_list, g_list, states, weights, options) or _load_kernel() is None:
        return None
    out = fused_celo_step(p_list, g_list, momenta, rms, step, horizon, weights, options, hyper, radial,
                          inplace=inplace, backend="c")
    return {"params": out.params, **_entries(rule, core, out, inplace)}


def _serves(rule) -> bool:
    """The cheap checks, before any work: no meta-gradient asked for, not turned off (``LEARNED_OPT_FUSED=off``),
    a celo core, one problem at a time (no population dim, not inside a rule's own members' path). What the
    fused step implements of the rule's options is :func:`celo_inputs`'s to check."""
    from .celo import Celo
    core = getattr(rule, "core", rule)
    if torch.is_grad_enabled() or os.environ.get("LEARNED_OPT_FUSED") == "off" or not isinstance(core, Celo):
        return False
    parts = (rule, core, *getattr(rule, "controllers", {}).values())
    return all(getattr(p, "population_dim", None) is None and getattr(p, "_members", None) is None for p in parts)


def _entries(rule, core, out: FusedStep, inplace: bool) -> dict[str, list[Tensor]]:
    """The rule's new state entries (by their keys, one list each) from a fused step's output. The kernel's
    radial coefficient is that of the step with the outer ``lr`` of a controlled rule folded in
    (:func:`celo_inputs`); the rule's own excludes it."""
    new = dict(zip((*core.momentum_keys, *core.rms_keys), (*out.momenta, *out.rms)))
    if out.hyper is not None:
        new["hypergradient.log_step"], new["hypergradient.last_dir"] = out.hyper.log_step, out.hyper.last_dir
    if out.radial is not None:
        outer = rule.lr if rule is not core else 1.0
        last = out.radial.last_radial
        if outer != 1:
            last = [c.div_(outer) for c in last] if inplace else [c / outer for c in last]
        new["radial.log_radial"], new["radial.last_radial"] = out.radial.log_radial, last
    return new


def _next_state(state: dict, names: list[str], entries: dict[str, list[Tensor]]) -> dict:
    """The rule's state after this step: the new entries by parameter name, the step count, the horizon kept."""
    new_state = {"step": state["step"] + 1, **{k: dict(zip(names, v)) for k, v in entries.items()}}
    if "horizon" in state:
        new_state["horizon"] = state["horizon"]
    return new_state


def rule_step(rule, grads: dict[str, Tensor], state: dict, params: dict[str, Tensor]) -> tuple[dict, dict] | None:
    """``rule.update(grads, state, params)`` through :func:`fused_celo_step` (pure: new tensors), for a celo
    rule :func:`celo_inputs` accepts and the C kernel serves (contiguous float32/float64 CPU tensors of the
    shipped architecture); ``None`` where it does not apply, so the caller takes the rule's own update.
    The rule's state layout is kept: ``momentum_<d>``, ``rms_<b>``, ``hypergradient.log_step`` /
    ``.last_dir``, ``radial.log_radial`` / ``.last_radial``."""
    names = list(params)
    bufs = {k: [v[n] for n in names] for k, v in state.items() if isinstance(v, dict)}
    new = _rule_call(rule, [params[n] for n in names], [grads[n] for n in names], bufs, state["step"],
                     state.get("horizon"), inplace=False)
    if new is None:
        return None
    new_params = dict(zip(names, new.pop("params")))
    return new_params, _next_state(state, names, new)


def rule_step_(rule, grads: list[Tensor], bufs: dict[str, list[Tensor]], params: list[Tensor],
               step: int) -> dict[str, list[Tensor]] | None:
    """The in-place form the ``torch.optim`` adapter calls (``update_``): params and state buffers written in
    place through the C kernel; the state entries returned; ``None`` where the fused step does not apply."""
    new = _rule_call(rule, list(params), list(grads), bufs, step, None, inplace=True)
    if new is not None:
        new.pop("params")
    return new


def members_step(rule, meta: dict[str, Tensor], grads: dict[str, Tensor], state: dict,
                 params: dict[str, Tensor]) -> tuple[dict, dict] | None:
    """``rule.update_members(meta, grads, state, params)`` through :func:`fused_celo_members` (every member with
    its own meta-parameters, one kernel call), or ``None`` where it does not apply (then the rule's own
    ``update_members``). Names in ``meta`` are the rule's (``core.``-prefixed for a controlled rule); a learned
    radial gain is not implemented here."""
    if not params or not _serves(rule):
        return None
    try:
        weights, options, ctl = _rule_inputs(rule)
    except (ValueError, RuntimeError):
        return None
    core = getattr(rule, "core", rule)
    prefix = "core." if core is not rule else ""
    if any(k.startswith("controllers.radial.") for k in meta):
        return None
    names = list(params)
    P = params[names[0]].shape[0] if params[names[0]].dim() else 0
    if P == 0 or any(p.dim() == 0 or p.shape[0] != P for p in params.values()):
        return None
    member_w = {}
    for k in (*WEIGHT_NAMES, "log_scale"):
        v = meta.get(prefix + k)
        member_w[k] = v if v is not None else weights[k].expand(P, *weights[k].shape)
    hyper = radial = None
    if ctl["hyper"] is not None:
        gain = meta.get("controllers.hypergradient.log_gain")
        if gain is None:
            gain = torch.full((P,), _scalar(ctl["hyper"]["log_gain"]), dtype=torch.float64)
        hyper = Hyper([state["hypergradient.log_step"][n] for n in names],
                      [state["hypergradient.last_dir"][n] for n in names], gain,
                      ctl["hyper"]["range"], ctl["hyper"]["shrink"], ctl["hyper"]["floor"])
    if ctl["radial"] is not None:
        radial = Radial([state["radial.log_radial"][n] for n in names],
                        [state["radial.last_radial"][n] for n in names], **ctl["radial"])
    try:
        out = fused_celo_members([params[n] for n in names], [grads[n].to(params[n].dtype) for n in names],
                                 [[state[k][n] for n in names] for k in core.momentum_keys],
                                 [[state[k][n] for n in names] for k in core.rms_keys],
                                 state["step"], state.get("horizon"), member_w, options, hyper, radial)
    except ValueError:
        return None
    return dict(zip(names, out.params)), _next_state(state, names, _entries(rule, core, out, inplace=False))


def applies(rule) -> bool:
    """Whether the fused C step can serve ``rule`` (its options and architecture, a C compiler here)."""
    try:
        _rule_inputs(rule)
    except (ValueError, RuntimeError):
        return False
    return _load_kernel() is not None and os.environ.get("LEARNED_OPT_FUSED") != "off"


class FusedCeloOptimizer(torch.optim.Optimizer):
    """A ``torch.optim`` optimizer over :func:`fused_celo_step` (in place) for a celo ``rule`` (e.g.
    ``learned_opt.load("celo")``) with any backend: the rule's numbers at the fused step's cost.
    ``baselines.RuleOptimizer`` over the rule takes the same C step by itself (``FusedStepRule.update_``);
    this class also serves the torch formulation (``backend="torch"``, other devices).

    State per parameter: the momenta and second moments, and with the controllers ``last_dir``
    (parameter shape) and ``log_step``, ``log_radial``, ``last_radial`` (one value each, keepdim shape).
    ``horizon``: as ``rule.init(params, horizon)``. One param group; every parameter gets a gradient each
    step or none (a parameter without ``.grad`` is skipped, as torch's optimizers do)."""

    def __init__(self, params, rule, horizon: int | None = None, backend: str = "auto"):
        super().__init__(params, {})
        if len(self.param_groups) != 1:
            raise ValueError(f"FusedCeloOptimizer takes one param group, got {len(self.param_groups)}")
        weights, self.options, ctl = celo_inputs(rule)
        self.weights = pack_weights(weights)   # a snapshot: the rule's meta-parameters as they are now
        self.hyper_cfg, self.radial_cfg = ctl["hyper"], ctl["radial"]
        self.horizon, self.backend = horizon, backend

    def _state(self, p: Tensor) -> dict:
        st = self.state[p]
        if not st:
            o = self.options
            st["momenta"] = [torch.zeros_like(p) for _ in o.decays]
            st["rms"] = [torch.zeros_like(p) for _ in o.rms_decays]
            keep = (1,) * p.dim()
            if self.hyper_cfg:
                st["log_step"], st["last_dir"] = p.new_zeros(keep), torch.zeros_like(p)
            if self.radial_cfg:
                st["log_radial"], st["last_radial"] = p.new_zeros(keep), p.new_zeros(keep)
            st["step"] = 0
        return st

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for p in self.param_groups[0]["params"] if p.grad is not None]
        if not params:
            return loss
        states = [self._state(p) for p in params]
        steps = {st["step"] for st in states}
        if len(steps) != 1:
            raise ValueError(f"parameters at different step counts {sorted(steps)}: give every one a gradient")
        hyper = radial = None
        if self.hyper_cfg:
            hyper = Hyper([st["log_step"] for st in states], [st["last_dir"] for st in states], **self.hyper_cfg)
        if self.radial_cfg:
            radial = Radial([st["log_radial"] for st in states], [st["last_radial"] for st in states], **self.radial_cfg)
        fused_celo_step(params, [p.grad for p in params],
                        [[st["momenta"][i] for st in states] for i in range(len(self.options.decays))],
                        [[st["rms"][i] for st in states] for i in range(len(self.options.rms_decays))],
                        steps.pop(), self.horizon, self.weights, self.options, hyper, radial,
                        inplace=True, backend=self.backend)
        for st in states:
            st["step"] += 1
        return loss
