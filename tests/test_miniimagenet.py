"""miniImageNet: the four on-disk layouts, generated in their exact formats."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from episodes.errors import DatasetError
from episodes.readers.miniimagenet import (
    compare_to_standard,
    detect_layout,
    read_miniimagenet,
    standard_report,
)
from episodes.specs import load_data

SPLIT_FILES = {"train": "base", "val": "val", "test": "novel"}
WNIDS = {"train": ["n01532829", "n01558993", "n01704323"], "val": ["n01855672", "n02091244"],
         "test": ["n01930112", "n01981276"]}
PER_CLASS = 4


def _pixels(split: str) -> np.ndarray:
    """Deterministic distinct images [N, 84, 84, 3] for one split, class-major."""
    n = len(WNIDS[split]) * PER_CLASS
    rng = np.random.default_rng(len(split))
    return rng.integers(0, 256, (n, 84, 84, 3), dtype=np.uint8)


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote with protocol 2: every str/bytes as a py2 ``str``
    (BINSTRING opcodes, raw bytes), ``numpy.core`` module names and ``__builtin__``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None) or pickle.whichmodule(obj, name)
        module = module.replace("numpy._core", "numpy.core").replace("builtins", "__builtin__")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[type] = save_global


def _py2_dump(obj, path):
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def make_csv(root):
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, wnids in WNIDS.items():
        rows = ["filename,label"]
        pix = _pixels(split)
        for c, w in enumerate(wnids):
            for i in range(PER_CLASS):
                name = f"{w}{i:08d}.jpg"
                Image.fromarray(pix[c * PER_CLASS + i]).resize((100, 90)).save(root / "images" / name)
                rows.append(f"{name},{w}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")


def make_l2l(root):
    root.mkdir(parents=True, exist_ok=True)
    for split, fname in (("train", "train"), ("val", "validation"), ("test", "test")):
        class_dict = {w: list(range(c * PER_CLASS, (c + 1) * PER_CLASS)) for c, w in enumerate(WNIDS[split])}
        with open(root / f"mini-imagenet-cache-{fname}.pkl", "wb") as f:
            pickle.dump({"image_data": _pixels(split), "class_dict": class_dict}, f, protocol=4)


def make_metaoptnet(root):
    root.mkdir(parents=True, exist_ok=True)
    offset = {"train": 0, "val": 64, "test": 80}
    for split, fname in (("train", "train_phase_train"), ("val", "val"), ("test", "test")):
        wnids = WNIDS[split]
        labels = [offset[split] + c for c in range(len(wnids)) for _ in range(PER_CLASS)]
        doc = {b"data": _pixels(split), b"labels": labels,
               b"catname2label": {w.encode(): offset[split] + c for c, w in enumerate(wnids)}}
        _py2_dump(doc, root / f"miniImageNet_category_split_{fname}.pickle")


def make_folders(root):
    for split, wnids in WNIDS.items():
        pix = _pixels(split)
        for c, w in enumerate(wnids):
            (root / split / w).mkdir(parents=True)
            for i in range(PER_CLASS):
                Image.fromarray(pix[c * PER_CLASS + i]).save(root / split / w / f"{w}_{i}.png")


MAKERS = {"csv": make_csv, "learn2learn": make_l2l, "metaoptnet": make_metaoptnet, "folders": make_folders}


@pytest.mark.parametrize("layout", list(MAKERS))
def test_layouts_read_the_same_split(tmp_path, layout):
    root = tmp_path / layout
    MAKERS[layout](root)
    assert detect_layout(root) == layout
    for split, canon in SPLIT_FILES.items():
        with pytest.warns(UserWarning, match="not the standard miniImageNet"):
            data = read_miniimagenet(root, canon)
        assert data.class_names == sorted(WNIDS[split])
        assert data.images.shape == (len(WNIDS[split]) * PER_CLASS, 3, 84, 84)
        assert data.class_counts().tolist() == [PER_CLASS] * len(WNIDS[split])
        if layout != "csv":  # lossless layouts keep the exact pixels
            want = torch.from_numpy(_pixels(split)).permute(0, 3, 1, 2)
            order = np.argsort([WNIDS[split].index(data.class_names[lab]) for lab in data.labels.tolist()],
                               kind="stable")
            assert torch.equal(data.images[torch.from_numpy(order)], want)
    with pytest.warns(UserWarning):
        everything = load_data(f"miniimagenet:{root}", image_size=32)
    assert everything.num_classes == 7 and everything.image_size == (32, 32)
    assert everything.group_names == ["base", "val", "novel"]  # the whole root: groups are the splits
    with pytest.warns(UserWarning):
        assert load_data(f"miniimagenet:{root}", "test").num_classes == 2


def test_metaoptnet_fixture_is_python2_style(tmp_path):
    make_metaoptnet(tmp_path)
    raw = (tmp_path / "miniImageNet_category_split_val.pickle").read_bytes()
    assert raw[:2] == b"\x80\x02" and b"numpy.core.multiarray\n_reconstruct" in raw
    assert b"X" not in raw[:40]  # no BINUNICODE: Python 2 str only
    with pytest.raises(UnicodeDecodeError):  # Python 3's default ASCII decoding cannot read it
        pickle.loads(raw)


def test_report_and_standard_comparison(tmp_path):
    make_l2l(tmp_path)
    with pytest.warns(UserWarning, match="differs from the standard"):
        text = standard_report(tmp_path)
    assert "learn2learn layout" in text and "3 classes instead of 64" in text
    assert compare_to_standard("novel", np.full(20, 600)) == []


def test_bad_roots(tmp_path):
    with pytest.raises(DatasetError, match="no such miniImageNet folder"):
        read_miniimagenet(tmp_path / "absent")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="unknown miniImageNet layout") as err:
        read_miniimagenet(tmp_path / "odd")
    assert str(tmp_path / "odd") in str(err.value)


def test_csv_row_naming_missing_file(tmp_path):
    make_csv(tmp_path)
    csv = tmp_path / "val.csv"
    csv.write_text(csv.read_text() + "n0185567200009999.jpg,n01855672\n")
    with pytest.raises(DatasetError, match=r"line 10 names images/n0185567200009999.jpg, which does not exist"
                       ) as err:
        read_miniimagenet(tmp_path, "val")
    assert str(csv) in str(err.value)
    (tmp_path / "test.csv").write_text("file,wnid\n")
    with pytest.raises(DatasetError, match="header"):
        read_miniimagenet(tmp_path, "test")


def test_missing_split_file_and_bad_pickles(tmp_path):
    make_l2l(tmp_path)
    (tmp_path / "mini-imagenet-cache-test.pkl").unlink()
    with pytest.raises(DatasetError, match="missing the novel split"):
        read_miniimagenet(tmp_path, "novel")
    path = tmp_path / "mini-imagenet-cache-validation.pkl"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DatasetError, match="truncated") as err:
        read_miniimagenet(tmp_path, "val")
    assert str(path) in str(err.value)
    with open(path, "wb") as f:
        pickle.dump({"image_data": np.zeros((2, 84, 84), np.uint8), "class_dict": {"a": [0]}}, f)
    with pytest.raises(DatasetError, match=r"uint8 \[N, H, W, 3\]"):
        read_miniimagenet(tmp_path, "val")
    with open(path, "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(DatasetError, match="expected a dict"):
        read_miniimagenet(tmp_path, "val")
    with pytest.raises(DatasetError, match="unknown split"):
        read_miniimagenet(tmp_path, "holdout")
