"""Episode sampling properties and manifests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from episodes.errors import DatasetError
from episodes.imageset import ImageSet
from episodes.manifest import load_manifest, save_manifest
from episodes.sampling import EpisodeSpec, sample_episodes


def make_set(counts, groups=None, name="toy"):
    labels = torch.tensor(np.repeat(np.arange(len(counts)), counts))
    n = len(labels)
    images = torch.arange(n, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 1, 1, 1)
    return ImageSet(images, labels, [f"c{i}" for i in range(len(counts))], [f"img{i}" for i in range(n)],
                    groups, name)


@settings(max_examples=40, deadline=None)
@given(n_classes=st.integers(2, 12), per_class=st.integers(2, 30), way=st.integers(1, 12),
       shot=st.integers(1, 5), query=st.integers(1, 10), count=st.integers(1, 30),
       seed=st.integers(0, 2**31), within=st.booleans())
def test_episode_invariants(n_classes, per_class, way, shot, query, count, seed, within):
    groups = [f"g{i % 3}" for i in range(n_classes)]
    data = make_set([per_class] * n_classes, groups)
    spec = EpisodeSpec(way, shot, query)
    possible = per_class >= shot + query and (
        max(groups.count(g) for g in set(groups)) >= way if within else n_classes >= way)
    if not possible:
        with pytest.raises(DatasetError):
            sample_episodes(data, spec, count, seed=seed, within_group=within)
        return
    eps = sample_episodes(data, spec, count, seed=seed, within_group=within)
    assert eps.support.shape == (count, way, shot) and eps.query.shape == (count, way, query)
    labels = data.labels
    for e in range(count):
        cls = eps.classes[e]
        assert len(set(cls.tolist())) == way                                       # distinct classes
        assert (labels[eps.support[e]] == cls[:, None]).all()                      # right classes
        assert (labels[eps.query[e]] == cls[:, None]).all()
        s, q = set(eps.support[e].flatten().tolist()), set(eps.query[e].flatten().tolist())
        assert not s & q and len(s) == way * shot and len(q) == way * query        # disjoint, distinct
        if within:
            assert len({groups[c] for c in cls.tolist()}) == 1
    again = sample_episodes(data, spec, count, seed=seed, within_group=within)
    assert torch.equal(again.support, eps.support) and torch.equal(again.query, eps.query)


def test_episodes_indexing():
    eps = sample_episodes(make_set([10] * 6), EpisodeSpec(3, 1, 2), 5, seed=0)
    assert torch.equal(eps[-1].support, eps.support[4:5]) and len(eps[1:3]) == 2
    with pytest.raises(IndexError):
        eps[5]


def test_sampling_is_uniform_enough():
    data = make_set([20] * 10)
    eps = sample_episodes(data, EpisodeSpec(5, 1, 1), 4000, seed=1)
    freq = np.bincount(eps.classes.flatten().numpy(), minlength=10) / (4000 * 5)
    assert np.allclose(freq, 0.1, atol=0.01)
    pos = np.bincount((eps.support.flatten() % 20).numpy(), minlength=20) / 20000
    assert np.allclose(pos, 0.05, atol=0.01)


def test_small_classes_named_or_dropped():
    data = make_set([20, 20, 3, 20, 20, 20])
    with pytest.raises(DatasetError, match=r"c2 \(3\).*drop_small") as err:
        sample_episodes(data, EpisodeSpec(5, 1, 5), 10)
    assert "toy" in str(err.value)
    eps = sample_episodes(data, EpisodeSpec(5, 1, 5), 10, drop_small=True)
    assert 2 not in eps.classes.flatten().tolist()
    with pytest.raises(DatasetError, match="6-way episodes need 6 classes"):
        sample_episodes(data, EpisodeSpec(6, 1, 5), 10, drop_small=True)
    with pytest.raises(DatasetError, match="positive"):
        EpisodeSpec(0, 1)


def test_manifest_round_trip_and_refusal(tmp_path):
    data = make_set([10] * 8, [f"g{i % 2}" for i in range(8)])
    eps = sample_episodes(data, EpisodeSpec(3, 2, 4), 25, seed=7, within_group=True)
    path = save_manifest(tmp_path / "m" / "eps.json", eps, data)
    back = load_manifest(path, data)
    for a in ("support", "query", "classes"):
        assert torch.equal(getattr(back, a), getattr(eps, a))
    assert back.spec == eps.spec and back.seed == 7 and back.within_group
    other = make_set([10] * 8, [f"g{i % 2}" for i in range(8)], name="other")
    other = other.subset(np.arange(1, len(other)))  # one image fewer: another data set
    with pytest.raises(DatasetError, match="fingerprint") as err:
        load_manifest(path, other)
    assert str(path) in str(err.value)
    (tmp_path / "bad.json").write_text("{broken")
    with pytest.raises(DatasetError, match="not a readable JSON manifest"):
        load_manifest(tmp_path / "bad.json", data)
    (tmp_path / "foreign.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DatasetError, match="not a fewshot episode manifest"):
        load_manifest(tmp_path / "foreign.json", data)
    with pytest.raises(DatasetError, match="no such manifest"):
        load_manifest(tmp_path / "absent.json", data)
    doc = json.loads(path.read_text())
    del doc["dataset"]
    (tmp_path / "partial.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="partial.json"):
        load_manifest(tmp_path / "partial.json", data)
