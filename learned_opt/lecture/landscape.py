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

The experiment around the math (a config checked against :data:`SCHEMA`, a network trained from
``theta_0`` keeping its weights every few steps, losses on a fixed set of examples, and every slice
of one trained network at once)::

    task, eval_task, rules = build(cfg, device)     # the training task, its whole-split twin, the rules
    theta0, result, snapshots = train_with_snapshots(task, rule, steps, every, g)
    s = slices(fixed_loss(eval_task, "train"), fixed_loss(eval_task, "test"), theta0, result.params,
               [snap["params"] for snap in snapshots], alphas=alphas, span=span, generator=g_dir)
    s.barrier, s.contour, s.pca_grid, s.summary()   # numbers, grids, a JSON-able dict
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from baselines import RULES
from baselines.checks import check_int
from baselines.base import UpdateRule

from ..schema import (WANDB, ConfigError, Field, boolean, check, check_call, check_choice, delegated,
                      device as device_field, integer, number, optional)
from ..tasks import TASKS
from ..tasks.base import Task
from ..unroll import UnrollResult, unroll
from ..utils import generator as seeded_generator
from ..evaluation.suite import build_task

Params = dict[str, Tensor]
LossFn = Callable[[Params], Tensor]

__all__ = ["flatten", "unflatten", "filter_normalize", "random_direction", "combine", "losses_at",
           "interpolate_1d", "grid_2d", "PCAResult", "pca_trajectory", "SCHEMA", "check_config", "build",
           "fixed_batch", "fixed_loss", "train_with_snapshots", "grid_around", "barrier", "Slices", "slices"]


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
    check_int("chunk_size", chunk_size, 1)
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
    check_int("n_components", n_components, 1)
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


# --------------------------------------------------------------------------- the experiment: config and training

POSITIVE = number(0, low_open=True)
SCHEMA = {  # the fields of configs/loss_landscape.yaml; task and optimizers are checked by their constructors
    "seed": Field(integer(0)), "steps": Field(integer(1)), "record_every": Field(integer(1)),
    "device": Field(device_field), "task": Field(delegated, required=True),
    "optimizers": Field(delegated, required=True),
    "eval_examples": Field(optional(integer(1))), "chunk_size": Field(integer(1)), "vmap": Field(boolean),
    "interpolation": {"alpha_min": Field(number(high=0)), "alpha_max": Field(number(1)), "points": Field(integer(3)),
                      "logy": Field(boolean)},
    "contour": {"span": Field(POSITIVE), "resolution": Field(integer(3)), "ignore_biases": Field(boolean)},
    "pca": {"resolution": Field(integer(3)), "margin": Field(number(0)), "center": Field(boolean)},
    "num_levels": Field(integer(2)),
    "figure": {"width": Field(POSITIVE), "height": Field(POSITIVE), "dpi": Field(POSITIVE)},
    "wandb": WANDB,
}


def check_config(cfg: dict) -> None:
    """Check the config (a plain dict) against :data:`SCHEMA`, that the kept weights are enough for the
    trajectory's PCA, and that every optimizer entry names a rule its hyperparameters fit."""
    check(cfg, SCHEMA)
    steps, every = cfg["steps"], cfg["record_every"]
    snapshots = steps // every + (1 if steps % every == 0 else 2)  # steps 0, k, 2k, ... plus the final weights
    if snapshots < 3:
        raise ConfigError(f"record_every={every} is not allowed with steps={steps}: it keeps {snapshots} "
                          f"snapshots and the PCA of the trajectory needs at least 3; allowed: record_every < steps "
                          f"(and steps >= 2)")
    optimizers = cfg["optimizers"]
    if not isinstance(optimizers, Mapping) or not optimizers:
        raise ConfigError(f"optimizers={optimizers!r} is not allowed; allowed: a non-empty mapping label -> "
                          f"{{rule, hyperparameters}}")
    for label, entry in optimizers.items():
        if not isinstance(entry, Mapping) or "rule" not in entry:
            raise ConfigError(f"optimizers.{label}={entry!r} is not allowed; allowed: a mapping with `rule` (one of "
                              f"{', '.join(RULES)}) and its hyperparameters")
        name = check_choice(f"optimizers.{label}.rule", entry["rule"], tuple(RULES))
        hparams = {k: v for k, v in entry.items() if k != "rule"}
        check_call(f"optimizers.{label}", f"rule {name!r}", RULES[name], hparams)
    if not isinstance(cfg["task"], Mapping):
        raise ConfigError(f"task={cfg['task']!r} is not allowed; allowed: a mapping with `name` and the task's options")
    check_choice("task.name", cfg["task"].get("name"), tuple(TASKS))


