"""PyTorch interop for episodic training: a batch sampler and an episode dataset.

Two ways to feed a ``DataLoader`` with N-way K-shot episodes, both drawing every episode of an
epoch at once with :func:`episodes.sample_episodes` (seeded; ``set_epoch`` changes the draw
reproducibly, as ``DistributedSampler`` does):

* :class:`EpisodeDataset`, map-style, one item per episode: ``(support_x [way*shot, C, H, W],
  support_y [way*shot], query_x [way*query, C, H, W], query_y [way*query])`` straight from the
  in-memory uint8 tensor. ``DataLoader(EpisodeDataset(...), batch_size=None)`` yields episodes;
  ``batch_size=B`` stacks B episodes.
* :class:`EpisodicBatchSampler` (like easyfsl's ``TaskSampler``), yielding the image indices of
  one episode per batch for any per-image dataset (e.g. :class:`ImageSetDataset` with a
  transform), with :func:`collate_episode` turning the batch into the same 4-tuple.

Labels are episode-local (0..way-1), support first, class-major.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .errors import DatasetError
from .imageset import ImageSet
from .sampling import Episodes, EpisodeSpec, sample_episodes


def epoch_seed(seed: int, epoch: int) -> int:
    """The sampling seed of ``epoch``: ``seed`` itself for epoch 0, else derived from both."""
    return seed if epoch == 0 else int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _spec(spec: EpisodeSpec | tuple[int, int, int]) -> EpisodeSpec:
    return spec if isinstance(spec, EpisodeSpec) else EpisodeSpec(*spec)


class EpisodeDataset(Dataset):
    """``num_episodes`` seeded episodes over an ``ImageSet``, one ``(sx, sy, qx, qy)`` per item.

    ``dtype`` ``torch.uint8`` (default) keeps the stored pixels; ``torch.float32`` scales to [0, 1].
    ``transform`` (optional) maps a batch ``[n, C, H, W]`` to anything (e.g. a ``Preprocess``).
    """

    def __init__(self, data: ImageSet, spec: EpisodeSpec | tuple[int, int, int], num_episodes: int,
                 seed: int = 0, *, within_group: bool = False, drop_small: bool = False,
                 dtype: torch.dtype = torch.uint8,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if not isinstance(data, ImageSet):
            raise DatasetError(f"EpisodeDataset needs an ImageSet, got {type(data).__name__}")
        if dtype not in (torch.uint8, torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise DatasetError(f"dtype must be torch.uint8 or a float type, got {dtype}")
        self.data, self.spec, self.num_episodes, self.seed = data, _spec(spec), int(num_episodes), seed
        self.within_group, self.drop_small = within_group, drop_small
        self.dtype, self.transform = dtype, transform
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Redraw the episodes for ``epoch`` (seed ``(seed, epoch)``; epoch 0 uses ``seed`` itself)."""
        self.episodes: Episodes = sample_episodes(self.data, self.spec, self.num_episodes,
                                                  seed=epoch_seed(self.seed, epoch),
                                                  within_group=self.within_group, drop_small=self.drop_small)
        self._sy, self._qy = self.episodes.labels()

    def __len__(self) -> int:
        return self.num_episodes

    def _images(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.data.images[idx.reshape(-1)]
        if self.dtype != torch.uint8:
            x = x.to(self.dtype) / 255
        return self.transform(x) if self.transform is not None else x

    def __getitem__(self, e: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if not -len(self) <= e < len(self):
            raise IndexError(e)
        return (self._images(self.episodes.support[e]), self._sy[e],
                self._images(self.episodes.query[e]), self._qy[e])


class EpisodicBatchSampler(Sampler[list[int]]):
    """Yields, per episode, the ``way*shot`` support then ``way*query`` query image indices.

    Pass it as ``batch_sampler=`` to a ``DataLoader`` over a per-image dataset, with
    ``collate_fn=collate_episode(spec)``. ``labels`` may be an ``ImageSet`` (groups are used for
    ``within_group``) or a label vector. Each ``__iter__`` draws one epoch; call ``set_epoch``
    between epochs for new, reproducible episodes.
    """

    def __init__(self, labels: ImageSet | torch.Tensor | np.ndarray | Sequence[int],
                 spec: EpisodeSpec | tuple[int, int, int], num_episodes: int, seed: int = 0, *,
                 within_group: bool = False, drop_small: bool = False):
        self.source = labels if isinstance(labels, (ImageSet, torch.Tensor)) else np.asarray(labels)
        self.spec, self.num_episodes, self.seed = _spec(spec), int(num_episodes), seed
        self.within_group, self.drop_small = within_group, drop_small
        self.epoch = 0
        sample_episodes(self.source, self.spec, 1, seed=seed, within_group=within_group,
                        drop_small=drop_small)  # fail now, not inside the DataLoader

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_episodes

    def __iter__(self) -> Iterator[list[int]]:
        eps = sample_episodes(self.source, self.spec, self.num_episodes,
                              seed=epoch_seed(self.seed, self.epoch), within_group=self.within_group,
                              drop_small=self.drop_small)
        flat = torch.cat([eps.support.reshape(len(eps), -1), eps.query.reshape(len(eps), -1)], 1)
        yield from flat.tolist()


class ImageSetDataset(Dataset):
    """Per-image view of an ``ImageSet``: ``(image [C, H, W], label)``, with an optional transform."""

    def __init__(self, data: ImageSet, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.data.images[i]
        return (self.transform(x) if self.transform else x), int(self.data.labels[i])


def collate_episode(spec: EpisodeSpec | tuple[int, int, int]
                    ) -> Callable[[list[tuple[torch.Tensor, int]]], tuple[torch.Tensor, ...]]:
    """A ``collate_fn`` turning one :class:`EpisodicBatchSampler` batch into ``(sx, sy, qx, qy)``."""
    spec = _spec(spec)
    n_support = spec.way * spec.shot

    def collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, ...]:
        if len(batch) != spec.way * spec.per_class:
            raise DatasetError(f"an episode batch of {len(batch)} items does not match {spec}")
        x = torch.stack([b[0] for b in batch])
        ways = torch.arange(spec.way)
        return (x[:n_support], ways.repeat_interleave(spec.shot), x[n_support:],
                ways.repeat_interleave(spec.query))

    return collate
