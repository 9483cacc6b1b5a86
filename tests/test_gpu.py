"""CUDA: the same code paths on the GPU (skipped cleanly without CUDA; run with ``pytest -m gpu``)."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import baselines as B
import learned_opt
from learned_opt.meta import TruncatedBPTT, meta_train
from learned_opt.optimizers import LSTMOptimizer, MLPOptimizer
from learned_opt.tasks.population import PopulationTask
from learned_opt.tasks import make_family, make_task
from learned_opt.unroll import unroll

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def to(tree, device):
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: to(v, device) for k, v in tree.items()}
    return tree


def test_meta_training_runs_on_cuda_and_its_checkpoint_loads(tmp_path):
    cfg = {"seed": 0, "device": "cuda", "progress": False, "checkpoint_every": 0,
           "optimizer": {"name": "lstm", "hidden_size": 8},
           "family": {"name": "mlp_family", "widths": [16], "batch_size": 64},
           "meta": {"steps": 3, "horizon": 8, "truncation": 4, "tasks_per_step": 4, "optimizer": "adam",
                    "lr": 0.003, "clip_grad_norm": 1.0, "meta_loss": "log_mean", "population": 2,
                    "checkpoint_segments": 2},
           "validation": {"every": 3, "tasks": 2, "steps": 8}, "wandb": {"mode": "disabled"}}
    summary = meta_train(copy.deepcopy(cfg), tmp_path)
    assert summary["skipped_steps"] == 0 and summary["meta_loss"] is not None
    rule = learned_opt.load(tmp_path / "checkpoint.pt", device="cuda")
    assert all(p.device.type == "cuda" and torch.isfinite(p).all() for p in rule.parameters())


@pytest.mark.parametrize("rule_name", ["adam", "lstm", "mlp"])
def test_unroll_on_cuda_equals_cpu(rule_name):
    """Same batches (drawn from a CPU generator either way), float64: equal to rounding."""
    task_cpu = make_task("mlp", dataset="digits", hidden_sizes=[16], batch_size=64, dtype="float64")
    task_gpu = make_task("mlp", dataset="digits", hidden_sizes=[16], batch_size=64, dtype="float64", device="cuda")
    params = task_cpu.init_params(torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    rule = {"adam": lambda: B.Adam(lr=0.01), "lstm": lambda: LSTMOptimizer(hidden_size=8).double(),
            "mlp": lambda: MLPOptimizer(hidden_sizes=[16]).double()}[rule_name]()
    rule_gpu = copy.deepcopy(rule).to(CUDA) if isinstance(rule, torch.nn.Module) else rule
    a = unroll(task_cpu, rule, params, rule.init(params), 10, torch.Generator().manual_seed(1))
    p_gpu = to(params, CUDA)
    b = unroll(task_gpu, rule_gpu, p_gpu, rule_gpu.init(p_gpu), 10, torch.Generator().manual_seed(1))
    torch.testing.assert_close(b.losses.cpu(), a.losses, rtol=1e-9, atol=1e-12)
    for k in params:
        torch.testing.assert_close(b.params[k].cpu(), a.params[k], rtol=1e-8, atol=1e-12)
    if isinstance(rule, torch.nn.Module):  # the meta-gradient too
        ga = torch.autograd.grad(a.losses.mean(), list(rule.parameters()), allow_unused=True)
        gb = torch.autograd.grad(b.losses.mean(), list(rule_gpu.parameters()), allow_unused=True)
        for x, y in zip(ga, gb):
            if x is not None:
                torch.testing.assert_close(y.cpu(), x, rtol=1e-7, atol=1e-12)


def test_population_on_cuda_equals_cpu_and_meta_trains():
    def pop(device):
        return PopulationTask([make_task("mlp", dataset="digits", hidden_sizes=[16], batch_size=64,
                                         dtype="float64", device=device) for _ in range(4)])
    pc, pg = pop(CPU), pop(CUDA)
    params = pc.init_params([torch.Generator().manual_seed(i) for i in range(4)])
    rule = B.Adam(lr=0.01)
    a = unroll(pc, rule, params, rule.init(params), 10, [torch.Generator().manual_seed(10 + i) for i in range(4)])
    pg_params = to(params, CUDA)
    b = unroll(pg, rule, pg_params, rule.init(pg_params), 10,
               [torch.Generator().manual_seed(10 + i) for i in range(4)])
    assert b.losses.shape == (10, 4) and b.losses.device.type == "cuda"
    torch.testing.assert_close(b.losses.cpu(), a.losses, rtol=1e-9, atol=1e-12)
    # batches drawn on the GPU by GPU generators, inside the meta-gradient estimator
    family = make_family("mlp_family", widths=[16], batch_size=64, device="cuda")
    torch.manual_seed(0)
    lstm = LSTMOptimizer(hidden_size=8).to(CUDA)
    est = TruncatedBPTT(family, horizon=8, truncation=4, num_tasks=4, device=CUDA,
                        generator=torch.Generator().manual_seed(0), population=4, checkpoint_segments=2)
    out = est.estimate(lstm)
    assert out.counted == 4 and all(g.device.type == "cuda" and torch.isfinite(g).all() for g in out.grads)


@pytest.mark.parametrize("name", ["bench_meta_step", "bench_vs_higher", "bench_population", "bench_flops",
                                  "bench_memory"])
def test_benchmarks_run_on_cuda(name, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "benchmarks" / f"{name}.py"), "--quick",
                          "--device", "cuda", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "device cuda" in out.stdout and (tmp_path / "table.md").exists()


def test_a_batchnorm_module_task_on_cuda_runs_like_on_the_cpu():
    """A module task (BatchNorm buffers carried as task state) gives the CPU's numbers on the GPU, in float64,
    and its torch.optim peer runs there too."""
    from baselines.torch_peer import TorchOptimRule
    from learned_opt.unroll import init_state
    results = {}
    for device in (CPU, CUDA):
        task = make_task("module", model="bn_cnn", data="digits", model_options={"channels": [4], "image": 8},
                         batch_size=32, dtype="float64", device=device)
        for label, rule in (("adam", B.Adam(lr=0.01)), ("peer", TorchOptimRule("torch.optim.Adam", lr=0.01))):
            params = task.init_params(torch.Generator().manual_seed(0))
            res = unroll(task, rule, params, init_state(rule, params, 10, task), 10, torch.Generator().manual_seed(1))
            results[device.type, label] = (res.losses.cpu(), to(res.params, CPU), task.metrics(res.params)["loss"])
    for label in ("adam", "peer"):
        (lc, pc, mc), (lg, pg, mg) = results["cpu", label], results["cuda", label]
        torch.testing.assert_close(lg, lc, rtol=1e-9, atol=1e-12)
        for k in pc:
            torch.testing.assert_close(pg[k], pc[k], rtol=1e-7, atol=1e-9)
        assert mg == pytest.approx(mc, rel=1e-9)