def build(cfg: dict, device: torch.device) -> tuple[Task, Task, dict[str, tuple[str, dict]]]:
    """Check the config (:func:`check_config`) and build the training task, its landscape twin (whole
    splits, no dropout: every loss evaluation sees the same examples) and label -> (rule name,
    hyperparameters) per optimizer."""
    check_config(cfg)
    task = build_task("task", cfg["task"], device)
    eval_task = build_task("task", cfg["task"], device, batch_size=None,
                           **({"dropout": 0.0} if "dropout" in cfg["task"] else {}))
    rules = {label: (entry["rule"], {k: v for k, v in entry.items() if k != "rule"})
             for label, entry in cfg["optimizers"].items()}
    return task, eval_task, rules


def fixed_batch(task: Task, split: str, n: int | None = None) -> tuple:
    """The first ``n`` examples of ``split`` (all with None) of a task built with ``batch_size=None``:
    a batch that is the same at every call."""
    batch = task.sample_batch(seeded_generator(0), split)  # the whole split: nothing is drawn
    return batch if n is None else tuple(t[:n] for t in batch)


def fixed_loss(task: Task, split: str, n: int | None = None) -> LossFn:
    """``params -> task.loss(params, fixed_batch(task, split, n))``."""
    batch = fixed_batch(task, split, n)
    return lambda params: task.loss(params, batch)


def train_with_snapshots(task: Task, rule: UpdateRule, steps: int, every: int, generator: torch.Generator, *,
                         progress: bool | str = False) -> tuple[Params, UnrollResult, list[dict]]:
    """Train ``steps`` updates from ``task.init_params(generator)`` through ``unroll`` (batches from the
    same generator), keeping a copy of the weights every ``every`` steps and after the last update.

    Returns ``(theta_0, result, snapshots)``, each snapshot ``{"step", "params"}``. A run that diverges
    warns and ends its snapshots with its last finite weights (``result.params``).
    """
    params = task.init_params(generator)

    def keep(step: int, p: Params, loss: Tensor) -> dict:
        return {"step": step, "params": {k: v.detach().clone() for k, v in p.items()}}

    res = unroll(task, rule, params, rule.init(params), steps, generator, callback=keep, callback_every=every,
                 progress=progress)
    if res.diverged:
        warnings.warn(f"{progress or 'training'} diverged at step {res.diverged_at} ({res.reason}); the landscape "
                      f"is drawn around its last finite weights", RuntimeWarning, stacklevel=2)
        res.records.append({"step": res.steps_done, "params": res.params})
    return params, res, res.records


