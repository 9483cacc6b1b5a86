"""Two-dimensional test surfaces, for optimizer trajectory pictures.

Each surface is a :class:`Task` whose parameters are one point
``{"xy": tensor([x, y])}`` and whose loss is ``f(x, y)``:

================  ======================================================  ===========================
name              f(x, y)                                                 minima (value)
================  ======================================================  ===========================
``rosenbrock``    (1 - x)^2 + 100 (y - x^2)^2                             (1, 1)  (0)
``beale``         (1.5 - x + xy)^2 + (2.25 - x + xy^2)^2                  (3, 0.5)  (0)
                  + (2.625 - x + xy^3)^2
``himmelblau``    (x^2 + y - 11)^2 + (x + y^2 - 7)^2                      (3, 2) and three more  (0)
``saddle``        x^2 - y^2                                               none; saddle at (0, 0)
``monkey_saddle`` x^3 - 3 x y^2                                           none; saddle at (0, 0)
``two_minima``    0.05 (x^2 + y^2) - sum_k d_k exp(-|p - c_k|^2 / 2s_k^2)   a global and a poor local one
``bowl``          0.5 (x^2 + kappa y^2)                                   (0, 0)  (0)
================  ======================================================  ===========================

Minima that are not known in closed form (three of Himmelblau's, both of
``two_minima``) and saddle points are refined at construction by Newton's
method in float64 to machine precision and checked against the Hessian's
signature.

Gradient noise: with ``noise = sigma > 0``, train batches are ``(n,)`` with
``n ~ N(0, sigma^2 I_2)`` and the loss is ``f(x, y) + n . (x, y)``, so the
gradient is the true gradient plus Gaussian noise. With ``sigma = 0`` (default)
and for test batches, the batch is ``()`` and the loss is ``f(x, y)``.
"""
from __future__ import annotations

import abc
import math
from typing import Any

import torch
from torch import Tensor

from baselines.checks import check_number

from .base import Batch, Params, Task, check_float_dtype, check_split, randn

Point = tuple[float, float]


def newton_critical_point(value, guess: Point, kind: str, max_iter: int = 100) -> Point:
    """Refine ``guess`` to a critical point of ``value(x, y)`` by Newton's method in float64.

    Iterates ``p <- p - H(p)^{-1} grad(p)`` until the step is below 1e-15, then
    checks ``|grad| < 1e-9`` and the Hessian eigenvalues: all positive for
    ``kind="minimum"``, of both signs for ``kind="saddle"``.
    """
    def f(p: Tensor) -> Tensor:
        return value(p[0], p[1])

    p = torch.tensor(guess, dtype=torch.float64)
    for _ in range(max_iter):
        step = torch.linalg.solve(torch.autograd.functional.hessian(f, p),
                                  torch.autograd.functional.jacobian(f, p))
        p = p - step
        if step.norm() < 1e-15:
            break
    grad = torch.autograd.functional.jacobian(f, p)
    eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(f, p))
    signature_ok = bool((eig > 0).all()) if kind == "minimum" else bool(eig.min() < 0 < eig.max())
    if grad.norm() > 1e-9 or not signature_ok:
        raise RuntimeError(f"Newton from {guess} did not reach a {kind}: point {p.tolist()}, "
                           f"|grad| {grad.norm().item():.3g}, Hessian eigenvalues {eig.tolist()}")
    return float(p[0]), float(p[1])


class Surface(Task):
    """Base class of the 2D surfaces; see the module docstring.

    Class attributes (set by subclasses):
        minima: local minima ``[(x, y), ...]``, the global one(s) first.
        saddle_points: saddle points ``[(x, y), ...]``.
        start: default starting point of trajectories.
        bounds: plotting window ``((xmin, xmax), (ymin, ymax))``.

    Instance attributes: ``minima_values`` (``f`` at each minimum, float64) and
    ``global_min_value`` (their minimum, ``-inf`` when the surface is unbounded below).

    Args:
        noise: standard deviation of the additive gradient noise (default 0).
        init_std: ``init_params`` returns ``start + init_std * N(0, I_2)`` (default 0:
            exactly ``start``, drawing nothing from the generator).
        start: overrides the class's default start point.
        device, dtype: where and in which precision the point lives.
    """

    minima: list[Point] = []
    saddle_points: list[Point] = []
    start: Point
    bounds: tuple[Point, Point]
    batch_size = None

    def __init__(self, noise: float = 0.0, init_std: float = 0.0, start: Point | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32):
        self.noise = check_number("noise", noise, 0.0)
        self.init_std = check_number("init_std", init_std, 0.0)
        if start is not None:
            if len(start) != 2:
                raise ValueError(f"start must be a point (x, y); got {start!r}")
            self.start = (float(start[0]), float(start[1]))
        self.device = torch.device(device)
        self.dtype = check_float_dtype(dtype)
        self.minima_values = [self.value(torch.tensor(x, dtype=torch.float64),
                                         torch.tensor(y, dtype=torch.float64)).item() for x, y in self.minima]
        self.global_min_value = min(self.minima_values, default=-math.inf)

    @abc.abstractmethod
    def _value(self, x: Tensor, y: Tensor) -> Tensor:
        """``f(x, y)`` elementwise."""

    def value(self, x: Any, y: Any) -> Tensor:
        """``f(x, y)`` elementwise for tensors (or arrays, numbers) of any broadcastable shape."""
        return self._value(torch.as_tensor(x), torch.as_tensor(y))

    def init_params(self, generator: torch.Generator) -> Params:
        xy = torch.tensor(self.start, device=self.device, dtype=self.dtype)
        if self.init_std > 0:
            xy = xy + self.init_std * randn((2,), generator, self.dtype, self.device)
        return {"xy": xy}

    def sample_batch(self, generator: torch.Generator, split: str = "train") -> Batch:
        """``(noise_vector,)`` for train batches when ``noise > 0``, else ``()``."""
        if check_split(split) == "train" and self.noise > 0:
            return (self.noise * randn((2,), generator, self.dtype, self.device),)
        return ()

    def loss(self, params: Params, batch: Batch = ()) -> Tensor:
        xy = params["xy"]
        f = self._value(xy[0], xy[1])
        if batch:
            f = f + (batch[0] * xy).sum()
        return f

    @torch.no_grad()
    def metrics(self, params: Params, split: str = "test", max_examples: int | None = None) -> dict[str, float]:
        """``{"loss": f(x, y)}`` without noise."""
        check_split(split)
        return {"loss": self.loss(params).item()}


