"""Loss-landscape math (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets").

Everything here works on parameter dictionaries (the ``Params`` convention of the
tasks and the rules) and a ``loss_fn(params) -> scalar tensor`` that is a plain
function of them (e.g. ``lambda p: task.loss(p, fixed_batch)``)::

    d1 = random_direction(theta, g)                  # Gaussian, filter-normalised to theta
    losses = interpolate_1d(loss_fn, theta0, theta1, alphas)          # (len(alphas),)
    surface = grid_2d(loss_fn, theta, d1, d2, xs, ys)                 # (len(ys), len(xs))
    pca = pca_trajectory(snapshots, theta)          # two unit directions + coordinates

Filter normalisation (Li et al., section 4): a direction ``d`` is drawn from
``N(0, I)`` with the shapes of the parameters; then for every *filter* ``i`` of a
parameter ``w`` with two or more dimensions -- a row ``w[i, :]`` of a linear
layer's ``(out, in)`` weight, an output channel ``w[i, :, :, :]`` of a conv
kernel ``(out, in, kh, kw)``, i.e. a slice along the first dimension --
``d[i] <- d[i] / |d[i]| * |w[i]|`` (Frobenius norms). Parameters with one or
zero dimensions (biases, normalisation scales) get the zero direction
(``ignore_biases=True``, Li et al.'s "ignore biasbn" option: the plot does not move
them); with ``ignore_biases=False`` their direction is the parameter itself, as in
Li et al.'s code when biases are not ignored.

Loss evaluations over many points are batched: the points are given as
coordinates ``c`` (shape ``(N, k)``) in a span ``theta(c) = centre + sum_j c_j d_j``
and evaluated ``chunk_size`` at a time with ``torch.func.vmap`` under
``no_grad`` (a Python loop with ``vmap=False``, for losses vmap cannot trace).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

Params = dict[str, Tensor]
LossFn = Callable[[Params], Tensor]

__all__ = ["flatten", "unflatten", "filter_normalize", "random_direction", "combine", "losses_at",
           "interpolate_1d", "grid_2d", "PCAResult", "pca_trajectory"]


# --------------------------------------------------------------------------- vectors of parameters


def flatten(params: Params) -> Tensor:
    """All parameters concatenated into one vector, in the dictionary's order."""
    return torch.cat([p.reshape(-1) for p in params.values()])


def unflatten(vector: Tensor, like: Params) -> Params:
    """Split ``vector`` back into tensors with the names and shapes of ``like``."""
    total = sum(p.numel() for p in like.values())
    if vector.dim() != 1 or vector.numel() != total:
        raise ValueError(f"vector must have shape ({total},) to fill {len(like)} parameters; "
                         f"got {tuple(vector.shape)}")
    out, start = {}, 0
    for name, p in like.items():
        out[name] = vector[start:start + p.numel()].reshape(p.shape).to(p.dtype)
        start += p.numel()
    return out


def _check_same_keys(a: Params, b: Params, what: str) -> None:
    if list(a) != list(b) or any(a[k].shape != b[k].shape for k in a):
        raise ValueError(f"{what}: parameter names/shapes differ: "
                         f"{[(k, tuple(v.shape)) for k, v in a.items()]} vs {[(k, tuple(v.shape)) for k, v in b.items()]}")


# --------------------------------------------------------------------------- directions


def filter_normalize(direction: Params, params: Params, ignore_biases: bool = True, eps: float = 1e-10) -> Params:
    """Rescale every filter of ``direction`` to the norm of the same filter of ``params``.

    A filter is a slice along the first dimension of a parameter with two or more
    dimensions (a row of a linear weight, an output channel of a conv kernel).
    One-dimensional parameters (biases) and scalars become zero with
    ``ignore_biases`` (default), else a copy of the parameter. Returns new tensors.
    """
    _check_same_keys(direction, params, "filter_normalize(direction, params)")
    out = {}
    for name, w in params.items():
        d = direction[name]
        if w.dim() <= 1:
            out[name] = torch.zeros_like(w) if ignore_biases else w.detach().clone()
            continue
        d_norm = d.reshape(d.shape[0], -1).norm(dim=1)
        w_norm = w.detach().reshape(w.shape[0], -1).norm(dim=1)
        scale = (w_norm / (d_norm + eps)).reshape(-1, *([1] * (w.dim() - 1)))
        out[name] = d * scale
    return out


