"""Episodic objectives (ProtoNet / R2-D2) of the one trainer: the head as a differentiable layer on
sampled episodes, with the trainer's resume and checkpoints."""

from __future__ import annotations

import pytest
import torch
from _train_data import one_thread  # noqa: F401 (an autouse fixture)

from episodes import load_data
from episodes.protocols import EpisodeProtocol
from fewshot.errors import FewShotError
from fewshot.evaluation.evaluate import evaluate
from fewshot.models.checkpoint import load_checkpoint, load_encoder
from fewshot.training.augment import Augment
from fewshot.training.config import TrainConfig
from fewshot.training.episodic import EpisodicConfig, EpisodicHead
from fewshot.training.trainer import train


@pytest.fixture(scope="module")
def glyphs_base():
    return load_data("glyphs?alphabets=5&per_class=8", "base")


def test_protonet_training_reduces_loss_and_beats_chance(glyphs_base, tmp_path):
    cfg = EpisodicConfig(head="proto", way=5, shot=1, query=5, episodes_per_step=3, steps_per_epoch=6,
                         epochs=3, lr=2e-3, seed=0).train_config()
    assert cfg.objective == "protonet" and cfg.val_shots == [1] and cfg.warmup_epochs == 0
    result = train(cfg, glyphs_base, None, tmp_path, progress=False)
    assert result.metrics[-1]["loss"] < 0.8 * result.metrics[0]["loss"], result.metrics
    assert result.metrics[-1]["train_acc"] > 0.4          # chance is 0.2
    assert result.val_accuracy is not None and result.val_accuracy > 0.4
    assert result.held_out_classes and len(result.held_out_classes) == 12   # 20% of 60 base classes
    model, info = load_encoder(result.best_path)
    assert info["config"]["objective"] == "protonet" and info["distance"] == "euclidean"
    assert info["base_mean"].shape == (model.embedding_dim,)
    scale = load_checkpoint(result.last_path)["loss_state"]["head.log_scale"]   # trained with the encoder
    assert scale.shape == () and float(scale) != 0.0
    novel = load_data("glyphs?alphabets=5&per_class=8", "novel")
    res = evaluate(result.best_path, novel, heads=["proto"],
                   episodes=EpisodeProtocol(shots=(1,), query=3, episodes=40), progress=False)
    assert res.accuracy[("proto", 1)].mean() > 0.35


def test_r2d2_trains_through_the_closed_form_reproducibly_without_validation(glyphs_base, tmp_path):
    cfg = EpisodicConfig(head="ls", way=5, shot=2, query=3, episodes_per_step=2, steps_per_epoch=3, epochs=1,
                         val_fraction=0.0, seed=1).train_config()
    a = train(cfg, glyphs_base, None, tmp_path / "a", progress=False)
    assert a.val_accuracy is None and torch.isfinite(torch.tensor(a.metrics[0]["loss"]))
    assert not any(k.startswith("val_") for k in a.metrics[0]) and a.metrics[0]["best"]
    _, info = load_encoder(a.last_path)
    assert info["config"]["objective"] == "r2d2" and info["distance"] == "euclidean"
    assert load_encoder(a.best_path)[1]["hash"] == info["hash"]          # no validation: the last is the best
    b = train(cfg, glyphs_base, None, tmp_path / "b", progress=False)
    assert load_encoder(b.last_path)[1]["hash"] == info["hash"]          # same seed, same weights


def test_episodic_run_resumes_bit_exact_after_ctrl_c(glyphs_base, tmp_path, monkeypatch):
    """The trainer's resume, now for episodic runs too: Ctrl-C in epoch 2, resume, same weights."""
    cfg = TrainConfig(objective="protonet", episode_way=5, episode_shot=1, episode_query=3,
                      episodes_per_step=2, steps_per_epoch=4, epochs=2, optimizer="adam", lr=1e-3,
                      warmup_epochs=0, val_way=5, val_shots=[1], val_query=3, val_episodes=20,
                      distance="euclidean")
    full = train(cfg, glyphs_base, None, tmp_path / "full", progress=False)
    calls, original = {"n": 0}, Augment.__call__

    def interrupting(self, x, generator=None):
        calls["n"] += 1
        if calls["n"] == 4 + 3:   # step 3 of epoch 2
            raise KeyboardInterrupt
        return original(self, x, generator)

    monkeypatch.setattr(Augment, "__call__", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, glyphs_base, None, tmp_path / "cut", progress=False)
    monkeypatch.setattr(Augment, "__call__", original)
    saved = load_checkpoint(tmp_path / "cut" / "last.pt")
    where = saved["sampler"]
    assert (where["kind"], where["epoch"], where["step"]) == ("episodes", 1, 2)
    cfg.resume = "auto"
    resumed = train(cfg, glyphs_base, None, tmp_path / "cut", progress=False)
    a, b = load_checkpoint(full.last_path), load_checkpoint(resumed.last_path)
    assert a["hash"] == b["hash"]
    assert torch.equal(a["loss_state"]["head.log_scale"], b["loss_state"]["head.log_scale"])
    assert [r["loss"] for r in full.metrics] == [r["loss"] for r in resumed.metrics]
    with pytest.raises(FewShotError, match="objective 'protonet' .checkpoint. vs 'metric'"):
        train(TrainConfig(resume="auto", val_way=5, val_shots=[1], val_query=3, val_episodes=20), glyphs_base,
              None, tmp_path / "cut", progress=False)


def test_episodic_head_is_differentiable_and_scaled():
    torch.manual_seed(0)
    s = torch.randn(3, 10, 8, requires_grad=True)
    sy = torch.arange(5).repeat_interleave(2).expand(3, -1)
    q = torch.randn(3, 6, 8, requires_grad=True)
    for kind in ("proto", "ls"):
        head = EpisodicHead(kind)
        logits = head(s, sy, q, 5)
        assert logits.shape == (3, 6, 5)
        logits.logsumexp(-1).sum().backward()
        assert s.grad is not None and q.grad is not None and head.log_scale.grad is not None
        s.grad = q.grad = None


@pytest.mark.parametrize("bad", [{"head": "nn"}, {"way": 0}, {"lr": -1.0}, {"optimizer": "rmsprop"},
                                 {"no_such_option": 1}])
def test_bad_config_is_refused(bad):
    with pytest.raises(FewShotError):
        EpisodicConfig.from_dict(bad)


def test_too_many_ways_is_refused(glyphs_base, tmp_path):
    cfg = EpisodicConfig(way=500, val_fraction=0.0).train_config()
    with pytest.raises(FewShotError, match="500-way episodes but the training set has 60 classes"):
        train(cfg, glyphs_base, None, tmp_path, progress=False)
    with pytest.raises(FewShotError, match="unknown objective 'maml'"):
        train(TrainConfig(objective="maml"), glyphs_base, None, tmp_path, progress=False)
