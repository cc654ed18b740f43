"""What a training run minimises, and on which batches: the trainer's pluggable objectives.

An objective is a small :class:`torch.nn.Module` (its parameters, e.g. a proxy loss's class
weights or a head's logit scale, are trained with the encoder and saved in the checkpoint) that
answers four questions for :class:`fewshot.training.trainer.Trainer`:

- :meth:`Objective.schedule`: which images each step of an epoch sees (a function of the seed
  and the epoch only, so every process and every resume draws the same batches);
- :meth:`Objective.forward`: the loss of a step from the encoder's ``(embedding, logits)``;
- :meth:`Objective.score`: per-episode validation accuracy from embedded validation images;
- :meth:`Objective.reduce_gradients`: the all-reduce of its own parameters under torchrun.

Two ship: :class:`MetricObjective` (a pytorch-metric-learning loss on mined tuples plus joint
cross-entropy over M-per-class batches, the default) and
:class:`fewshot.training.episodic.EpisodicObjective` (ProtoNet and R2-D2 on sampled episodes).
:func:`fewshot.training.trainer.build_objective` picks one from ``TrainConfig.objective``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from episodes import ImageSet
from fewshot.models.losses import build_loss, build_miner, distance_name, is_proxy_loss
from fewshot.seeds import derive_seed

__all__ = ["Objective", "MetricObjective", "MetricBatches",
           "episode_accuracy"]


def episode_accuracy(features: torch.Tensor, episodes, distance: str = "cosine") -> torch.Tensor:
    """Per-episode accuracy ``[E]`` of nearest-prototype classification, all episodes batched."""
    if distance == "cosine":
        features = F.normalize(features, dim=-1)
    s, sy, q, qy = episodes.gather(features)
    way = episodes.spec.way
    onehot = F.one_hot(sy, way).to(s.dtype)                                    # [E,S,way]
    protos = onehot.transpose(1, 2) @ s / onehot.sum(1).unsqueeze(-1)           # [E,way,D]
    if distance == "cosine":
        scores = q @ F.normalize(protos, dim=-1).transpose(1, 2)
    else:
        scores = -torch.cdist(q, protos).pow(2)
    return (scores.argmax(-1) == qy).float().mean(1)


class Objective(torch.nn.Module):
    """Base class of the trainer's objectives (see the module docstring).

    ``parts`` maps the names of the loss parts :meth:`forward` returns to the metrics-row keys
    they are reported under (epoch means); ``distance`` is the distance the checkpoint records
    (how evaluation scores episodes by default); ``kind`` names the batch schedule in checkpoints.
    """

    parts: dict[str, str] = {}
    distance: str = "cosine"
    kind: str = "objective"

    def schedule(self, data: ImageSet, world: int, device: torch.device):
        """An object with ``len()`` (steps per epoch) and ``epoch(e)`` -> ``batch(step, rank, world)``
        giving ``(image indices [B], target)`` of this process's share of the step."""
        raise NotImplementedError

    def forward(self, embedding: torch.Tensor, logits: torch.Tensor, target) -> tuple:
        """``(loss, {part: value}, correct, scored)`` of one step; ``correct`` / ``scored`` give
        the training accuracy. Every encoder output must take part (DDP)."""
        raise NotImplementedError

    @torch.no_grad()
    def score(self, features: torch.Tensor, episodes) -> torch.Tensor:
        """Per-episode accuracy ``[E]`` on validation episodes from their images' features."""
        return episode_accuracy(features, episodes, self.distance)

    def saved_state(self) -> dict | None:
        """What the checkpoint keeps of this objective (``loss_state``); None without parameters."""
        return self.state_dict() if any(p.requires_grad for p in self.parameters()) else None

    def restore_state(self, state: dict) -> None:
        self.load_state_dict(state)

    def reduce_gradients(self, world: int) -> None:
        """Make this objective's own gradients identical on every process (torchrun)."""
        for p in self.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world


