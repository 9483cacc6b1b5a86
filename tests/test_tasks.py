"""Tests of the inner problems in learned_opt.tasks.

Oracles: least squares (quadratic), the known minima of the test surfaces,
central finite differences in float64 (gradients of every loss), and
torch.nn.functional.cross_entropy on the whole split (metrics).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from learned_opt.tasks import (FAMILIES, SURFACES, TASKS, ConvTask, LogRegTask, MLPFamily, MLPTask,
                               QuadraticFamily, QuadraticTask, SingleTaskFamily, make_dataset, make_family,
                               make_task)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grad_of(task, params, batch=()):
    params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    loss = task.loss(params, batch)
    grads = torch.autograd.grad(loss, list(params.values()))
    return dict(zip(params, grads))


def hessian_at(surface, point):
    xy = torch.tensor(point, dtype=torch.float64)
    return torch.autograd.functional.hessian(lambda p: surface.loss({"xy": p}), xy)


# --------------------------------------------------------------------------- finite differences

FD_TASKS = {
    "quadratic": lambda: QuadraticTask(dim=6, dtype=torch.float64),
    **{name: (lambda cls=cls: cls(dtype=torch.float64, init_std=0.3)) for name, cls in SURFACES.items()},
    "rosenbrock_noisy": lambda: SURFACES["rosenbrock"](dtype=torch.float64, noise=0.5),
    "mlp_sigmoid": lambda: MLPTask("digits", [7], "sigmoid", batch_size=16, dtype=torch.float64),
    "mlp_relu_2layers": lambda: MLPTask("digits", [6, 5], "relu", batch_size=16, dtype=torch.float64),
    "mlp_tanh_dropout": lambda: MLPTask("digits", [6], "tanh", batch_size=16, dropout=0.3, dtype=torch.float64),
    "logreg": lambda: LogRegTask("digits", batch_size=16, dtype=torch.float64),
    "conv": lambda: ConvTask("digits", channels=(3, 4), batch_size=8, dtype=torch.float64),
}


@pytest.mark.parametrize("name", list(FD_TASKS))
def test_gradient_matches_central_finite_differences(name):
    """<grad L, v> == (L(p + eps v) - L(p - eps v)) / (2 eps) along coordinates (small tasks) or random v."""
    task = FD_TASKS[name]()
    g = gen(3)
    params = task.init_params(g)
    batch = task.sample_batch(g)
    assert all(p.dtype == torch.float64 for p in params.values())
    grads = grad_of(task, params, batch)
    n = sum(p.numel() for p in params.values())
    if n <= 64:  # every coordinate
        directions = []
        for key, p in params.items():
            for i in range(p.numel()):
                v = {k: torch.zeros_like(q) for k, q in params.items()}
                v[key].view(-1)[i] = 1.0
                directions.append(v)
    else:  # random directions touching every parameter
        directions = [{k: torch.randn(q.shape, generator=gen(10 + j), dtype=q.dtype) for k, q in params.items()}
                      for j in range(4)]
    eps = 1e-6
    for v in directions:
        plus = task.loss({k: params[k] + eps * v[k] for k in params}, batch).item()
        minus = task.loss({k: params[k] - eps * v[k] for k in params}, batch).item()
        numeric = (plus - minus) / (2 * eps)
        analytic = sum((grads[k] * v[k]).sum().item() for k in params)
        assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-6), name


# --------------------------------------------------------------------------- quadratic


def test_quadratic_loss_is_squared_residual():
    task = QuadraticTask(dim=5, seed=4)
    params = task.init_params(gen(1))
    w, y, theta = task.W.numpy(), task.y.numpy(), params["theta"].numpy()
    expected = np.sum((w.astype(np.float64) @ theta - y) ** 2)
    assert task.loss(params, ()).item() == pytest.approx(expected, rel=1e-5)
    assert task.metrics(params) == {"loss": pytest.approx(expected, rel=1e-5)}
    assert task.W.shape == (5, 5) and task.y.shape == (5,) and params["theta"].shape == (5,)
    assert task.sample_batch(gen(), "train") == () and task.sample_batch(gen(), "test") == ()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-3)])
def test_quadratic_solution_is_the_minimum(dtype, tol):
    task = QuadraticTask(dim=10, seed=0, dtype=dtype)
    theta = task.solution()
    assert theta.shape == (10,) and theta.dtype == dtype
    assert task.loss({"theta": theta}, ()).item() == pytest.approx(task.min_loss(), abs=tol)
    assert grad_of(task, {"theta": theta})["theta"].norm().item() < 100 * tol
    assert task.loss({"theta": theta + 0.1}, ()).item() > task.min_loss()


def test_quadratic_singular_uses_least_squares():
    """With a rank-deficient W the minimum is positive and lstsq still finds it (oracle: pinv)."""
    task = QuadraticTask(dim=4, seed=0, dtype=torch.float64)
    task.W[:, 3] = task.W[:, 2]
    task.W[3] = 0.0
    expected = torch.linalg.pinv(task.W) @ task.y
    residual = task.W @ expected - task.y
    assert task.min_loss() == pytest.approx((residual @ residual).item(), rel=1e-9)
    assert task.min_loss() > 1e-3


def test_quadratic_determinism_and_family():
    a, b, c = QuadraticTask(seed=0), QuadraticTask(seed=0), QuadraticTask(seed=1)
    assert torch.equal(a.W, b.W) and torch.equal(a.y, b.y)
    assert not torch.equal(a.W, c.W)
    assert torch.equal(a.init_params(gen(5))["theta"], b.init_params(gen(5))["theta"])
    assert not torch.equal(a.init_params(gen(5))["theta"], a.init_params(gen(6))["theta"])

    family = QuadraticFamily(dim=3)
    g1, g2 = gen(7), gen(7)
    t1, t2 = family.sample(g1), family.sample(g2)
    assert torch.equal(t1.W, t2.W) and t1.W.shape == (3, 3)
    assert not torch.equal(family.sample(g1).W, t1.W)  # the next sample is a new problem


def test_float64_task_is_the_float32_problem_in_higher_precision():
    low, high = QuadraticTask(seed=2), QuadraticTask(seed=2, dtype="float64")
    assert torch.equal(low.W.double(), high.W)
    assert torch.equal(low.init_params(gen(1))["theta"].double(), high.init_params(gen(1))["theta"])


# --------------------------------------------------------------------------- surfaces

KNOWN_MINIMA = {  # published minima (6 digits) and their value
    "rosenbrock": [(1.0, 1.0)],
    "beale": [(3.0, 0.5)],
    "himmelblau": [(3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)],
    "bowl": [(0.0, 0.0)],
}


@pytest.mark.parametrize("name", list(KNOWN_MINIMA))
def test_surface_minima_have_value_zero_and_zero_gradient(name):
    surface = SURFACES[name]()
    np.testing.assert_allclose(surface.minima, KNOWN_MINIMA[name], atol=1e-5)
    assert surface.global_min_value == pytest.approx(0.0, abs=1e-12)
    for point, value in zip(surface.minima, surface.minima_values):
        assert value == pytest.approx(0.0, abs=1e-12)
        xy = torch.tensor(point, dtype=torch.float64)
        assert surface.loss({"xy": xy}).item() == pytest.approx(0.0, abs=1e-12)
        assert grad_of(surface, {"xy": xy})["xy"].abs().max().item() < 1e-9
        assert (torch.linalg.eigvalsh(hessian_at(surface, point)) > 0).all()


@pytest.mark.parametrize("name", ["saddle", "monkey_saddle"])
def test_saddles_have_no_minimum(name):
    surface = SURFACES[name]()
    assert surface.minima == [] and surface.global_min_value == -math.inf
    assert surface.saddle_points == [(0.0, 0.0)]
    xy = torch.zeros(2, dtype=torch.float64)
    assert surface.loss({"xy": xy}).item() == 0.0
    assert grad_of(surface, {"xy": xy})["xy"].abs().max().item() == 0.0
    # descending along y (saddle) or x (monkey saddle) goes below the saddle value without bound
    far = torch.tensor([0.0, 10.0] if name == "saddle" else [-10.0, 0.0], dtype=torch.float64)
    assert surface.loss({"xy": far}).item() < -99


def test_saddle_points_are_critical_and_indefinite():
    for name in ("saddle", "himmelblau", "two_minima"):
        surface = SURFACES[name]()
        assert surface.saddle_points
        for point in surface.saddle_points:
            xy = torch.tensor(point, dtype=torch.float64)
            assert grad_of(surface, {"xy": xy})["xy"].abs().max().item() < 1e-9
            eig = torch.linalg.eigvalsh(hessian_at(surface, point))
            assert eig.min() < 0 < eig.max()


def test_two_minima_poor_minimum_is_worse_and_traps_gradient_descent():
    surface = SURFACES["two_minima"]()
    (good, poor), (good_value, poor_value) = surface.minima, surface.minima_values
    assert good_value < poor_value
    assert surface.global_min_value == good_value
    assert math.dist(good, poor) > 1.0
    for point in (good, poor):
        xy = torch.tensor(point, dtype=torch.float64)
        assert grad_of(surface, {"xy": xy})["xy"].abs().max().item() < 1e-12
        assert (torch.linalg.eigvalsh(hessian_at(surface, point)) > 0).all()
    # a dense grid finds nothing below the good minimum
    axes = [torch.linspace(lo, hi, 301, dtype=torch.float64) for lo, hi in surface.bounds]
    grid = surface.value(*torch.meshgrid(*axes, indexing="ij"))
    assert grid.min().item() >= good_value
    # plain gradient descent from the default start ends in the poor minimum
    xy = torch.tensor(surface.start, dtype=torch.float64)
    for _ in range(500):
        xy = xy - 0.1 * grad_of(surface, {"xy": xy})["xy"]
    assert math.dist(xy.tolist(), poor) < 1e-6


@pytest.mark.parametrize("name", list(SURFACES))
def test_surface_attributes_and_vectorised_value(name):
    surface = SURFACES[name]()
    (xmin, xmax), (ymin, ymax) = surface.bounds
    for x, y in [surface.start, *surface.minima, *surface.saddle_points]:
        assert xmin <= x <= xmax and ymin <= y <= ymax
    params = surface.init_params(gen())
    assert params["xy"].shape == (2,) and params["xy"].tolist() == pytest.approx(surface.start)
    assert surface.metrics(params) == {"loss": pytest.approx(surface.loss(params, ()).item())}
    x = torch.linspace(xmin, xmax, 12).reshape(3, 4)
    y = torch.linspace(ymin, ymax, 12).reshape(3, 4)
    values = surface.value(x, y)
    assert values.shape == (3, 4)
    pointwise = [surface.loss({"xy": torch.stack([a, b])}).item() for a, b in zip(x.flatten(), y.flatten())]
    assert values.flatten().tolist() == pytest.approx(pointwise, rel=1e-6)
    assert surface.value(1.0, 2.0).shape == ()


def test_surface_gradient_noise():
    clean, noisy = SURFACES["beale"](), SURFACES["beale"](noise=0.5)
    assert clean.sample_batch(gen()) == ()
    batch = noisy.sample_batch(gen(4))
    assert len(batch) == 1 and batch[0].shape == (2,)
    assert torch.equal(batch[0], noisy.sample_batch(gen(4))[0])
    assert not torch.equal(batch[0], noisy.sample_batch(gen(5))[0])
    assert noisy.sample_batch(gen(), "test") == ()
    params = noisy.init_params(gen())
    difference = grad_of(noisy, params, batch)["xy"] - grad_of(clean, params)["xy"]
    assert torch.allclose(difference, batch[0], atol=1e-5)
    # over many batches the noise is zero-mean with std 0.5
    noise = torch.stack([noisy.sample_batch(g)[0] for g in [gen(s) for s in range(2000)]])
    assert noise.mean(0).abs().max() < 0.05 and noise.std(0).sub(0.5).abs().max() < 0.05


def test_surface_options():
    bowl = SURFACES["bowl"](condition=4.0, start=(1.0, 1.0), init_std=0.1)
    a, b = bowl.init_params(gen(1))["xy"], bowl.init_params(gen(1))["xy"]
    assert torch.equal(a, b) and not torch.equal(a, bowl.init_params(gen(2))["xy"])
    assert (a - torch.tensor([1.0, 1.0])).abs().max() < 0.5
    assert bowl.value(1.0, 1.0).item() == pytest.approx(0.5 * (1 + 4))
    for bad in [dict(noise=-1.0), dict(init_std=float("nan")), dict(start=(1.0,)), dict(condition=0.0)]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            SURFACES["bowl"](**bad)


# --------------------------------------------------------------------------- classifiers


@pytest.mark.parametrize("make,dataset,shapes", [
    (lambda: MLPTask(), "digits", {"layers.0.weight": (20, 64), "layers.0.bias": (20,),
                                   "layers.1.weight": (10, 20), "layers.1.bias": (10,)}),
    (lambda: LogRegTask("mnist5k"), "mnist5k", {"layers.0.weight": (10, 784), "layers.0.bias": (10,)}),
    (lambda: MLPTask("mnist5k", [32, 16], "relu"), "mnist5k",
     {"layers.0.weight": (32, 784), "layers.0.bias": (32,), "layers.1.weight": (16, 32),
      "layers.1.bias": (16,), "layers.2.weight": (10, 16), "layers.2.bias": (10,)}),
    (lambda: ConvTask(), "mnist5k", {"convs.0.weight": (8, 1, 3, 3), "convs.0.bias": (8,),
                                     "convs.1.weight": (16, 8, 3, 3), "convs.1.bias": (16,),
                                     "head.weight": (10, 16), "head.bias": (10,)}),
    (lambda: ConvTask("digits", channels=[4]), "digits", {"convs.0.weight": (4, 1, 3, 3), "convs.0.bias": (4,),
                                                          "head.weight": (10, 4), "head.bias": (10,)}),
])
def test_classifier_shapes_init_and_metrics(make, dataset, shapes):
    task = make()
    assert task.is_classifier and task.batch_size == 128 and task.dataset.name == dataset
    params = task.init_params(gen())
    assert {k: tuple(v.shape) for k, v in params.items()} == shapes
    assert list(params) == list(shapes)  # nn.Module parameter order
    for key, value in params.items():  # nn.Linear / nn.Conv2d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        weight = params[key.replace("bias", "weight")]
        bound = 1 / math.sqrt(weight[0].numel())
        assert value.abs().max() <= bound
    x, y = task.sample_batch(gen())
    assert x.shape == (128, task.dataset.num_features) and y.shape == (128,)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(task.loss(params, (x, y)).item() - math.log(10)) < 0.3
    metrics = task.metrics(params, "test")
    assert set(metrics) == {"loss", "accuracy"} and 0.0 <= metrics["accuracy"] <= 1.0
    assert abs(metrics["loss"] - math.log(10)) < 0.3
    x_all, y_all = task.dataset.x_test, task.dataset.y_test  # oracle: one cross-entropy over the whole split
    logits = task.logits(params, x_all)
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, y_all).item(), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx((logits.argmax(1) == y_all).double().mean().item())
    first = task.metrics(params, "train", max_examples=50)
    assert first["loss"] == pytest.approx(
        F.cross_entropy(task.logits(params, task.dataset.x_train[:50]), task.dataset.y_train[:50]).item(), rel=1e-5)


def test_classifier_batches_are_deterministic_and_cover_splits():
    task = MLPTask(batch_size=32)
    (x1, y1), (x2, y2), (x3, _) = task.sample_batch(gen(1)), task.sample_batch(gen(1)), task.sample_batch(gen(2))
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert torch.equal(task.init_params(gen(1))["layers.0.weight"], task.init_params(gen(1))["layers.0.weight"])
    assert not torch.equal(task.init_params(gen(1))["layers.0.weight"], task.init_params(gen(2))["layers.0.weight"])
    # batch rows are rows of the requested split
    x_test, _ = task.sample_batch(gen(1), "test")
    rows = {tuple(r) for r in task.dataset.x_test.tolist()}
    assert all(tuple(r) in rows for r in x_test.tolist())
    full = MLPTask(batch_size=None)
    x, y = full.sample_batch(gen(), "train")
    assert torch.equal(x, full.dataset.x_train) and torch.equal(y, full.dataset.y_train)


def test_gradient_descent_learns_digits():
    """A functional check: full-batch GD on logistic regression reaches high test accuracy."""
    task = LogRegTask("digits", batch_size=None)
    params = task.init_params(gen())
    batch = task.sample_batch(gen())
    for _ in range(100):
        grads = grad_of(task, params, batch)
        params = {k: params[k] - 0.5 * grads[k] for k in params}
    metrics = task.metrics(params)
    assert metrics["accuracy"] > 0.9 and metrics["loss"] < 0.4


def test_dropout_masks_come_from_the_batch():
    p = 0.25
    task = MLPTask("digits", [50], "relu", batch_size=64, dropout=p)
    x, y, mask = task.sample_batch(gen(1))
    assert mask.shape == (64, 50)
    assert mask.unique().tolist() == pytest.approx([0.0, 1 / (1 - p)])
    assert abs((mask == 0).double().mean().item() - p) < 0.05
    assert torch.equal(mask, task.sample_batch(gen(1))[2])
    assert len(task.sample_batch(gen(1), "test")) == 2  # evaluation: no dropout
    params = task.init_params(gen())
    assert task.loss(params, (x, y, mask)).item() != task.loss(params, (x, y)).item()
    ones = torch.ones_like(mask)
    assert task.loss(params, (x, y, ones)).item() == pytest.approx(task.loss(params, (x, y)).item())
    assert task.metrics(params) == task.metrics(params)


def test_conv_rejects_non_image_data():
    with pytest.raises(ValueError, match="input_shape"):
        ConvTask(make_dataset("mnist1d", num_samples=200))


def test_mlp_runs_on_mnist1d():
    task = MLPTask(make_dataset("mnist1d", num_samples=200), [8], batch_size=16)
    assert task.name == "mlp_mnist1d"
    assert task.init_params(gen())["layers.0.weight"].shape == (8, 40)
    assert math.isfinite(task.loss(task.init_params(gen()), task.sample_batch(gen())).item())


# --------------------------------------------------------------------------- families and registry


def test_mlp_family_samples_configurations_deterministically():
    family = MLPFamily(datasets=["digits", "mnist1d"], widths=range(4, 7), depths=[0, 2],
                       activations=["relu", "tanh"], batch_size=16)
    def names(seed):
        g = gen(seed)
        return [family.sample(g).name for _ in range(10)]

    assert names(0) == names(0) and names(0) != names(1)
    g = gen(1)
    tasks = [family.sample(g) for _ in range(60)]
    seen = {(t.dataset.name, t.hidden_sizes, t.activation) for t in tasks}
    assert {d for d, _, _ in seen} == {"digits", "mnist1d"}
    assert {h for _, h, _ in seen} >= {(), (4, 4), (5, 5), (6, 6)}
    assert {a for _, _, a in seen} == {"relu", "tanh"}
    digits_tasks = [t for t in tasks if t.dataset.name == "digits"]
    assert all(t.dataset is digits_tasks[0].dataset for t in digits_tasks)  # loaded once
    task = tasks[0]
    depth, width = len(task.hidden_sizes), (task.hidden_sizes or (None,))[0]
    assert task.name.startswith(f"mlp_{task.dataset.name}_{depth}x") and task.batch_size == 16
    if width is not None:
        assert f"x{width}_" in task.name


def test_registry_builds_every_task_and_family():
    for name in TASKS:
        kwargs = {"dataset": "digits"} if name == "conv" else {}
        task = make_task(name, **kwargs)
        params = task.init_params(gen())
        loss = task.loss(params, task.sample_batch(gen()))
        assert loss.shape == () and math.isfinite(loss.item())
        assert "loss" in task.metrics(params)
    assert make_task("mlp").name == "mlp_digits" and make_task("logreg").hidden_sizes == ()
    assert isinstance(make_family("quadratic_family", dim=3), QuadraticFamily)
    assert isinstance(make_family("mlp_family"), MLPFamily)
    single = make_family("single_task", task="bowl")
    assert isinstance(single, SingleTaskFamily) and single.sample(gen(0)) is single.sample(gen(1))
    assert set(FAMILIES) == {"quadratic_family", "mlp_family", "single_task", "general_family"}


@pytest.mark.parametrize("call,match", [
    (lambda: make_task("foo"), r"task='foo' is not allowed; allowed: quadratic, noisy_quadratic, mlp, logreg, conv, "
                               r"rosenbrock, .*regression, autoencoder"),
    (lambda: make_family("foo"), r"family='foo' is not allowed; allowed: quadratic_family, mlp_family"),
    (lambda: MLPTask(activation="swish"), r"activation='swish' is not allowed; allowed: sigmoid, relu, tanh, gelu"),
    (lambda: MLPTask("cifar"), r"dataset='cifar' is not allowed; allowed: digits, mnist5k, mnist1d, mnist, fashion_mnist"),
    (lambda: MLPTask(hidden_sizes=[20, 0]), r"hidden_sizes\[1\]=0 is not allowed; allowed: an integer >= 1"),
    (lambda: MLPTask(hidden_sizes=20), r"hidden_sizes must be a list"),
    (lambda: MLPTask(batch_size=0), r"batch_size=0 is not allowed; allowed: an integer >= 1"),
    (lambda: MLPTask(batch_size=2.5), r"batch_size=2.5 is not allowed"),
    (lambda: MLPTask(dropout=1.0), r"dropout=1.0 is not allowed; allowed: a finite number in \[0.0, 1.0\)"),
    (lambda: LogRegTask(dtype=torch.int64), r"dtype must be a floating"),
    (lambda: MLPTask(hidden_sizes=[], dropout=0.5), r"dropout=0.5 needs at least one hidden layer"),
    (lambda: MLPTask().sample_batch(gen(), "val"), r"split='val' is not allowed; allowed: train, test"),
    (lambda: MLPTask().metrics(MLPTask().init_params(gen()), max_examples=0), r"max_examples=0 is not allowed"),
    (lambda: QuadraticTask().metrics({"theta": torch.zeros(10)}, split="valid"), r"split='valid' is not allowed"),
    (lambda: QuadraticTask(dim=0), r"dim=0 is not allowed; allowed: an integer >= 1"),
    (lambda: ConvTask("digits", channels=[]), r"channels must be a non-empty list"),
    (lambda: MLPFamily(widths=[]), r"widths must be a non-empty list"),
    (lambda: MLPFamily(depths=[1, -1]), r"depths\[1\]=-1 is not allowed; allowed: an integer >= 0"),
    (lambda: MLPFamily(activations=["swish"]), r"activation='swish' is not allowed"),
    (lambda: MLPFamily(datasets=["svhn"]), r"dataset='svhn' is not allowed"),
])
def test_bad_input_raises_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tasks_on_cuda_with_cpu_or_cuda_generators():
    for task in (MLPTask(device="cuda"), ConvTask("digits", device="cuda"), QuadraticTask(device="cuda"),
                 SURFACES["rosenbrock"](device="cuda", noise=0.1, init_std=0.1), MLPTask(device="cuda", dropout=0.5)):
        for g in (torch.Generator().manual_seed(0), torch.Generator("cuda").manual_seed(0)):
            params = task.init_params(g)
            batch = task.sample_batch(g)
            assert all(p.device.type == "cuda" for p in params.values())
            assert all(t.device.type == "cuda" for t in batch)
            loss = task.loss(params, batch)
            assert loss.device.type == "cuda" and math.isfinite(loss.item())
            assert "loss" in task.metrics(params)
