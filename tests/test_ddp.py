"""DistributedDataParallel on 2 CPU processes (gloo): shared M-per-class batches or episodes, one writer."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from _train_data import digits_set

from fewshot.models.checkpoint import load_checkpoint, state_hash
from fewshot.training.config import TrainConfig
from fewshot.training.trainer import Trainer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


EPISODIC = dict(objective="protonet", episode_way=3, episode_shot=1, episode_query=2, episodes_per_step=2,
                steps_per_epoch=3, optimizer="adam", lr=1e-3, distance="euclidean")


def _worker(rank: int, world: int, port: int, out: str, report: str, objective: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    data, val = digits_set().split_classes(0.3, seed=0)
    cfg = TrainConfig(epochs=1, batch_size=16, m=4, val_way=3, val_shots=[1], val_episodes=10, val_query=5,
                      device="cpu", **(EPISODIC if objective == "protonet" else {}))
    try:
        trainer = Trainer(cfg)
        res = trainer.fit(data, val, out)
        torch.distributed.barrier()
        held = state_hash(res.model.state_dict())  # what this rank itself trained, in its own memory
        written = state_hash(load_checkpoint(res.last_path)["model"])  # what rank 0 wrote
        own = {k: v.tolist() for k, v in trainer.objective.state_dict().items()}  # e.g. the head's scale
        with open(f"{report}.{rank}", "w") as fh:
            json.dump({"rank": rank, "held": held, "written": written, "metrics": len(res.metrics),
                       "objective": own}, fh)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("objective", ["metric", "protonet"])
def test_ddp_two_cpu_processes_gloo(tmp_path, objective):
    out, report = tmp_path / "run", tmp_path / "report"
    mp.spawn(_worker, args=(2, _free_port(), str(out), str(report), objective), nprocs=2, join=True)
    reports = [json.loads((tmp_path / f"report.{r}").read_text()) for r in range(2)]
    # each rank's own weights agree (DDP kept the replicas in step) and match the file rank 0 wrote
    assert reports[0]["held"] == reports[1]["held"] == reports[0]["written"]
    assert reports[0]["objective"] == reports[1]["objective"]
    if objective == "protonet":
        scale = reports[0]["objective"]["head.log_scale"]
        assert scale != 0.0  # trained, and all-reduced: the same on both ranks and in the file
        assert load_checkpoint(out / "last.pt")["loss_state"]["head.log_scale"].item() == scale
    assert (out / "best.pt").exists() and (out / "last.pt").exists()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # only rank 0 wrote
    row = json.loads(lines[0])
    assert row["img_per_s"] > 0 and 0 <= row["val_accuracy"] <= 1
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["world_size"] == 2
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
