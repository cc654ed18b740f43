"""Episodic training: a few-shot head used as a differentiable layer on sampled episodes.

Each step draws N-way K-shot episodes from the base classes with :func:`episodes.sample_episodes`,
embeds support and query images with the encoder, fits a head on the support embeddings *inside
the graph* and takes the cross-entropy of the query logits. With the ``proto`` head this is
Prototypical Networks (Snell et al. 2017, ``objective = "protonet"``); with the ``ls`` head
(closed-form ridge regression) it is R2-D2 (Bertinetto et al. 2019, ``objective = "r2d2"``). A
learnable logit scale (and, for ``ls``, a learnable bias) is trained with the encoder, as both
papers do.

:class:`EpisodicObjective` is one of the objectives of the one trainer
(:class:`fewshot.training.trainer.Trainer`), so episodic runs share its resume, torchrun, mixed
precision, validation and checkpoints, and their checkpoints are evaluated, adapted and compared
exactly like metric-trained ones. :class:`EpisodicConfig` is the vocabulary of the ``[episodic]``
table of an ablation grid; :meth:`EpisodicConfig.train_config` turns it into a
:class:`~fewshot.training.config.TrainConfig`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from episodes import EpisodeSpec, ImageSet, sample_episodes
from fewshot.errors import FewShotError
from fewshot.options import from_options
from fewshot.seeds import derive_seed
from fewshot.training.config import TrainConfig
from fewshot.training.objectives import Objective

__all__ = ["EPISODIC_HEADS", "EpisodicConfig", "EpisodicHead", "EpisodicObjective", "EpisodeBatches"]

EPISODIC_HEADS = ("proto", "ls")
HEAD_OF = {"protonet": "proto", "r2d2": "ls"}


@dataclass
class EpisodicConfig:
    """The settings of an episodic run in the words of an ablation grid's ``[episodic]`` table.

    Attributes:
        encoder: encoder name (``conv4``, ``resnet12``, ...), as in
            :func:`fewshot.models.encoders.build_encoder`.
        encoder_kwargs: extra encoder options (e.g. ``{"pool": "avg"}``).
        embedding_dim: optional linear projection of the backbone feature.
        head: ``"proto"`` (ProtoNet) or ``"ls"`` (R2-D2: ridge regression solved in closed form).
        distance: the head's distance for ``proto`` (and the default the checkpoint records).
        ridge_lambda: fixed ridge penalty of the ``ls`` head during training (R2-D2 learns a scale instead).
        way, shot, query: the training episodes (ProtoNet trains with more ways than it tests).
        episodes_per_step: episodes batched into one optimiser step.
        steps_per_epoch, epochs: length of training.
        lr, weight_decay, optimizer: Adam (default) or SGD with momentum 0.9, cosine schedule.
        augment: options of :class:`fewshot.training.augment.Augment` (``{"mode": "none"}`` disables it).
        image_size, channels: network input; ``None`` keeps the data's.
        val_fraction: share of the base classes held out for validation when no ``val`` set is given
            (the same seeded split as metric training; 0 trains on all classes, keeps the last epoch).
        seed, device: reproducibility and placement (``auto``: CUDA when available, else CPU).
    """

    encoder: str = "conv4"
    encoder_kwargs: dict = field(default_factory=dict)
    embedding_dim: int | None = None
    head: str = "proto"
    distance: str = "euclidean"
    ridge_lambda: float = 1.0
    way: int = 10
    shot: int = 5
    query: int = 5
    episodes_per_step: int = 2
    steps_per_epoch: int = 50
    epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: str = "adam"
    augment: dict = field(default_factory=lambda: {"mode": "affine", "degrees": 10.0})
    image_size: int | None = None
    channels: int | None = None
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.head not in EPISODIC_HEADS:
            raise FewShotError(f"episodic training head must be one of {', '.join(EPISODIC_HEADS)}, "
                               f"got {self.head!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise FewShotError(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        for name in ("way", "shot", "query", "episodes_per_step", "steps_per_epoch", "epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise FewShotError(f"episodic {name} must be a positive integer, got {value!r}")
        if self.lr <= 0:
            raise FewShotError(f"learning rate must be positive, got {self.lr}")

    @classmethod
    def from_dict(cls, d: dict) -> EpisodicConfig:
        return from_options(cls, d, "episodic training")

    def to_dict(self) -> dict:
        return asdict(self)

    def train_config(self) -> TrainConfig:
        """The one trainer's settings for this run: objective ``protonet`` (``proto``) or ``r2d2``
        (``ls``), no warm-up, and validation on 300 fixed 5-way ``shot``-shot episodes."""
        return TrainConfig(
            objective={v: k for k, v in HEAD_OF.items()}[self.head], encoder=self.encoder,
            encoder_args=dict(self.encoder_kwargs), embedding_dim=self.embedding_dim, distance=self.distance,
            ridge_lambda=float(self.ridge_lambda), episode_way=self.way, episode_shot=self.shot,
            episode_query=self.query, episodes_per_step=self.episodes_per_step,
            steps_per_epoch=self.steps_per_epoch, epochs=self.epochs, lr=self.lr,
            weight_decay=self.weight_decay, optimizer=self.optimizer, momentum=0.9, warmup_epochs=0.0,
            augment=dict(self.augment), image_size=self.image_size, channels=self.channels,
            val_fraction=self.val_fraction, val_way=5, val_shots=[self.shot], val_query=15,
            val_episodes=300, seed=self.seed, device=self.device)


class EpisodicHead(nn.Module):
    """A head as a differentiable layer with a learnable logit scale (and bias for ``ls``).

    ``forward(support [E,S,D], support_y [E,S], query [E,Q,D], way) -> logits [E,Q,way]``.
    The head itself comes from :mod:`fewshot.heads` (the same code that scores evaluation
    episodes), so training and testing use one definition of the classifier.
    """

    def __init__(self, head: str = "proto", distance: str = "euclidean", ridge_lambda: float = 1.0,
                 init_scale: float | None = None):
        super().__init__()
        from fewshot.heads import get_head

        self.kind = head
        if head == "proto":
            self.head = get_head("proto", distance=distance)
            init_scale = init_scale if init_scale is not None else (10.0 if distance == "cosine" else 1.0)
        else:
            self.head = _ridge_head(ridge_lambda)
            init_scale = init_scale if init_scale is not None else 1.0
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.zeros(())) if head == "ls" else None

    def forward(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                way: int) -> torch.Tensor:
        logits = self.head.fit(support, support_y, way)(query)
        logits = logits * self.log_scale.exp()
        if self.bias is not None:
            logits = logits + self.bias
        return logits


def _ridge_head(lam: float):
    """The evaluation ``ls`` head at a fixed ridge penalty (R2-D2 trains through the closed form)."""
    from fewshot.heads import get_head

    return get_head("ls", lam=float(lam))


class EpisodeBatches:
    """The training episodes of one epoch, ``episodes_per_step`` per step, drawn from (seed, epoch)
    only, so every process and every resume sees the same ones."""

    def __init__(self, data: ImageSet, spec: EpisodeSpec, per_step: int, steps: int, seed: int,
                 device: torch.device):
        if spec.way > data.num_classes:
            raise FewShotError(f"episodic training asks for {spec.way}-way episodes but the training set "
                               f"has {data.num_classes} classes", data.name or None)
        self.data, self.spec, self.per_step, self.steps, self.seed = data, spec, per_step, steps, seed
        self.device = device

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int) -> _EpisodeEpoch:
        eps = sample_episodes(self.data, self.spec, self.steps * self.per_step,
                              seed=derive_seed(self.seed, epoch, 1), drop_small=True)
        return _EpisodeEpoch(eps, self.per_step, self.device)


class _EpisodeEpoch:
    def __init__(self, eps, per_step: int, device: torch.device):
        self.eps, self.per_step, self.device = eps, per_step, device

    def batch(self, step: int, rank: int, world: int) -> tuple[torch.Tensor, tuple]:
        """This process's episodes of ``step``: all support images, then all query images."""
        per_rank = self.per_step // world
        start = step * self.per_step + rank * per_rank
        eps = self.eps[start:start + per_rank]
        sy, qy = eps.labels()
        idx = torch.cat([eps.support.reshape(-1), eps.query.reshape(-1)])
        return idx, (sy.to(self.device), qy.to(self.device), eps.support.numel())


