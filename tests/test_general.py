"""The general family's task side: 8x8 datasets, task augmentation by reparameterisation (alone and in batched
populations), the broad ``general_family``, the regression and autoencoder tasks, and the evaluation
of tasks without accuracy or with absent data files."""
from __future__ import annotations

import collections
import copy
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import baselines as B
from learned_opt.evaluation import evaluate as E
from learned_opt.evaluation import suite as S
from learned_opt.tasks.population import PopulationTask
from learned_opt.tasks import (TASKS, AutoencoderTask, ConvTask, GeneralFamily, MLPTask, ReparamTask,
                               TeacherRegressionTask, log_uniform_scales, make_dataset, make_family, make_task)
from learned_opt.tasks.datasets import area_resize
from learned_opt.unroll import unroll

SHARED_DATA = Path(os.environ.get("LEARNED_OPT_TEST_DATA", "/work/shared/data"))
HAS_FASHION = (SHARED_DATA / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(not HAS_FASHION, reason=f"Fashion-MNIST idx files not under {SHARED_DATA}")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- 8x8 datasets


def test_area_resize_averages_the_covered_pixels():
    x = np.random.default_rng(0).uniform(0, 255, size=(3, 28 * 28)).astype(np.float32)
    out = area_resize(x, 8).reshape(3, 8, 8)
    img = x.reshape(3, 28, 28)
    for i in range(8):
        for j in range(8):  # window [floor(28 i / 8), ceil(28 (i + 1) / 8))
            r0, r1 = (28 * i) // 8, -((-28 * (i + 1)) // 8)
            c0, c1 = (28 * j) // 8, -((-28 * (j + 1)) // 8)
            np.testing.assert_allclose(out[:, i, j], img[:, r0:r1, c0:c1].mean(axis=(1, 2)), rtol=1e-5)
    assert area_resize(np.full((2, 784), 7.0, dtype=np.float32), 8).tolist() == [[7.0] * 64] * 2


def test_mnist5k_8x8_is_the_bundled_subset_at_digit_size():
    ds = make_dataset("mnist5k_8x8")
    assert ds.input_shape == (1, 8, 8) and ds.x_train.shape == (4000, 64) and ds.x_test.shape == (1000, 64)
    assert ds.num_classes == 10 and abs(float(ds.x_train.mean())) < 1e-5
    full = make_dataset("mnist5k")
    assert torch.equal(ds.y_train, full.y_train)  # the same split, examples in the same order


@needs_fashion
def test_fashion_8x8_reads_the_idx_files_from_root():
    ds = make_dataset("fashion_8x8", root=str(SHARED_DATA))
    assert ds.input_shape == (1, 8, 8) and ds.x_train.shape == (60000, 64) and ds.x_test.shape == (10000, 64)


def test_fashion_8x8_without_files_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="fashion"):
        make_dataset("fashion_8x8", root=str(tmp_path))


# --------------------------------------------------------------------------- augmentation


def reparam_mlp(seed: int, **kw) -> ReparamTask:
    task = MLPTask("digits", hidden_sizes=[8], activation="tanh", batch_size=16, dtype="float64", **kw)
    return ReparamTask.random(task, gen(seed))


def test_reparam_keeps_the_loss_and_scales_params_and_gradients():
    task = reparam_mlp(3)
    inner = task.task
    assert task.name == "mlp_digits_reparam" and task.is_classifier
    w = inner.init_params(gen(0))
    w_prime = task.init_params(gen(0))
    batch = task.sample_batch(gen(1))
    for k in w:
        torch.testing.assert_close(w_prime[k], w[k] / task.scales[k], rtol=1e-15, atol=0)
    torch.testing.assert_close(task.loss(w_prime, batch), inner.loss(w, batch), rtol=1e-13, atol=0)
    assert task.metrics(w_prime) == pytest.approx(inner.metrics(w), rel=1e-12)
    p = {k: v.requires_grad_() for k, v in w_prime.items()}
    q = {k: v.clone().requires_grad_() for k, v in w.items()}
    g_prime = torch.autograd.grad(task.loss(p, batch), list(p.values()))
    g = torch.autograd.grad(inner.loss(q, batch), list(q.values()))
    for k, a, b in zip(p, g_prime, g):
        torch.testing.assert_close(a, task.scales[k] * b, rtol=1e-12, atol=1e-300)
    assert {round(math.log10(float(c))) for c in task.scales.values()} != {0}  # not all near 1