class MetricBatches:
    """The batch index lists of one epoch, identical on every rank and after a resume.

    ``mperclass`` runs PML's ``MPerClassSampler`` with its module RNG seeded for the epoch (and
    the sampler's class order reset), so the epoch's batches are a function of (seed, epoch).
    ``mperclass-group`` draws, for every batch, a group (``groups``: one name per class; a group
    with probability in proportion to its images, among those with ``batch_size / m`` classes),
    then that many of its classes and ``m`` images of each (with replacement only for a class
    smaller than ``m``): the metric loss sees the hardest negatives a within-group episode holds.
    PML has no such sampler; as many batches per epoch as ``mperclass`` gives.
    """

    def __init__(self, labels: torch.Tensor, sampler: str, m: int, batch_size: int, seed: int,
                 device: torch.device | None = None, groups: list[str] | None = None):
        self.labels, self.kind, self.batch_size, self.seed, self.m = labels, sampler, batch_size, seed, m
        self.labels_dev = labels.to(device) if device is not None else labels
        self.n = int(labels.shape[0])
        if sampler == "mperclass-group":
            self._group_plan(labels, groups or [])
        if sampler == "mperclass":
            from pytorch_metric_learning.samplers import MPerClassSampler
            self.sampler = MPerClassSampler(labels, m, batch_size=batch_size,
                                            length_before_new_iter=max(self.n, batch_size))
            self._classes = list(self.sampler.labels)

    def __len__(self) -> int:
        if self.kind == "mperclass-group":   # as many batches as MPerClassSampler's epoch of n images
            return max(self.n, self.batch_size) // self.batch_size
        return self.n // self.batch_size if self.kind == "random" else len(self.sampler) // self.batch_size

    def _group_plan(self, labels: torch.Tensor, groups: list[str]) -> None:
        lab = labels.numpy()
        order = np.argsort(lab, kind="stable")
        counts = np.bincount(lab, minlength=len(groups))
        self._members = np.split(order, np.cumsum(counts)[:-1])          # image indices of every class
        per_batch = self.batch_size // self.m
        names = list(dict.fromkeys(groups))
        classes = [np.array([c for c, g in enumerate(groups) if g == name and counts[c] > 0])
                   for name in names]
        self._group_classes = [c for c in classes if len(c) >= per_batch]
        sizes = np.array([counts[c].sum() for c in self._group_classes], dtype=np.float64)
        self._group_p = sizes / sizes.sum()

    def _group_epoch(self, seed: int) -> torch.Tensor:
        rng = np.random.default_rng(seed)
        per_batch, m = self.batch_size // self.m, self.m
        index = np.empty((len(self), self.batch_size), dtype=np.int64)
        picks = rng.choice(len(self._group_classes), size=len(self), p=self._group_p)
        for b, g in enumerate(picks):
            for j, c in enumerate(rng.choice(self._group_classes[g], per_batch, replace=False)):
                pool = self._members[c]
                index[b, j * m:(j + 1) * m] = rng.choice(pool, m, replace=len(pool) < m)
        return torch.from_numpy(index)

    def epoch(self, epoch: int) -> _MetricEpoch:
        seed = derive_seed(self.seed, epoch, 1)
        if self.kind == "mperclass-group":
            return _MetricEpoch(self._group_epoch(seed), self.labels_dev)
        if self.kind == "random":
            g = torch.Generator().manual_seed(seed)
            perm = torch.randperm(self.n, generator=g)
            return _MetricEpoch(perm[: len(self) * self.batch_size].view(len(self), self.batch_size),
                                self.labels_dev)
        from pytorch_metric_learning.utils import common_functions as c_f
        saved = c_f.NUMPY_RANDOM
        c_f.NUMPY_RANDOM = np.random.RandomState(seed % (2**32))
        try:
            self.sampler.labels = list(self._classes)
            idx = list(iter(self.sampler))
        finally:
            c_f.NUMPY_RANDOM = saved
        index = torch.as_tensor(np.asarray(idx, dtype=np.int64)).view(-1, self.batch_size)
        return _MetricEpoch(index, self.labels_dev)


