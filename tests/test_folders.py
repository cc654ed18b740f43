"""User image folders: layouts, mixed modes and sizes, unreadable files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from episodes.errors import DatasetError
from episodes.readers.folders import read_image_folder
from episodes.specs import load_data


def _img(path, size=(16, 16), mode="RGB", value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value, np.uint8)
    arr[: size[1] // 2] = 255 - value
    Image.fromarray(arr).convert(mode).save(path)


def test_flat_layout_mixed_modes_and_sizes(tmp_path):
    _img(tmp_path / "cat" / "a.png")
    _img(tmp_path / "cat" / "b.jpg", mode="L")
    _img(tmp_path / "cat" / "c.webp", size=(20, 12))
    _img(tmp_path / "dog" / "d.bmp", mode="P")
    _img(tmp_path / "dog" / "e.JPEG")
    (tmp_path / "dog" / "notes.txt").write_text("ignored: not an image extension")
    data = read_image_folder(tmp_path)
    assert data.class_names == ["cat", "dog"] and data.groups is None
    assert data.images.shape == (5, 3, 16, 16)  # RGB (some are colour) at the most common size
    assert data.ids == ["cat/a.png", "cat/b.jpg", "cat/c.webp", "dog/d.bmp", "dog/e.JPEG"]
    grey = read_image_folder(tmp_path, channels=1, image_size=(8, 10), cache=False)
    assert grey.images.shape == (5, 1, 8, 10)


def test_grouped_layout_and_group_selection(tmp_path):
    for g in ("latin", "greek"):
        for c in ("c1", "c2", "c3"):
            for i in range(3):
                _img(tmp_path / g / c / f"{i}.png", mode="L", value=40 * i)
    data = read_image_folder(tmp_path)
    assert data.channels == 1 and data.num_classes == 6
    assert data.class_names[0] == "greek/c1" and data.group_names == ["greek", "latin"]
    sel = load_data(f"folder:{tmp_path}?groups=latin")
    assert sel.class_names == ["latin/c1", "latin/c2", "latin/c3"]
    assert load_data(f"folder:{tmp_path}?exclude_groups=latin").group_names == ["greek"]


def test_unreadable_files_warn_or_fail(tmp_path):
    _img(tmp_path / "a" / "ok.png")
    _img(tmp_path / "a" / "ok2.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "a" / "text.jpg").write_text("hello")
    with pytest.warns(UserWarning, match="skipped unreadable image") as rec:
        data = read_image_folder(tmp_path)
    messages = " ".join(str(w.message) for w in rec)
    assert len(data) == 2 and "broken.png" in messages and "text.jpg" in messages
    with pytest.raises(DatasetError, match="broken.png"):
        read_image_folder(tmp_path, strict=True)
    with pytest.raises(DatasetError, match="broken.png"):
        load_data(f"folder:{tmp_path}?strict=1")


def test_bad_roots(tmp_path):
    with pytest.raises(DatasetError, match="no such folder") as err:
        read_image_folder(tmp_path / "absent")
    assert "absent" in str(err.value)
    (tmp_path / "file.png").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        read_image_folder(tmp_path / "file.png")
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        read_image_folder(tmp_path / "empty_root")
    (tmp_path / "r" / "empty_class").mkdir(parents=True)
    _img(tmp_path / "r" / "full" / "x.png")
    with pytest.raises(DatasetError, match="empty class folder") as err:
        read_image_folder(tmp_path / "r")
    assert str(tmp_path / "r" / "empty_class") in str(err.value)
    (tmp_path / "s" / "bad").mkdir(parents=True)
    (tmp_path / "s" / "bad" / "x.png").write_text("no image")
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match="no readable images"):
        read_image_folder(tmp_path / "s")


def test_folder_split_subfolders(tmp_path):
    _img(tmp_path / "train" / "a" / "1.png")
    _img(tmp_path / "test" / "b" / "1.png")
    assert load_data(f"folder:{tmp_path}", "novel").class_names == ["b"]
    assert load_data(f"folder:{tmp_path}", "train").class_names == ["a"]
    with pytest.raises(DatasetError, match="no sub-folder for split 'val'"):
        load_data(f"folder:{tmp_path}", "val")