def test_log_uniform_scales_are_deterministic_and_in_range():
    names = [f"t{i}" for i in range(2000)]
    a = log_uniform_scales(names, gen(0), 1e-2, 1e2)
    assert a == log_uniform_scales(names, gen(0), 1e-2, 1e2) and a != log_uniform_scales(names, gen(1), 1e-2, 1e2)
    logs = np.log10(list(a.values()))
    assert logs.min() >= -2 and logs.max() <= 2 and abs(logs.mean()) < 0.1 and logs.std() == pytest.approx(
        4 / math.sqrt(12), rel=0.05)
    with pytest.raises(ValueError, match=r"must be \[low, high\]"):
        log_uniform_scales(names, gen(0), 10.0, 1.0)


def test_reparam_rejects_bad_scales():
    task = MLPTask("digits", hidden_sizes=[4])
    with pytest.raises(ValueError, match="positive finite"):
        ReparamTask(task, {"layers.0.weight": 0.0})
    with pytest.raises(KeyError, match="do not match the scales"):
        ReparamTask(task, {"layers.0.weight": 2.0}).init_params(gen())


@pytest.mark.parametrize("mode", ["auto", "vmap", "loop"])
def test_population_of_augmented_tasks_equals_separate_runs(mode):
    tasks = [reparam_mlp(10 + i, dropout=0.2) for i in range(3)]  # same shapes, different scales
    pop = PopulationTask(tasks, mode=mode)
    assert pop.mode == ("loop" if mode == "loop" else "reparam")
    if mode != "loop":
        assert pop._inner.mode == ("mlp" if mode == "auto" else mode)
    rule = B.Adam(lr=0.01)
    gens = lambda seeds: [gen(s) for s in seeds]  # noqa: E731
    params = pop.init_params(gens(range(3)))
    res = unroll(pop, rule, params, rule.init(params), 8, gens(range(20, 23)))
    for i, task in enumerate(tasks):
        p = task.init_params(gen(i))
        one = unroll(task, rule, p, rule.init(p), 8, gen(20 + i))
        torch.testing.assert_close(res.losses[:, i], one.losses, rtol=1e-10, atol=1e-12)
        for k in p:
            torch.testing.assert_close(res.params[k][i], one.params[k], rtol=1e-10, atol=1e-12)
    assert pop.metrics(res.params)["loss"] == pytest.approx(
        np.mean([t.metrics(pop.unstack(res.params)[i])["loss"] for i, t in enumerate(tasks)]))


def test_reparam_mode_needs_augmented_members():
    with pytest.raises(ValueError, match="ReparamTask"):
        PopulationTask([MLPTask("digits", hidden_sizes=[4])] * 2, mode="reparam")


# --------------------------------------------------------------------------- the general family


@pytest.fixture(scope="module")
def family() -> GeneralFamily:
    return GeneralFamily(root=str(SHARED_DATA) if HAS_FASHION else None)


def unwrap(task):
    return task.task if isinstance(task, ReparamTask) else task


def test_general_family_is_deterministic_per_seed(family):
    for seed in range(5):
        a, b = family.sample(gen(seed)), family.sample(gen(seed))
        assert a is not b and a.name == b.name and a.horizon == b.horizon and a.batch_size == b.batch_size
        if isinstance(a, ReparamTask):
            assert {k: float(v) for k, v in a.scales.items()} == {k: float(v) for k, v in b.scales.items()}
        pa, pb = a.init_params(gen(7)), b.init_params(gen(7))
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert len({family.sample(gen(s)).name for s in range(20)}) > 15