class EpisodicObjective(Objective):
    """Cross-entropy of query logits from a head fitted on the support embeddings (in the graph).

    Validation scores fixed episodes with the same head (its scale and bias do not change the
    argmax). The checkpoint records the head's distance: ``distance`` for ProtoNet, euclidean for
    R2-D2.
    """

    kind = "episodes"

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        head = HEAD_OF[cfg.objective]
        self.head = EpisodicHead(head, cfg.distance, cfg.ridge_lambda)
        self.distance = cfg.distance if head == "proto" else "euclidean"
        self.spec = EpisodeSpec(cfg.episode_way, cfg.episode_shot, cfg.episode_query)
        self.per_step, self.steps, self.seed = cfg.episodes_per_step, cfg.steps_per_epoch, cfg.seed

    def schedule(self, data: ImageSet, world: int, device: torch.device) -> EpisodeBatches:
        return EpisodeBatches(data, self.spec, self.per_step, self.steps, self.seed, device)

    def forward(self, emb: torch.Tensor, logits: torch.Tensor, target: tuple) -> tuple:
        sy, qy, n_support = target
        e, d = sy.shape[0], emb.shape[-1]
        out = self.head(emb[:n_support].view(e, -1, d), sy, emb[n_support:].view(e, -1, d), self.spec.way)
        # the base-class logits take no part, but every parameter must reach the loss (DDP)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), qy.reshape(-1)) + 0.0 * logits.sum()
        return loss, {}, (out.detach().argmax(-1) == qy).sum(), int(qy.numel())

    @torch.no_grad()
    def score(self, features: torch.Tensor, episodes) -> torch.Tensor:
        s, sy, q, qy = episodes.gather(features)
        return (self.head(s, sy, q, episodes.spec.way).argmax(-1) == qy).float().mean(1)
