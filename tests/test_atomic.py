"""Atomic writes: a failed write leaves the old file whole and no temporary file behind."""

from __future__ import annotations

import os

import pytest

from episodes.atomic import atomic_open, atomic_write_bytes, atomic_write_text


def test_write_then_replace(tmp_path):
    target = tmp_path / "sub" / "results.json"
    atomic_write_text(target, '{"old": true}')
    atomic_write_bytes(target, b'{"new": true}')
    assert target.read_text() == '{"new": true}'
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    atomic_write_text(target, '{"old": true}')

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(target, '{"new": true}')
    assert target.read_text() == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_exception_while_writing_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "wb") as fh:
            fh.write(b"half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]