def test_general_family_covers_every_choice_and_respects_the_ranges(family):
    seen = collections.defaultdict(set)
    augmented = 0
    for seed in range(400):
        task = family.sample(gen(seed))
        inner = unwrap(task)
        augmented += isinstance(task, ReparamTask)
        seen["dataset"].add(inner.dataset.name)
        seen["arch"].add(type(inner).__name__)
        assert 16 <= task.batch_size <= 256 and task.batch_size == inner.batch_size
        seen["batch"].add(task.batch_size)
        assert 200 <= task.horizon <= 2000 and task.horizon % 50 == 0
        seen["horizon"].add(task.horizon)
        if isinstance(inner, MLPTask):
            assert 1 <= len(inner.hidden_sizes) <= 3 and len(set(inner.hidden_sizes)) == 1
            assert 16 <= inner.hidden_sizes[0] <= 128
            seen["activation"].add(inner.activation)
            seen["depth"].add(len(inner.hidden_sizes))
            seen["width"].add(inner.hidden_sizes[0])
        else:
            assert isinstance(inner, ConvTask) and inner.dataset.name != "mnist1d"
            assert 1 <= len(inner.channels) <= 2 and 4 <= inner.channels[0] <= 16
            seen["conv_depth"].add(len(inner.channels))
        if isinstance(task, ReparamTask):
            assert all(1e-3 <= float(c) <= 1e3 for c in task.scales.values())
    assert seen["dataset"] == set(family.datasets)
    assert family.datasets == (("digits", "mnist5k_8x8", "mnist1d", "fashion_8x8") if HAS_FASHION
                               else ("digits", "mnist5k_8x8", "mnist1d"))
    assert seen["arch"] == {"MLPTask", "ConvTask"} and seen["activation"] == {"relu", "tanh", "gelu", "sigmoid"}
    assert seen["depth"] == {1, 2, 3} and seen["conv_depth"] == {1, 2}
    assert min(seen["batch"]) < 20 and max(seen["batch"]) > 220 and min(seen["width"]) < 19 and max(seen["width"]) > 115
    assert min(seen["horizon"]) == 200 and max(seen["horizon"]) >= 1900
    assert 0.4 < augmented / 400 < 0.6


def test_general_family_small_ranges_reach_every_value():
    fam = GeneralFamily(datasets=["digits"], architectures=["mlp"], widths=[16, 18], depths=[1, 2],
                        batch_sizes=[30, 32], horizon_min=20, horizon_max=60, truncation=20, augment=False)
    seen = collections.defaultdict(set)
    for seed in range(200):
        task = fam.sample(gen(seed))
        assert isinstance(task, MLPTask)  # augment=False: never wrapped
        seen["width"].add(task.hidden_sizes[0])
        seen["batch"].add(task.batch_size)
        seen["horizon"].add(task.horizon)
    assert seen == {"width": {16, 17, 18}, "batch": {30, 31, 32}, "horizon": {20, 40, 60}}


def test_general_family_augments_all_or_none():
    kw = dict(datasets=["digits"], architectures=["conv"], augment_range=[0.5, 2.0])
    always = GeneralFamily(augment_probability=1.0, **kw)
    never = GeneralFamily(augment_probability=0.0, **kw)
    for seed in range(20):
        task = always.sample(gen(seed))
        assert isinstance(task, ReparamTask) and task.name.endswith("_reparam") and task.horizon >= 200
        assert all(0.5 <= float(c) <= 2.0 for c in task.scales.values())
        assert isinstance(never.sample(gen(seed)), ConvTask)


def test_sampled_tasks_train_with_adam(family):
    rule = B.Adam(lr=1e-3)
    for seed in range(6):
        task = family.sample(gen(seed))
        params = task.init_params(gen(seed))
        res = unroll(task, rule, params, rule.init(params), 5, gen(seed))
        assert not res.diverged and torch.isfinite(res.losses).all()


def test_general_family_skips_absent_file_datasets_with_a_warning(tmp_path):
    with pytest.warns(RuntimeWarning, match="'fashion_8x8' is skipped, its files are absent"):
        fam = GeneralFamily(datasets=["digits", "fashion_8x8"], root=str(tmp_path))
    assert fam.datasets == ("digits",)
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="none is available"):
        GeneralFamily(datasets=["fashion_8x8"], root=str(tmp_path))


