"""Omniglot on the real minimal zips, extracted folders, and one-shot runs built from real drawings."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from episodes.errors import DatasetError
from episodes.readers.omniglot import find_sets, read_omniglot
from episodes.readers.omniglot_runs import read_runs
from episodes.sampling import EpisodeSpec, sample_episodes
from episodes.specs import load_data, load_runs

SMALL1 = "images_background_small1.zip"
SMALL2 = "images_background_small2.zip"


def test_small1_from_zip(omniglot_dir):
    data = read_omniglot(omniglot_dir / SMALL1)
    assert (len(data), data.num_classes) == (2720, 136)
    assert data.group_names == ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
    assert data.image_size == (105, 105) and data.channels == 1
    assert data.class_names[0] == "Balinese/character01"
    assert data.ids[0] == "images_background_small1/Balinese/character01/0108_01.png"
    # ink is high: strokes are a minority of bright pixels on a dark background
    assert 0.02 < (data.images > 127).float().mean() < 0.2
    again = read_omniglot(omniglot_dir / SMALL1)  # from the cache
    assert again.fingerprint == data.fingerprint and torch.equal(again.images, data.images)


def test_combining_sets_drops_identical_characters(omniglot_dir):
    both = read_omniglot([omniglot_dir / SMALL1, omniglot_dir / SMALL2], image_size=28)
    assert both.num_classes == 136 + 156 - 50 == 242
    assert len(both) == 242 * 20 and both.class_counts().min() == 20
    assert both.image_size == (28, 28)
    assert len(both.group_names) == 8
    root = read_omniglot(omniglot_dir, image_size=28)  # a root holding both zips
    assert root.fingerprint == both.fingerprint


def test_extracted_folders_and_torchvision_root(omniglot_dir, tmp_path):
    with zipfile.ZipFile(omniglot_dir / SMALL2) as z:
        z.extractall(tmp_path / "omniglot-py")
    from_zip = read_omniglot(omniglot_dir / SMALL2, image_size=28)
    data = read_omniglot(tmp_path, image_size=28)  # torchvision's root: <root>/omniglot-py/<set>/
    assert data.class_names == from_zip.class_names
    assert torch.equal(data.images, from_zip.images)
    assert data.ids == from_zip.ids
    set_folder = tmp_path / "omniglot-py" / "images_background_small2"
    assert find_sets(set_folder) == find_sets(tmp_path / "omniglot-py") == [set_folder]


def test_omniglot_bad_paths(tmp_path):
    with pytest.raises(DatasetError, match="no such Omniglot") as err:
        read_omniglot(tmp_path / "nope.zip")
    assert "nope.zip" in str(err.value)
    (tmp_path / "fake.zip").write_text("not a zip")
    with pytest.raises(DatasetError, match="not a zip"):
        read_omniglot(tmp_path / "fake.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no Omniglot set found"):
        read_omniglot(tmp_path / "empty")
    bad = tmp_path / "set" / "Alpha" / "character01"
    bad.mkdir(parents=True)
    (bad / "0001_01.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match="0001_01.png") as err:
        read_omniglot(tmp_path / "set")
    assert "corrupt" in str(err.value) or "not an image" in str(err.value)


def test_tagalog_cannot_serve_20_way_within_group(omniglot_dir):
    tagalog = load_data(f"omniglot:{omniglot_dir / SMALL2}?groups=Tagalog", image_size=28)
    assert tagalog.num_classes == 17
    with pytest.raises(DatasetError, match="the largest, Tagalog, has 17") as err:
        sample_episodes(tagalog, EpisodeSpec(20, 1, 5), 10, within_group=True)
    assert str(omniglot_dir / SMALL2) in str(err.value)
    eps = sample_episodes(tagalog, EpisodeSpec(5, 1, 5), 10, within_group=True)
    assert eps.classes.shape == (10, 5)


def _make_runs(zip_path, root, runs=2, way=20):
    """The official all_runs layout, from real drawings of the small1 zip."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(zip_path) as z:
        pngs = sorted(n for n in z.namelist() if n.endswith(".png"))
        by_char: dict[str, list[str]] = {}
        for n in pngs:
            by_char.setdefault(n.rsplit("/", 1)[0], []).append(n)
        chars = sorted(by_char)
        truth = []
        for r in range(1, runs + 1):
            run = root / f"run{r:02d}"
            (run / "training").mkdir(parents=True)
            (run / "test").mkdir()
            picked = rng.choice(len(chars), way, replace=False)
            perm = rng.permutation(way)
            lines = []
            for k, c in enumerate(picked, 1):
                (run / "training" / f"class{k:02d}.png").write_bytes(z.read(by_char[chars[c]][0]))
            for i, k in enumerate(perm, 1):
                (run / "test" / f"item{i:02d}.png").write_bytes(z.read(by_char[chars[picked[k]]][1]))
                lines.append(f"run{r:02d}/test/item{i:02d}.png run{r:02d}/training/class{k + 1:02d}.png")
            (run / "class_labels.txt").write_text("\n".join(lines) + "\n")
            truth.append(perm)
    return truth


def test_runs_as_fixed_episodes(omniglot_dir, tmp_path):
    truth = _make_runs(omniglot_dir / SMALL1, tmp_path / "all_runs")
    data, eps = load_runs(tmp_path / "all_runs")
    assert len(data) == 2 * 40 and data.num_classes == 40
    assert eps.spec == EpisodeSpec(20, 1, 1)
    assert eps.support.shape == (2, 20, 1) and eps.query.shape == (2, 20, 1)
    assert data.group_names == ["run01", "run02"]
    # the query of class k is the test item whose line names training/class k
    for r, perm in enumerate(truth):
        for i, k in enumerate(perm, 1):
            q = int(eps.query[r, k, 0])
            assert data.ids[q] == f"run{r + 1:02d}/test/item{i:02d}.png"
            assert data.labels[q] == data.labels[int(eps.support[r, k, 0])] == eps.classes[r, k]
    # support and query drawings are different drawings of the same real character
    s, sy, q, qy = eps.gather(data.images.float().flatten(1))
    assert not torch.equal(s, q)
    one_run, _ = read_runs(tmp_path / "all_runs" / "run02", image_size=28)
    assert len(one_run) == 40 and one_run.image_size == (28, 28)
    assert len(load_data(f"omniglot-runs:{tmp_path / 'all_runs'}")) == 80


def test_runs_bad_input(omniglot_dir, tmp_path):
    _make_runs(omniglot_dir / SMALL1, tmp_path / "all_runs", runs=1)
    labels = tmp_path / "all_runs" / "run01" / "class_labels.txt"
    good = labels.read_text()
    labels.write_text(good.replace("item03.png", "item99.png"))
    with pytest.raises(DatasetError, match="item99.png.*does not exist") as err:
        read_runs(tmp_path / "all_runs")
    assert str(labels) in str(err.value)
    labels.write_text("just-one-field\n")
    with pytest.raises(DatasetError, match="line 1 should read"):
        read_runs(tmp_path / "all_runs")
    with pytest.raises(DatasetError, match="no runNN folders"):
        read_runs(tmp_path)
    with pytest.raises(DatasetError, match="no such folder"):
        read_runs(tmp_path / "absent")
