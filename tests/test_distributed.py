"""Data-parallel meta-training: two gloo workers on localhost equal each other and one process with all their tasks."""
from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from learned_opt.meta import TruncatedBPTT, meta_train
from learned_opt.meta import trainer as T
from learned_opt.meta.checkpoint import load_checkpoint
from learned_opt.tasks import make_family

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with the gloo backend")

PER_WORKER, WORLD = 2, 2
CFG = {
    "seed": 3, "device": "cpu", "progress": False, "checkpoint_every": 2, "distributed": False,
    "optimizer": {"name": "mlp", "hidden_sizes": [16]},
    "family": {"name": "quadratic_family", "dim": 8},
    "meta": {"steps": 4, "horizon": 6, "truncation": 3, "tasks_per_step": PER_WORKER, "optimizer": "adam",
             "lr": 0.01, "clip_grad_norm": 0.5, "first_order": False, "meta_loss": "log_mean",
             "divergence_factor": 1000.0},
    "validation": {"every": 0, "tasks": 0, "steps": 6},
    "wandb": {"mode": "disabled"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, out: str, cfg: dict, resume: bool) -> None:
    """One torchrun-like worker: the env variables torchrun would set, then the ordinary entry."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    built = {}
    real = T.build_rule

    def build_rule(c, device):
        built["rule"] = real(c, device)
        return built["rule"]

    T.build_rule = build_rule
    summary = meta_train(cfg, Path(out) / "run", resume=resume)
    torch.save({k: v.detach().clone() for k, v in built["rule"].state_dict().items()}, Path(out) / f"rank{rank}.pt")
    (Path(out) / f"summary{rank}.json").write_text(json.dumps(summary))


def spawn(out: Path, cfg: dict, resume: bool = False) -> list[dict]:
    mp.spawn(worker, args=(WORLD, free_port(), str(out), cfg, resume), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def assert_close_params(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m: f"{k}: {m}")


def test_task_slots_of_workers_are_the_slots_of_one_big_process():
    family = make_family("quadratic_family", dim=3)
    kw = dict(horizon=4, truncation=2, device=torch.device("cpu"))
    big = TruncatedBPTT(family, num_tasks=4, generator=torch.Generator().manual_seed(0), **kw)
    parts = [TruncatedBPTT(family, num_tasks=2, slot_offset=2 * r, generator=torch.Generator().manual_seed(0), **kw)
             for r in range(2)]
    seeds = [int(torch.randint(0, 2**62, (), generator=g)) for g in big.streams]
    assert seeds == [int(torch.randint(0, 2**62, (), generator=g)) for p in parts for g in p.streams]


def test_two_gloo_workers_equal_each_other_and_one_process_with_all_tasks(tmp_path):
    cfg = copy.deepcopy(CFG)
    cfg["distributed"] = True
    workers = spawn(tmp_path / "dist", cfg)
    for k in workers[0]:
        assert torch.equal(workers[0][k], workers[1][k]), k  # identical meta-parameters on every worker

    single_cfg = copy.deepcopy(CFG)
    single_cfg["meta"]["tasks_per_step"] = WORLD * PER_WORKER
    meta_train(single_cfg, tmp_path / "single")
    single = load_checkpoint(tmp_path / "single" / "checkpoint.pt")["meta_params"]
    # the same tasks, the same mean meta-gradient; only the order of the float32 sums differs
    assert_close_params(workers[0], single, rtol=1e-5, atol=1e-6)
    start = T.build_rule(CFG, torch.device("cpu")).state_dict()
    assert any(not torch.allclose(start[k], single[k]) for k in single)  # it did train

    ckpt = load_checkpoint(tmp_path / "dist" / "run" / "checkpoint.pt")  # written by rank 0 alone
    for k in workers[0]:
        assert torch.equal(ckpt["meta_params"][k], workers[0][k])
    assert ckpt["world_size"] == WORLD and len(ckpt["estimator_ranks"]) == WORLD
    rows = (tmp_path / "dist" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["tasks_counted"] for r in rows] == [WORLD * PER_WORKER] * CFG["meta"]["steps"]
    summaries = [json.loads((tmp_path / "dist" / f"summary{r}.json").read_text()) for r in range(WORLD)]
    assert [s["rank"] for s in summaries] == [0, 1] and summaries[0]["meta_loss"] == summaries[1]["meta_loss"]

    # resume: two workers continue a 2-step run to 4 steps exactly as the uninterrupted run did
    half = copy.deepcopy(cfg)
    half["meta"]["steps"] = 2
    spawn(tmp_path / "resumed", half)
    resumed = spawn(tmp_path / "resumed", cfg, resume=True)
    for k in workers[0]:
        assert torch.equal(resumed[0][k], workers[0][k]), k


@pytest.mark.parametrize("estimator", ["es", "pes"])
def test_gloo_workers_with_an_evolution_strategies_estimator_equal_one_process(tmp_path, estimator):
    base = copy.deepcopy(CFG)
    base["meta"].update(estimator=estimator, steps=3)
    base[estimator] = {"std": 0.01, "pairs": 2}
    cfg = copy.deepcopy(base)
    cfg["distributed"] = True
    workers = spawn(tmp_path / "dist", cfg)
    single_cfg = copy.deepcopy(base)
    single_cfg["meta"]["tasks_per_step"] = WORLD * PER_WORKER
    meta_train(single_cfg, tmp_path / "single")
    single = load_checkpoint(tmp_path / "single" / "checkpoint.pt")["meta_params"]
    for k in workers[0]:
        assert torch.equal(workers[0][k], workers[1][k]), k
    # the workers' perturbations are those of the same slots in one process: the same estimate
    assert_close_params(workers[0], single, rtol=1e-5, atol=1e-6)