@pytest.mark.parametrize("kwargs, match", [
    (dict(datasets=["mnist1d"], architectures=["conv"]), "fits none of architectures"),
    (dict(datasets=["svhn"]), "dataset='svhn' is not allowed"),
    (dict(activations=["swish"]), "activation='swish' is not allowed"),
    (dict(architectures=["rnn"]), "architecture='rnn' is not allowed"),
    (dict(widths=[64, 16]), r"widths=\[64, 16\] must be \[low, high\]"),
    (dict(batch_sizes=[0, 8]), "batch_sizes"),
    (dict(horizon_min=120, horizon_max=130, truncation=50), "must hold a multiple of truncation=50"),
    (dict(augment_probability=1.5), "augment_probability"),
    (dict(augment_range=[0.0, 10.0]), "augment_range"),
    (dict(augment="yes"), "augment="),
])
def test_general_family_rejects_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeneralFamily(**{"datasets": ["digits", "mnist1d"], **kwargs})


def test_general_family_config_builds_through_the_registry():
    import yaml
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "family" / "general.yaml").read_text())
    cfg = {k: v for k, v in cfg.items() if not (isinstance(v, str) and v.startswith("${"))}  # meta.* interpolations
    name = cfg.pop("name")
    fam = make_family(name, **{**cfg, "datasets": ["digits"]}, truncation=25)
    assert isinstance(fam, GeneralFamily) and fam.sample(gen(0)).horizon % 25 == 0


# --------------------------------------------------------------------------- regression and autoencoder


def test_teacher_regression_task():
    task = TeacherRegressionTask("mnist1d", hidden_sizes=[16], outputs=3, batch_size=32)
    x, t = task._data["train"]
    assert t.shape == (len(x), 3) and torch.allclose(t.mean(0), torch.zeros(3), atol=1e-5)
    torch.testing.assert_close(t.std(0), torch.ones(3), rtol=1e-4, atol=0)
    again = TeacherRegressionTask("mnist1d", hidden_sizes=[16], outputs=3, batch_size=32)
    assert torch.equal(again._data["test"][1], task._data["test"][1])  # a fixed teacher
    other = TeacherRegressionTask("mnist1d", hidden_sizes=[16], outputs=3, teacher_seed=1)
    assert not torch.equal(other._data["test"][1], task._data["test"][1])
    assert not task.is_classifier and set(task.metrics(task.init_params(gen()))) == {"loss"}


@pytest.mark.parametrize("name", ["regression", "autoencoder"])
def test_mse_tasks_learn_with_adam_and_report_no_accuracy(name):
    task = make_task(name, dataset="digits", batch_size=64)
    assert name in TASKS and task.name == f"{name}_digits"
    params = task.init_params(gen())
    before = task.metrics(params)
    rule = B.Adam(lr=3e-3)
    res = unroll(task, rule, params, rule.init(params), 150, gen(1))
    after = task.metrics(res.params)
    assert set(after) == {"loss"} and after["loss"] < 0.8 * before["loss"]
    x, t = task.sample_batch(gen(2))
    assert x.shape == (64, 64) and t.shape == (64, 4 if name == "regression" else 64)
    if name == "autoencoder":
        assert torch.equal(x, t) and task.hidden_sizes == (32, 8, 32)


def test_mse_task_gradient_matches_finite_differences():
    task = AutoencoderTask("digits", hidden_sizes=[5, 3, 5], activation="tanh", batch_size=8, dtype="float64")
    params = task.init_params(gen(3))
    batch = task.sample_batch(gen(4))
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    grads = dict(zip(p, torch.autograd.grad(task.loss(p, batch), list(p.values()))))
    v = {k: torch.randn(w.shape, generator=gen(5), dtype=torch.float64) for k, w in params.items()}
    eps = 1e-6
    shifted = [task.loss({k: params[k] + s * eps * v[k] for k in params}, batch).item() for s in (1, -1)]
    fd = (shifted[0] - shifted[1]) / (2 * eps)
    assert sum(float((grads[k] * v[k]).sum()) for k in params) == pytest.approx(fd, rel=1e-7)


