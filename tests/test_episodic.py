"""Episodic training (ProtoNet / R2-D2): the head as a differentiable layer on sampled episodes."""

from __future__ import annotations

import pytest
import torch

from episodes import load_data
from episodes.protocols import EpisodeProtocol
from fewshot.errors import FewShotError
from fewshot.evaluation.evaluate import evaluate
from fewshot.models.checkpoint import load_encoder
from fewshot.training.episodic import EpisodicConfig, EpisodicHead, train_episodic


@pytest.fixture(scope="module")
def glyphs_base():
    return load_data("glyphs?alphabets=5&per_class=8", "base")


def test_protonet_training_reduces_loss_and_beats_chance(glyphs_base, tmp_path):
    cfg = EpisodicConfig(head="proto", way=5, shot=1, query=5, episodes_per_step=3, steps_per_epoch=6,
                         epochs=2, lr=2e-3, seed=0)
    result = train_episodic(cfg, glyphs_base, None, tmp_path, progress=False)
    first = result.metrics[0]["first_loss"]
    last = result.metrics[-1]["last_loss"]
    assert last < 0.8 * first, (first, last)
    assert result.metrics[-1]["train_accuracy"] > 0.4          # chance is 0.2
    assert result.val_accuracy is not None and result.val_accuracy > 0.4
    assert result.held_out_classes and len(result.held_out_classes) == 12   # 20% of 60 base classes
    model, info = load_encoder(result.best_path)
    assert info["config"]["mode"] == "episodic" and info["distance"] == "euclidean"
    assert info["base_mean"].shape == (model.embedding_dim,)
    novel = load_data("glyphs?alphabets=5&per_class=8", "novel")
    res = evaluate(result.best_path, novel, heads=["proto"],
                   episodes=EpisodeProtocol(shots=(1,), query=3, episodes=40), progress=False)
    assert res.accuracy[("proto", 1)].mean() > 0.35


def test_r2d2_head_trains_through_the_closed_form_reproducibly(glyphs_base, tmp_path):
    cfg = EpisodicConfig(head="ls", way=5, shot=2, query=3, episodes_per_step=2, steps_per_epoch=3, epochs=1,
                         val_fraction=0.0, seed=1)
    a = train_episodic(cfg, glyphs_base, None, tmp_path / "a", progress=False)
    assert a.val_accuracy is None and torch.isfinite(torch.tensor(a.metrics[0]["loss"]))
    _, info = load_encoder(a.last_path)
    assert info["config"]["episodic"]["head"] == "ls"
    b = train_episodic(cfg, glyphs_base, None, tmp_path / "b", progress=False)
    assert load_encoder(b.last_path)[1]["hash"] == info["hash"]          # same seed, same weights


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
    with pytest.raises(FewShotError, match="way"):
        train_episodic(EpisodicConfig(way=500, val_fraction=0.0), glyphs_base, None, tmp_path, progress=False)
