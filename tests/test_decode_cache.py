"""decode_image and the on-disk image-set cache."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from episodes.cache import cached, default_cache_dir, file_signature
from episodes.decode import decode_image, stack_common
from episodes.errors import DatasetError
from episodes.imageset import ImageSet


def test_decode_modes_and_sizes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.bmp")
    rgba = np.dstack([rgb, np.zeros((10, 12), np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    a = decode_image(tmp_path / "a.png")
    assert a.dtype == torch.uint8 and a.shape == (3, 10, 12)
    assert torch.equal(a, torch.from_numpy(rgb).permute(2, 0, 1))
    assert decode_image(tmp_path / "g.png").shape == (1, 10, 12)
    assert decode_image(tmp_path / "g.png", channels=3).shape == (3, 10, 12)
    assert decode_image(tmp_path / "a.png", channels=1, size=(5, 6)).shape == (1, 5, 6)
    assert decode_image(tmp_path / "p.bmp", size=7).shape == (3, 7, 7)
    assert (decode_image(tmp_path / "t.png") == 255).all()  # fully transparent -> white background
    assert decode_image((tmp_path / "a.png").read_bytes(), name="x.png").shape == (3, 10, 12)


def test_decode_bad_files_name_the_file(tmp_path):
    (tmp_path / "text.png").write_text("not an image at all")
    img = tmp_path / "cut.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(img, quality=95)
    img.write_bytes(img.read_bytes()[:200])
    for bad, cause in [(tmp_path / "missing.png", "no such image"), (tmp_path / "text.png", "not an image"),
                       (img, "corrupt or truncated"), (tmp_path, "directory")]:
        with pytest.raises(DatasetError, match=cause) as err:
            decode_image(bad)
        assert str(bad) in str(err.value)
    with pytest.raises(DatasetError, match="zipped.png"):
        decode_image(b"junk", name="zipped.png")


def test_stack_common_normalises_to_most_common():
    a = [np.zeros((1, 8, 8), np.uint8)] * 3 + [np.zeros((3, 5, 4), np.uint8)]
    out = stack_common(a)
    assert out.shape == (4, 3, 8, 8)
    assert stack_common(a, channels=1, size=4).shape == (4, 1, 4, 4)


def _small_set(n=6):
    return ImageSet(torch.arange(n * 12, dtype=torch.uint8).reshape(n, 1, 3, 4), torch.arange(n) % 2,
                    ["a", "b"], [f"i{i}" for i in range(n)], ["g", "h"], name="small")


def test_cache_hit_miss_and_damage(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return _small_set()

    first = cached("t", ["src", 1], {"size": None}, build, cache_dir=tmp_path)
    second = cached("t", ["src", 1], {"size": None}, build, cache_dir=tmp_path)
    assert len(calls) == 1 and torch.equal(first.images, second.images)
    assert second.fingerprint == first.fingerprint and second.groups == ["g", "h"]
    cached("t", ["src", 2], {"size": None}, build, cache_dir=tmp_path)  # source changed: rebuilt
    cached("t", ["src", 1], {"size": 28}, build, cache_dir=tmp_path)   # options changed: rebuilt
    assert len(calls) == 3
    # a truncated array and a garbage JSON are rebuilt with a warning, never fatal
    npys = sorted(tmp_path.glob("t-*.npy"))
    for npy in npys:
        npy.write_bytes(npy.read_bytes()[:40])
    with pytest.warns(UserWarning, match="damaged cache entry"):
        again = cached("t", ["src", 1], {"size": None}, build, cache_dir=tmp_path)
    assert torch.equal(again.images, first.images) and len(calls) == 4
    for meta in tmp_path.glob("t-*.json"):
        meta.write_text("{not json")
    with pytest.warns(UserWarning, match="damaged cache entry"):
        cached("t", ["src", 1], {"size": None}, build, cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.tmp"))
    valid = []
    for meta in tmp_path.glob("t-*.json"):
        try:
            valid.append(json.loads(meta.read_text()))
        except json.JSONDecodeError:
            pass
    assert [m["class_names"] for m in valid] == [["a", "b"]]


def test_cache_refuses_pickled_arrays(tmp_path):
    cached("t", ["x"], {}, _small_set, cache_dir=tmp_path)
    npy = next(tmp_path.glob("t-*.npy"))
    np.save(npy, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    meta = next(tmp_path.glob("t-*.json"))
    doc = json.loads(meta.read_text())
    doc["npy_bytes"] = npy.stat().st_size
    meta.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="damaged cache entry"):
        data = cached("t", ["x"], {}, _small_set, cache_dir=tmp_path)
    assert data.images.dtype == torch.uint8


def test_default_cache_dir_and_signature(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FEWSHOT_CACHE_DIR")
    assert default_cache_dir().parts[-2:] == (".cache", "fewshot")
    f = tmp_path / "f.bin"
    f.write_bytes(b"123")
    sig = file_signature([f], tmp_path)
    assert sig[0][:2] == ["f.bin", 3]
    os.utime(f, ns=(1, 2))
    assert file_signature([f], tmp_path) != sig


def test_unwritable_cache_only_warns(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        data = cached("t", ["y"], {}, _small_set, cache_dir=blocker / "sub")
    assert len(data) == 6 and any("cannot write" in str(x.message) for x in w)