class Rosenbrock(Surface):
    """``(1 - x)^2 + 100 (y - x^2)^2``: a curved, narrow valley; minimum 0 at (1, 1)."""

    name = "rosenbrock"
    minima = [(1.0, 1.0)]
    start = (-1.2, 1.0)
    bounds = ((-2.0, 2.0), (-1.0, 3.0))

    def _value(self, x: Tensor, y: Tensor) -> Tensor:
        return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2


class Beale(Surface):
    """``(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2``; minimum 0 at (3, 0.5)."""

    name = "beale"
    minima = [(3.0, 0.5)]
    start = (1.0, 1.5)
    bounds = ((-4.5, 4.5), (-4.5, 4.5))

    def _value(self, x: Tensor, y: Tensor) -> Tensor:
        return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y ** 2) ** 2 + (2.625 - x + x * y ** 3) ** 2


class Himmelblau(Surface):
    """``(x^2 + y - 11)^2 + (x + y^2 - 7)^2``: four minima of value 0, four saddles, one maximum."""

    name = "himmelblau"
    start = (0.0, 0.0)
    bounds = ((-5.0, 5.0), (-5.0, 5.0))
    _minimum_guesses = [(3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)]
    _saddle_guesses = [(0.086678, 2.884255), (-3.073026, -0.081353), (3.385154, 0.073852),
                       (-0.127961, -1.953715)]

    def __init__(self, **kwargs: Any):
        self.minima = [newton_critical_point(self._value, g, "minimum") for g in self._minimum_guesses]
        self.saddle_points = [newton_critical_point(self._value, g, "saddle") for g in self._saddle_guesses]
        super().__init__(**kwargs)

    def _value(self, x: Tensor, y: Tensor) -> Tensor:
        return (x ** 2 + y - 11) ** 2 + (x + y ** 2 - 7) ** 2


class Saddle(Surface):
    """``x^2 - y^2``: a saddle at the origin, unbounded below (no minima)."""

    name = "saddle"
    saddle_points = [(0.0, 0.0)]
    start = (1.0, 1e-3)
    bounds = ((-1.5, 1.5), (-1.5, 1.5))

    def _value(self, x: Tensor, y: Tensor) -> Tensor:
        return x ** 2 - y ** 2


class MonkeySaddle(Surface):
    """``x^3 - 3 x y^2``: a degenerate three-way saddle at the origin, unbounded below."""

    name = "monkey_saddle"
    saddle_points = [(0.0, 0.0)]
    start = (1.0, 0.5)
    bounds = ((-1.5, 1.5), (-1.5, 1.5))

    def _value(self, x: Tensor, y: Tensor) -> Tensor:
        return x ** 3 - 3 * x * y ** 2


class TwoMinima(Surface):
    """A weak bowl with two Gaussian wells, a deep (global) one and a shallow (poor) one::

        f(p) = 0.05 |p|^2 - sum_k d_k exp(-|p - c_k|^2 / (2 s_k^2))
        good: c = (1.2, -0.5), d = 2, s = 0.5;   poor: c = (-1, 0.5), d = 1, s = 0.6

    ``minima`` is ``[good, poor]`` (f about -1.917 and -0.940), refined by
    Newton's method; ``saddle_points`` holds the pass between them. Gradient
    descent from the default start ``(-2, 1.5)`` ends in the poor minimum.
    """

    name = "two_minima"
    start = (-2.0, 1.5)
    bounds = ((-3.0, 3.0), (-2.5, 2.5))
    bowl = 0.05
    wells = (((1.2, -0.5), 2.0, 0.5), ((-1.0, 0.5), 1.0, 0.6))  # (centre, depth, width): good, poor

    def __init__(self, **kwargs: Any):
        self.minima = [newton_critical_point(self._value, centre, "minimum") for centre, _, _ in self.wells]
        self.saddle_points = [newton_critical_point(self._value, (0.1, 0.0), "saddle")]
        super().__init__(**kwargs)

    def _value(self, x: Tensor, y: Tensor) -> Tensor:
        f = self.bowl * (x ** 2 + y ** 2)
        for (cx, cy), depth, width in self.wells:
            f = f - depth * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * width ** 2))
        return f


class Bowl(Surface):
    """``0.5 (x^2 + kappa y^2)``: a convex quadratic with condition number ``kappa``; minimum 0 at 0."""

    name = "bowl"
    minima = [(0.0, 0.0)]
    start = (-2.5, 1.0)
    bounds = ((-3.0, 3.0), (-2.0, 2.0))

    def __init__(self, condition: float = 10.0, **kwargs: Any):
        self.condition = check_number("condition", condition, 0, low_open=True)
        super().__init__(**kwargs)

    def _value(self, x: Tensor, y: Tensor) -> Tensor:
        return 0.5 * (x ** 2 + self.condition * y ** 2)


SURFACES: dict[str, type[Surface]] = {
    cls.name: cls for cls in (Rosenbrock, Beale, Himmelblau, Saddle, MonkeySaddle, TwoMinima, Bowl)
}