class _MetricEpoch:
    def __init__(self, index: torch.Tensor, labels: torch.Tensor):
        self.index, self.labels = index, labels

    def batch(self, step: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
        per_rank = self.index.shape[1] // world
        idx = self.index[step, rank * per_rank:(rank + 1) * per_rank]
        return idx, self.labels[idx.to(self.labels.device)]


class MetricObjective(Objective):
    """``w_metric * metric_loss(embedding, mined tuples) + w_ce * cross_entropy(logits)``.

    The metric loss and miner come from pytorch-metric-learning (by name or as objects); proxy
    losses (arcface, proxyanchor) carry trainable class proxies, optimised with the encoder. Under
    torchrun the loss and the miner see the global batch (PML's distributed wrappers).
    """

    parts = {"metric": "metric_loss", "ce": "ce_loss"}

    def __init__(self, cfg, num_classes: int, embedding_dim: int, *, loss=None, miner=None,
                 distributed: bool = False):
        super().__init__()
        self.w_metric, self.w_ce, self.label_smoothing = cfg.w_metric, cfg.w_ce, cfg.label_smoothing
        self.sampler, self.m, self.batch_size, self.seed = cfg.sampler, cfg.m, cfg.batch_size, cfg.seed
        self.kind = cfg.sampler
        self.distance = distance_name(cfg.distance)
        self.loss_name = cfg.loss if loss is None else type(loss).__name__
        if cfg.w_metric > 0:
            self.loss = build_loss(loss if loss is not None else cfg.loss, distance=cfg.distance,
                                   num_classes=num_classes, embedding_dim=embedding_dim,
                                   **cfg.loss_args)
        else:  # pure cross-entropy ("Baseline"): no metric loss at all
            self.loss = torch.nn.Module()
        is_proxy = loss is None and is_proxy_loss(cfg.loss)
        self.miner = None
        if not is_proxy and cfg.w_metric > 0:
            self.miner = build_miner(miner if miner is not None else cfg.miner, distance=cfg.distance)
        self._loss_fn, self._miner_fn = self.loss, self.miner
        if distributed:
            from pytorch_metric_learning.utils.distributed import (
                DistributedLossWrapper,
                DistributedMinerWrapper,
            )
            self._loss_fn = DistributedLossWrapper(self.loss)
            self._miner_fn = DistributedMinerWrapper(self.miner) if self.miner is not None else None

    def saved_state(self) -> dict | None:
        """The loss's own state (e.g. arcface's ``W``) when it has trainable parameters."""
        return self.loss.state_dict() if any(p.requires_grad for p in self.loss.parameters()) else None

    def restore_state(self, state: dict) -> None:
        self.loss.load_state_dict(state)

    def schedule(self, data: ImageSet, world: int, device: torch.device) -> MetricBatches:
        return MetricBatches(data.labels, self.sampler, self.m, self.batch_size, self.seed, device,
                             groups=data.groups)

    def forward(self, emb: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> tuple:
        total = emb.new_zeros(())
        m_loss = ce_loss = emb.new_zeros(())
        if self.w_metric > 0:
            tuples = self._miner_fn(emb, y) if self._miner_fn is not None else None
            m_loss = self._loss_fn(emb, y, tuples)
            total = total + self.w_metric * m_loss
        if self.w_ce > 0:
            ce_loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
            total = total + self.w_ce * ce_loss
        if not self.w_ce > 0:
            total = total + 0.0 * logits.sum()  # every parameter takes part (DDP)
        correct = (logits.detach().argmax(1) == y).sum()
        return total, {"metric": m_loss, "ce": ce_loss}, correct, int(y.shape[0])

    def reduce_gradients(self, world: int) -> None:
        for p in self.loss.parameters():  # identical global-batch gradients, scaled by world in the wrapper
            if p.requires_grad and p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world * world
