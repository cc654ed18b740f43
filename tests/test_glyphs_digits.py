"""The procedural glyph set and scikit-learn's digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from episodes.errors import DatasetError
from episodes.readers.digits import load_digits_set
from episodes.readers.glyphs import SPLITS, load_glyphs, make_glyphs
from episodes.sampling import EpisodeSpec, sample_episodes


def nn_accuracy(data, way=5, shot=1, episodes=400, within_group=False, seed=0):
    """Raw-pixel 1-NN (cosine) accuracy on ``data``'s classes."""
    eps = sample_episodes(data, EpisodeSpec(way, shot, 15), episodes, seed=seed, within_group=within_group)
    x = data.images.float().flatten(1)
    x = x / x.norm(dim=1, keepdim=True)
    s, sy, q, qy = eps.gather(x)
    pred = torch.gather(sy, 1, torch.cdist(q, s).argmin(-1))
    return (pred == qy).float().mean().item()


@pytest.fixture(scope="module")
def novel():
    return load_glyphs("novel")


def test_shape_groups_and_determinism(novel):
    assert novel.images.shape == (120 * 20, 1, 28, 28) and novel.images.dtype == torch.uint8
    assert novel.group_names == [f"alphabet{a:02d}" for a in SPLITS["novel"]]
    assert novel.class_counts().tolist() == [20] * 120
    again = make_glyphs(600, 20, alphabets=[SPLITS["novel"][1]])  # an alphabet alone = its part of a split
    assert torch.equal(again.images, novel.images[400:800]) and again.class_names == novel.class_names[20:40]
    other, third = make_glyphs(40, 5, seed=1), make_glyphs(40, 5, seed=2)
    assert not torch.equal(other.images, third.images) and other.fingerprint != third.fingerprint
    # drawings look like ink strokes: a dark background, bright anti-aliased strokes
    ink = novel.images.float() / 255
    assert 0.05 < (ink > 0.5).float().mean() < 0.35
    assert ((ink > 0.1) & (ink < 0.9)).float().mean() > 0.02


def test_splits_are_disjoint():
    names = {s: set(load_glyphs(s, per_class=2).class_names) for s in ("base", "val")}
    assert len(names["base"]) == 400 and len(names["val"]) == 80 and not names["base"] & names["val"]
    assert load_glyphs(None, per_class=2, size=16).images.shape == (1200, 1, 16, 16)
    with pytest.raises(DatasetError, match="unknown split"):
        load_glyphs("test")


def test_raw_pixel_nearest_neighbour_is_far_from_perfect(novel):
    """The set is a real test of generalisation: pixels alone do not solve novel classes."""
    acc = nn_accuracy(novel)
    within = nn_accuracy(novel, within_group=True)
    print(f"raw-pixel 1-NN on novel glyphs, 5-way 1-shot: {acc:.3f} (within alphabet {within:.3f})")
    assert 0.35 < acc < 0.75
    assert within < acc  # an alphabet's shared style makes within-alphabet episodes harder
    assert nn_accuracy(novel, shot=5, episodes=100) > acc  # but there is signal to learn


def test_bad_arguments():
    with pytest.raises(DatasetError, match="num_classes"):
        make_glyphs(0)
    with pytest.raises(DatasetError, match="size"):
        make_glyphs(10, size=4)
    with pytest.raises(DatasetError, match="alphabets"):
        make_glyphs(40, alphabets=[5])


def test_digits():
    d = load_digits_set()
    assert d.images.shape == (1797, 1, 8, 8) and d.num_classes == 10 and d.group_names == ["digits"]
    assert int(d.images.max()) == 255 and int(d.images.min()) == 0
    from sklearn.datasets import load_digits

    raw = load_digits()
    assert np.array_equal(d.labels.numpy(), raw.target)
    assert np.allclose(d.images[:, 0].numpy() / 255 * 16, raw.images, atol=0.04)
    assert load_digits_set(28).image_size == (28, 28)
