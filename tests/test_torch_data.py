"""DataLoader interop: episode dataset and episodic batch sampler."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from episodes.errors import DatasetError
from episodes.readers.glyphs import make_glyphs
from episodes.sampling import EpisodeSpec
from episodes.torch_data import EpisodeDataset, EpisodicBatchSampler, ImageSetDataset, collate_episode


@pytest.fixture(scope="module")
def data():
    return make_glyphs(40, 12, size=16)


def test_episode_dataset_with_dataloader(data):
    ds = EpisodeDataset(data, (5, 2, 3), 8, seed=4)
    batches = list(DataLoader(ds, batch_size=None))
    assert len(batches) == 8
    sx, sy, qx, qy = batches[0]
    assert sx.shape == (10, 1, 16, 16) and sx.dtype == torch.uint8 and qx.shape == (15, 1, 16, 16)
    assert sy.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert qy.tolist() == [c for c in range(5) for _ in range(3)]
    # the images really belong to the episode's classes
    eps = ds.episodes
    assert torch.equal(sx, data.images[eps.support[0].flatten()])
    assert (data.labels[eps.query[0].flatten()] == eps.classes[0].repeat_interleave(3)).all()
    stacked = next(iter(DataLoader(EpisodeDataset(data, EpisodeSpec(5, 1, 2), 6, dtype=torch.float32),
                                   batch_size=3)))
    assert stacked[0].shape == (3, 5, 1, 16, 16) and stacked[0].dtype == torch.float32
    assert float(stacked[0].max()) <= 1.0
    # seeded: same seed same episodes; set_epoch changes them reproducibly
    again = EpisodeDataset(data, (5, 2, 3), 8, seed=4)
    assert torch.equal(again[3][0], ds[3][0])
    again.set_epoch(1)
    ds.set_epoch(1)
    assert torch.equal(again[3][0], ds[3][0])
    fresh = EpisodeDataset(data, (5, 2, 3), 8, seed=4)
    assert not torch.equal(again.episodes.support, fresh.episodes.support)


def test_batch_sampler_with_per_image_dataset(data):
    spec = EpisodeSpec(4, 1, 2)
    sampler = EpisodicBatchSampler(data, spec, 5, seed=2, within_group=True)
    loader = DataLoader(ImageSetDataset(data, transform=lambda x: x.float() / 255), batch_sampler=sampler,
                        collate_fn=collate_episode(spec))
    out = list(loader)
    assert len(out) == len(sampler) == 5
    sx, sy, qx, qy = out[0]
    assert sx.shape == (4, 1, 16, 16) and qx.shape == (8, 1, 16, 16) and sy.tolist() == [0, 1, 2, 3]
    first = next(iter(sampler))
    assert len(first) == 12 and first == next(iter(sampler))
    groups = {data.groups[int(data.labels[i])] for i in first}
    assert len(groups) == 1
    sampler.set_epoch(3)
    assert next(iter(sampler)) != first


def test_impossible_requests_fail_early(data):
    with pytest.raises(DatasetError, match="fewer than shot\\+query"):
        EpisodicBatchSampler(data, (5, 5, 10), 3)
    with pytest.raises(DatasetError, match="41-way"):
        EpisodeDataset(data, (41, 1, 1), 3)