def grid_around(coords: np.ndarray, margin: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Axis grids of ``n`` points covering the points ``coords`` ``(T, 2)`` and the origin, widened on each
    side by ``margin`` times their extent along that axis."""
    axes = []
    for k in range(2):
        lo, hi = min(coords[:, k].min(), 0.0), max(coords[:, k].max(), 0.0)
        pad = margin * max(hi - lo, 1e-8)
        axes.append(np.linspace(lo - pad, hi + pad, n))
    return axes[0], axes[1]


def barrier(alphas: np.ndarray, losses: np.ndarray, start_loss: float, end_loss: float) -> float:
    """The largest rise of ``losses`` (at ``alphas``) above the straight line from ``start_loss`` at
    alpha = 0 to ``end_loss`` at alpha = 1, over the alphas in ``[0, 1]`` (0 or less: no barrier)."""
    alphas, losses = np.asarray(alphas), np.asarray(losses)
    inside = (alphas >= 0) & (alphas <= 1)
    return float(np.max(losses[inside] - ((1 - alphas[inside]) * start_loss + alphas[inside] * end_loss)))


# --------------------------------------------------------------------------- every slice of one network


@dataclass
class Slices:
    """The landscape of one trained network (:func:`slices`). Grids are ``(len(ys), len(xs))``."""

    alphas: np.ndarray               # interpolation: loss at (1 - alpha) theta_0 + alpha theta_T
    interpolation_train: np.ndarray
    interpolation_test: np.ndarray
    initial_train_loss: float        # at theta_0 and theta_T, on the interpolation's path
    final_train_loss: float
    final_test_loss: float
    loss_at_half: float              # train loss at alpha = 0.5
    barrier: float                   # see barrier()
    span: np.ndarray                 # random directions: loss at theta_T + a d1 + b d2, a and b in span
    contour: np.ndarray
    pca_coords: np.ndarray           # the trajectory in the plane of its top two principal directions
    explained_variance: np.ndarray   # their fractions of the trajectory's variance
    pca_xs: np.ndarray               # the grid around the projected trajectory and its losses
    pca_ys: np.ndarray
    pca_grid: np.ndarray
    distance: float                  # |theta_T - theta_0|

    def summary(self) -> dict[str, Any]:
        """The numbers as a JSON-able dict."""
        return {"final_train_loss": self.final_train_loss, "initial_train_loss": self.initial_train_loss,
                "final_test_loss": self.final_test_loss, "loss_at_alpha_0.5": self.loss_at_half,
                "barrier": self.barrier, "explained_variance": self.explained_variance.tolist(),
                "distance_init_to_final": self.distance, "alphas": self.alphas.tolist(),
                "interpolation_train": self.interpolation_train.tolist(),
                "interpolation_test": self.interpolation_test.tolist(), "contour_span": self.span.tolist(),
                "contour": self.contour.tolist(), "pca_xs": self.pca_xs.tolist(), "pca_ys": self.pca_ys.tolist(),
                "pca_grid": self.pca_grid.tolist(), "pca_coords": self.pca_coords.tolist()}


def slices(train_loss: LossFn, test_loss: LossFn, start: Params, end: Params, snapshots: Sequence[Params], *,
           alphas: Sequence[float], span: Sequence[float], generator: torch.Generator, ignore_biases: bool = True,
           pca_resolution: int = 41, pca_margin: float = 0.25, pca_center: bool = True,
           chunk_size: int | None = 256, vmap: bool = True, progress: str | None = None) -> Slices:
    """Every slice of the landscape around the trained weights ``end`` (Li et al. 2018):

    1. the train and test loss along ``(1 - alpha) start + alpha end`` for ``alphas`` (with the loss at
       the endpoints and at alpha = 0.5 on the same path, and the :func:`barrier`);
    2. the train loss at ``end + a d1 + b d2`` for ``a, b`` in ``span``, ``d1`` and ``d2`` random
       filter-normalised directions drawn in that order from ``generator``;
    3. the train loss in the plane of the top two principal directions of ``snapshots - end``, on a
       ``pca_resolution`` grid around the projected trajectory (:func:`grid_around`, ``pca_margin``).

    ``progress``: a label for progress bars (None: none).
    """
    batched = {"chunk_size": chunk_size, "vmap": vmap}
    bar = (lambda what: f"{progress}: {what}") if progress else (lambda what: False)
    alphas, span = np.asarray(alphas), np.asarray(span)
    l0, l1 = interpolate_1d(train_loss, start, end, [0.0, 1.0], **batched).tolist()  # the same path as below
    with torch.no_grad():
        final_test = float(test_loss(end))
    interp_train = interpolate_1d(train_loss, start, end, alphas, **batched,
                                  progress=bar("interpolation")).cpu().numpy()
    interp_test = interpolate_1d(test_loss, start, end, alphas, **batched).cpu().numpy()
    mid = float(interpolate_1d(train_loss, start, end, [0.5], **batched)[0])

    d1 = random_direction(end, generator, ignore_biases=ignore_biases)
    d2 = random_direction(end, generator, ignore_biases=ignore_biases)
    z_rand = grid_2d(train_loss, end, d1, d2, span, span, **batched,
                     progress=bar("random-direction grid")).cpu().numpy()

    pca = pca_trajectory(list(snapshots), end, n_components=2, center=pca_center)
    coords = pca.coords.double().cpu().numpy()
    xs, ys = grid_around(coords, pca_margin, pca_resolution)
    z_pca = grid_2d(train_loss, end, pca.directions[0], pca.directions[1], xs, ys, **batched,
                    progress=bar("PCA-plane grid")).cpu().numpy()
    return Slices(alphas=alphas, interpolation_train=interp_train, interpolation_test=interp_test,
                  initial_train_loss=l0, final_train_loss=l1, final_test_loss=final_test, loss_at_half=mid,
                  barrier=barrier(alphas, interp_train, l0, l1), span=span, contour=z_rand, pca_coords=coords,
                  explained_variance=pca.explained_variance_ratio.double().cpu().numpy(), pca_xs=xs, pca_ys=ys,
                  pca_grid=z_pca, distance=float((flatten(end) - flatten(start)).norm()))


COLORBAR = "training loss (cross-entropy, nats; log-spaced levels)"
THETA_T = ("minimum", 0.0, 0.0, r"$\theta_T$ (trained weights)")


def plot_slices(s: Slices, span: np.ndarray, contour_path: Any, pca_path: Any, *, what: str, steps: int,
                record_every: int, num_levels: int, figure: Mapping[str, Any]) -> tuple[Any, Any]:
    """The two 2-D pictures of one trained network: the training loss around ``theta_T`` along two random
    filter-normalised directions, and in the plane of the trajectory's top two PCA directions with the
    trajectory on it. ``what`` names the run in the titles; returns the two paths."""
    import matplotlib.pyplot as plt

    from ..evaluation.plots import contour_plot, save_figure
    size = {"figsize": (figure["width"], figure["height"]), "dpi": figure["dpi"]}
    _, ax = plt.subplots(**size)
    contour_plot(ax, span, span, s.contour, num_levels=num_levels, colorbar=COLORBAR, markers=[THETA_T],
                 title=f"{what}, {steps} steps: training loss around $\\theta_T$\nalong two random "
                       f"filter-normalised directions",
                 xlabel=r"$\alpha$: coefficient of direction 1 (1 = each filter's own norm)",
                 ylabel=r"$\beta$: coefficient of direction 2 (1 = each filter's own norm)",
                 legend={"fontsize": 8, "loc": "upper right", "framealpha": 0.85})
    contour_png = save_figure(ax.figure, contour_path)
    evr, traj = s.explained_variance, f"trajectory (every {record_every} steps)"
    _, ax = plt.subplots(**size)
    contour_plot(ax, s.pca_xs, s.pca_ys, s.pca_grid, num_levels=num_levels, colorbar=COLORBAR,
                 markers=[("start", *s.pca_coords[0], r"$\theta_0$ (initial weights)"), THETA_T],
                 trajectories={traj: s.pca_coords}, styles={traj: "-o"},
                 title=f"{what}: training loss in the plane of the\ntrajectory's top two PCA directions "
                       f"(PC1 + PC2: {100 * evr.sum():.1f}%)",
                 xlabel=f"PC1 coordinate (parameter-space distance; {100 * evr[0]:.1f}% of variance)",
                 ylabel=f"PC2 coordinate (parameter-space distance; {100 * evr[1]:.1f}% of variance)",
                 legend={"fontsize": 8, "loc": "lower left", "framealpha": 0.85})
    return contour_png, save_figure(ax.figure, pca_path)

