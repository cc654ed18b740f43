"""The restricted unpickler refuses hostile pickles without running them."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from episodes.errors import DatasetError
from episodes.safe_pickle import load_pickle


class _Hostile:
    """Unpickling this would create a file (if the unpickler called os.system)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _Opener:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_hostile_pickle_refused_and_never_run(tmp_path, protocol):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"image_data": np.zeros(3, np.uint8), "x": _Hostile(target)}, protocol))
    # the unrestricted loader really would create the file: the test pickle is live
    if protocol == 2:
        pickle.loads(path.read_bytes())
        assert target.exists()
        target.unlink()
    with pytest.raises(DatasetError, match=r"refused to unpickle global (posix|os|nt)\.system") as err:
        load_pickle(path)
    assert str(path) in str(err.value)
    assert not target.exists()


def test_builtin_open_refused(tmp_path):
    target = tmp_path / "created"
    path = tmp_path / "open.pkl"
    path.write_bytes(pickle.dumps([_Opener(str(target))], protocol=2))
    with pytest.raises(DatasetError, match=r"(builtins|io)\.open"):
        load_pickle(path)
    assert not target.exists()


def test_plain_containers_and_arrays_load(tmp_path):
    obj = {"a": np.arange(12, dtype=np.uint8).reshape(3, 4), "l": [1, 2.5, "s", b"b", None, True],
           "t": (np.int64(7), np.float32(1.5)), "s": {1, 2}, "o": OrderedDict(k=np.dtype("<f4"))}
    for protocol in (2, 4, 5):
        path = tmp_path / f"ok{protocol}.pkl"
        path.write_bytes(pickle.dumps(obj, protocol))
        back = load_pickle(path)
        assert np.array_equal(back["a"], obj["a"]) and back["l"] == obj["l"] and back["s"] == {1, 2}
        assert back["t"][0] == 7 and back["o"]["k"] == np.dtype("<f4")


def test_truncated_corrupt_and_missing(tmp_path):
    good = pickle.dumps({"a": np.arange(1000)}, 4)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(good[: len(good) // 2])
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"\x00\x01garbage that is no pickle")
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    for path, cause in [(cut, "truncated"), (junk, "corrupt"), (empty, "truncated"),
                        (tmp_path / "none.pkl", "no such pickle")]:
        with pytest.raises(DatasetError, match=cause) as err:
            load_pickle(path)
        assert str(path) in str(err.value)
