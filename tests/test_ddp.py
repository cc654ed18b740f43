"""DistributedDataParallel on 2 CPU processes (gloo): shared M-per-class batches, one writer."""

import json
import os
import socket

import torch
import torch.multiprocessing as mp
from _train_data import digits_set

from fewshot.checkpoint import load_checkpoint, state_hash
from fewshot.train import TrainConfig, train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, report: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    data, val = digits_set().split_classes(0.3, seed=0)
    cfg = TrainConfig(epochs=1, batch_size=16, m=4, val_way=3, val_shots=[1], val_episodes=10, val_query=5,
                      device="cpu")
    try:
        res = train(cfg, data, val, out, progress=False)
        torch.distributed.barrier()
        weights = load_checkpoint(res.last_path)["model"]  # rank 0 wrote it; every rank reads it
        with open(f"{report}.{rank}", "w") as fh:
            json.dump({"rank": rank, "hash": state_hash(weights), "metrics": len(res.metrics)}, fh)
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_cpu_processes_gloo(tmp_path):
    out, report = tmp_path / "run", tmp_path / "report"
    mp.spawn(_worker, args=(2, _free_port(), str(out), str(report)), nprocs=2, join=True)
    reports = [json.loads((tmp_path / f"report.{r}").read_text()) for r in range(2)]
    assert reports[0]["hash"] == reports[1]["hash"]
    assert (out / "best.pt").exists() and (out / "last.pt").exists()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # only rank 0 wrote
    row = json.loads(lines[0])
    assert row["img_per_s"] > 0 and 0 <= row["val_accuracy"] <= 1
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["world_size"] == 2
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