def test_population_of_regression_tasks_batches_with_vmap():
    tasks = [TeacherRegressionTask("digits", hidden_sizes=[6], batch_size=8, dtype="float64") for _ in range(2)]
    pop = PopulationTask(tasks)
    assert pop.mode == "vmap"
    params = pop.init_params([gen(0), gen(1)])
    batch = pop.sample_batch([gen(2), gen(3)])
    expected = torch.stack([t.loss(p, tuple(b[i] for b in batch)) for i, (t, p) in
                            enumerate(zip(tasks, pop.unstack(params)))])
    torch.testing.assert_close(pop.loss(params, batch), expected, rtol=1e-12, atol=0)


def test_bad_mse_task_arguments():
    with pytest.raises(ValueError, match="bottleneck"):
        AutoencoderTask(hidden_sizes=[])
    with pytest.raises(ValueError, match="outputs"):
        TeacherRegressionTask(outputs=0)
    with pytest.raises(ValueError, match="teacher_activation='swish' is not allowed"):
        TeacherRegressionTask(teacher_activation="swish")


# --------------------------------------------------------------------------- evaluation


TINY = {
    "device": "cpu", "steps": 8, "seeds": [100, 101], "eval_every": 4, "eval_examples": 100, "progress": False,
    "tuning": {"method": "grid", "budget": 2, "seeds": [0], "objective": "final_val_loss", "val_fraction": 0.2,
               "split_seed": 0, "seed": 0},
    "suite": {"regression": {"name": "regression", "dataset": "digits", "hidden_sizes": [8], "batch_size": 16},
              "fashion": {"name": "mlp", "dataset": "fashion_mnist", "hidden_sizes": [8], "batch_size": 16,
                          "root": "/nonexistent/data", "requires_files": True}},
    "optimizers": {"adam": {"rule": "adam", "lr": 0.01, "tune": {"lr": [0.003, 0.03]}}},
    "wandb": {"mode": "disabled"},
}


def test_evaluation_reports_tasks_without_accuracy_and_skips_absent_files(tmp_path, capsys):
    summary = E.evaluate(copy.deepcopy(TINY), tmp_path)
    out = capsys.readouterr().out
    assert "note: suite.fashion is skipped: its data files are absent" in out
    assert list(summary["tasks"]) == ["regression"]
    row = summary["tasks"]["regression"]["rows"]["adam@tuned"]
    assert math.isnan(row["stats"]["test_accuracy"]["median"]) and math.isfinite(row["stats"]["final_test_loss"]["median"])
    md = (tmp_path / "summary.md").read_text()
    assert "| n/a |" in md and "fashion" not in md.split("### regression")[1]
    assert (tmp_path / "scores.png").exists() and (tmp_path / "curves_regression.png").exists()


def test_absent_files_without_requires_files_fail_before_work(tmp_path):
    cfg = copy.deepcopy(TINY)
    del cfg["suite"]["fashion"]["requires_files"]
    with pytest.raises(FileNotFoundError, match="fashion_mnist"):
        E.evaluate(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    cfg["suite"] = {"fashion": {**TINY["suite"]["fashion"]}}
    with pytest.raises(ValueError, match=r"suite is empty: every entry \(fashion\) was skipped"):
        E.evaluate(cfg, tmp_path / "run")
    cfg["suite"]["fashion"]["requires_files"] = "yes"
    with pytest.raises(ValueError, match="requires_files='yes' is not allowed; allowed: true or false"):
        S.parse_suite(cfg["suite"], torch.device("cpu"))


def test_run_cell_tells_horizon_aware_rules_the_budget():
    class Spy(B.SGD):
        uses_horizon = True
        seen: list = []

        def init(self, params, horizon=None):
            Spy.seen.append(horizon)
            return super().init(params)

    task = make_task("regression", dataset="digits", hidden_sizes=[4], batch_size=8)
    S.run_cell(task, Spy(lr=0.01), 0, 6, torch.device("cpu"))
    S.run_cell(task, B.SGD(lr=0.01), 0, 6, torch.device("cpu"))  # rules without it: init(params) as before
    assert Spy.seen == [6]
