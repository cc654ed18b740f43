"""One consistent run folder: the order of an epoch's writes, and what a resume makes of a
folder that a crash left between two of them.

An epoch ends with three atomic writes, in this order:

1. ``last.pt`` -- the commit point. It holds the whole state *and* the run's record: every
   metrics row so far (``metrics``) and which epoch is the best (``best``: epoch, accuracy, hash).
2. ``best.pt`` -- when the epoch improved: the same state as ``last.pt``.
3. ``metrics.jsonl`` -- every row, rewritten atomically (never a half-written line).

A kill before 1 leaves the previous epoch's consistent folder. A kill after 1 leaves ``last.pt``
ahead of the other two; :func:`reconcile` (run by a resume) rebuilds them from it: the metrics
rows are ``last.pt``'s, and ``best.pt`` is rewritten from ``last.pt`` when ``last.pt`` is the best
it records. Nothing is ever taken from a file that disagrees with the commit point.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from episodes.atomic import atomic_write_text
from fewshot.errors import FewShotError
from fewshot.models.checkpoint import load_checkpoint, save_checkpoint
from fewshot.models.encoders import INIT_ONLY

__all__ = ["commit_epoch", "write_metrics", "read_metrics", "reconcile", "resume_point"]


def write_metrics(path: str | os.PathLike, rows: list[dict]) -> None:
    """``metrics.jsonl``: one JSON object per epoch, the whole file replaced atomically."""
    atomic_write_text(path, _jsonl(rows))


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def commit_epoch(out_dir: Path, ckpt: dict, improved: bool, rows: list[dict]) -> None:
    """Write an epoch's end in the order the module docstring gives (``last.pt`` commits)."""
    save_checkpoint(out_dir / "last.pt", ckpt)
    if improved:
        save_checkpoint(out_dir / "best.pt", ckpt)
    write_metrics(out_dir / "metrics.jsonl", rows)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of ``metrics.jsonl``; a damaged line (e.g. the last one, cut by a kill mid-write by an
    older version) is dropped with a one-line warning instead of stopping the resume."""
    path = Path(path)
    if not path.exists():
        return []
    rows, bad = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
        else:
            bad.append(number)
    if bad:
        warnings.warn(f"{path}: dropped {len(bad)} damaged line(s) (line {', '.join(map(str, bad[:5]))}); "
                      "the rows are rebuilt from the checkpoint", stacklevel=2)
    return rows


def reconcile(out_dir: Path, ckpt: dict) -> list[dict]:
    """Make ``out_dir`` agree with the checkpoint being resumed; return its metrics rows.

    ``metrics.jsonl`` is rewritten with the checkpoint's rows (rows past its epoch dropped, a
    missing one restored); ``best.pt`` is rebuilt from ``ckpt`` when it does not hold the best
    epoch the checkpoint records and ``ckpt`` is that epoch. A ``best.pt`` that disagrees and
    cannot be rebuilt is a one-line error, never a silently wrong best figure.
    """
    metrics_path = out_dir / "metrics.jsonl"
    on_disk = read_metrics(metrics_path)
    epoch = int(ckpt.get("epoch", 0))
    rows = ckpt.get("metrics")
    rows = [r for r in on_disk if r["epoch"] <= epoch] if rows is None else list(rows)
    if not metrics_path.exists() or metrics_path.read_text(errors="replace") != _jsonl(rows):
        write_metrics(metrics_path, rows)
    best = ckpt.get("best")
    if best and best.get("hash"):
        best_path = out_dir / "best.pt"
        held = _identity(best_path)
        if held != (best["epoch"], best["hash"]):
            if best["hash"] != ckpt.get("hash"):
                shown = "" if best.get("accuracy") is None else f", accuracy {best['accuracy']:.4f}"
                raise FewShotError(
                    f"does not hold the best epoch ({best['epoch']}{shown}) "
                    "that the resumed checkpoint records, and it cannot be rebuilt from it; restore it "
                    "or train afresh", best_path)
            save_checkpoint(best_path, {k: v for k, v in ckpt.items() if k != "format"})
    return rows


def _identity(path: Path) -> tuple | None:
    """``(epoch, hash)`` of a checkpoint, or None when it is missing or unreadable."""
    if not path.exists():
        return None
    try:
        ckpt = load_checkpoint(path)
    except FewShotError:
        return None
    return ckpt.get("epoch"), ckpt.get("hash")


def resume_point(path: Path, spec: dict, fingerprint: str, objective: str) -> dict:
    """The checkpoint to resume from, refused (one line naming it) when it is missing or was
    written for another encoder, other training data or another objective."""
    if not path.exists():
        raise FewShotError("nothing to resume: no such checkpoint", path)
    ckpt = load_checkpoint(path, map_location="cpu")  # refuses non-finite weights
    old = dict(ckpt.get("encoder", {}))
    if isinstance(old.get("kwargs"), dict):  # where the starting weights came from is no part of the model
        old["kwargs"] = {k: v for k, v in old["kwargs"].items() if k not in INIT_ONLY}
    diffs = []
    for key in ("name", "in_channels", "num_classes", "embedding_dim", "kwargs"):
        if old.get(key) != spec.get(key):
            diffs.append(f"{key} {old.get(key)!r} (checkpoint) vs {spec.get(key)!r} (now)")
    if ckpt.get("data_fingerprint") not in (None, fingerprint):
        diffs.append(f"training data {ckpt.get('data_fingerprint')} vs {fingerprint}")
    was = (ckpt.get("config") or {}).get("objective", "metric")
    if was != objective:
        diffs.append(f"objective {was!r} (checkpoint) vs {objective!r} (now)")
    if diffs:
        raise FewShotError("cannot resume, the checkpoint differs: " + "; ".join(diffs), path)
    return ckpt