def random_direction(params: Params, generator: torch.Generator, ignore_biases: bool = True) -> Params:
    """A Gaussian direction with the shapes of ``params``, filter-normalised to them.

    Drawn in float32 on ``generator.device`` in the dictionary's order (so a seed
    gives the same direction for the same parameter shapes), then cast to each
    parameter's dtype and device.
    """
    draw = {name: torch.randn(w.shape, generator=generator, device=generator.device).to(w.device, w.dtype)
            for name, w in params.items()}
    return filter_normalize(draw, params, ignore_biases=ignore_biases)


# --------------------------------------------------------------------------- batched loss evaluation


def combine(center: Params, directions: Sequence[Params], coords: Tensor) -> Params:
    """``center + sum_j coords[j] * directions[j]`` for one point ``coords`` of shape ``(k,)``."""
    out = {}
    for name, c in center.items():
        value = c
        for j, d in enumerate(directions):
            value = value + coords[j].to(c.dtype) * d[name]
        out[name] = value
    return out


def _evaluate(point_loss: Callable[[Tensor], Tensor], coords: Tensor, chunk_size: int | None, vmap: bool,
              progress: bool | str) -> Tensor:
    """``point_loss(coords[i])`` for every row ``i``, in chunks, under ``no_grad``."""
    if coords.dim() != 2:
        raise ValueError(f"coords must have shape (points, k); got {tuple(coords.shape)}")
    n = coords.shape[0]
    if chunk_size is None:
        chunk_size = max(n, 1)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None; got {chunk_size!r}")
    starts = range(0, n, chunk_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=progress if isinstance(progress, str) else "loss landscape",
                      total=(n + chunk_size - 1) // chunk_size, leave=False)
    batched = torch.func.vmap(point_loss) if vmap else None
    out = []
    with torch.no_grad():
        for start in starts:
            chunk = coords[start:start + chunk_size]
            if batched is not None:
                out.append(batched(chunk).reshape(-1))
            else:
                out.append(torch.stack([point_loss(c).reshape(()) for c in chunk]))
    return torch.cat(out) if out else coords.new_zeros(0)


def losses_at(loss_fn: LossFn, center: Params, directions: Sequence[Params], coords: Tensor, *,
              chunk_size: int | None = 256, vmap: bool = True, progress: bool | str = False) -> Tensor:
    """Loss at ``center + sum_j coords[i, j] * directions[j]`` for every row of ``coords`` ``(N, k)``."""
    for j, d in enumerate(directions):
        _check_same_keys(d, center, f"directions[{j}] vs center")
    if coords.dim() != 2 or coords.shape[1] != len(directions):
        raise ValueError(f"coords must have shape (points, {len(directions)}); got {tuple(coords.shape)}")
    return _evaluate(lambda c: loss_fn(combine(center, directions, c)), coords, chunk_size, vmap, progress)


def interpolate_1d(loss_fn: LossFn, start: Params, end: Params, alphas: Tensor | Sequence[float], *,
                   chunk_size: int | None = 256, vmap: bool = True, progress: bool | str = False) -> Tensor:
    """Loss at ``(1 - alpha) * start + alpha * end`` for each ``alpha`` (Goodfellow et al. 2015).

    The convex-combination form is exact at the endpoints: ``alpha = 0`` gives
    ``start`` and ``alpha = 1`` gives ``end`` bit for bit.
    """
    _check_same_keys(start, end, "interpolate_1d(start, end)")
    first = next(iter(start.values()))
    alphas = torch.as_tensor(alphas, dtype=first.dtype, device=first.device).reshape(-1, 1)

    def point_loss(a: Tensor) -> Tensor:
        return loss_fn({k: (1 - a[0]) * start[k] + a[0] * end[k] for k in start})

    return _evaluate(point_loss, alphas, chunk_size, vmap, progress)


def grid_2d(loss_fn: LossFn, center: Params, d1: Params, d2: Params, xs: Tensor | Sequence[float],
            ys: Tensor | Sequence[float], *, chunk_size: int | None = 256, vmap: bool = True,
            progress: bool | str = False) -> Tensor:
    """Loss at ``center + x * d1 + y * d2`` on the grid ``xs`` x ``ys``: shape ``(len(ys), len(xs))``.

    Row ``i``, column ``j`` is the point ``(xs[j], ys[i])``, the layout ``plt.contour(xs, ys, Z)`` expects.
    """
    first = next(iter(center.values()))
    xs = torch.as_tensor(xs, dtype=first.dtype, device=first.device).reshape(-1)
    ys = torch.as_tensor(ys, dtype=first.dtype, device=first.device).reshape(-1)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    values = losses_at(loss_fn, center, [d1, d2], coords, chunk_size=chunk_size, vmap=vmap, progress=progress)
    return values.reshape(len(ys), len(xs))


# --------------------------------------------------------------------------- PCA of a trajectory


@dataclass
class PCAResult:
    """Top principal directions of a trajectory and the trajectory in their coordinates.

    directions: unit vectors (as parameter dictionaries), orthonormal in the flattened space.
    coords: ``(T, n_components)`` coordinates of ``theta_i - final`` along them (the final point is 0).
    explained_variance_ratio: ``(n_components,)`` fraction of the trajectory's variance per direction.
    """

    directions: list[Params]
    coords: Tensor
    explained_variance_ratio: Tensor


def pca_trajectory(trajectory: Sequence[Params], final: Params, n_components: int = 2,
                   center: bool = True) -> PCAResult:
    """PCA of the matrix whose rows are ``flatten(theta_i) - flatten(final)`` (Li et al., section 7).

    As in Li et al.'s code (sklearn's PCA), the rows are mean-centred before the
    SVD when ``center`` is true; the coordinates are the projections of the
    *uncentred* rows ``theta_i - final`` so the final point sits at the origin.
    Each direction's sign is chosen so the first snapshot has a coordinate >= 0.
    Computed in float64.
    """
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer; got {n_components!r}")
    if len(trajectory) < n_components + int(center):
        raise ValueError(f"pca_trajectory needs at least {n_components + int(center)} snapshots for "
                         f"{n_components} components; got {len(trajectory)}")
    for i, snap in enumerate(trajectory):
        _check_same_keys(snap, final, f"trajectory[{i}] vs final")
    theta_final = flatten(final).double()
    rows = torch.stack([flatten(s).double() - theta_final for s in trajectory])
    fit = rows - rows.mean(dim=0, keepdim=True) if center else rows
    _, s, vh = torch.linalg.svd(fit, full_matrices=False)
    total = (s ** 2).sum()
    if total <= 0:
        raise ValueError("pca_trajectory: the trajectory does not move (all snapshots are equal)")
    if vh.shape[0] < n_components:
        raise ValueError(f"pca_trajectory: only {vh.shape[0]} components exist; asked for {n_components}")
    components = vh[:n_components]
    coords = rows @ components.T
    signs = torch.where(coords[0] < 0, -1.0, 1.0).to(coords.dtype)
    components, coords = components * signs[:, None], coords * signs
    ratio = (s[:n_components] ** 2) / total
    dtype = next(iter(final.values())).dtype
    return PCAResult(directions=[unflatten(c.to(dtype), final) for c in components],
                     coords=coords.to(dtype), explained_variance_ratio=ratio.to(dtype))
