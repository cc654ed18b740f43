"""Atomic file writes (a reader sees the old file or the new one, never half of one), and the
checked JSON read that goes with them.

Every file the toolkit writes that a user may rely on (checkpoints, classifiers, manifests,
caches, results) goes through :func:`atomic_open`: write to a temporary file in the same folder,
flush and fsync it, rename it over the target, then fsync the folder so the rename survives a
crash. A failure at any point removes the temporary file and leaves the old target untouched;
a kill leaves it behind, and the next write to the folder removes it (:func:`clean_orphans`).
The file gets the mode the user's umask gives a new file (not ``mkstemp``'s 0600).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import DatasetError

# Temporary files carry their writer (host and process id), so that the next write to the folder
# can tell an orphan of a killed write (same host, process gone) from a live write of another process.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_ORPHAN = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)~(?P<pid>\d+)~\..*tmp")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", suffix: str = ".tmp") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``.

    ``suffix`` is the temporary file's ending (``".tmp.png"`` keeps a format inferred from it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_orphans(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}~{os.getpid()}~.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as fh:
            yield fh
            fh.flush()
            if hasattr(os, "fchmod"):  # mkstemp makes 0600; follow the umask (POSIX)
                os.fchmod(fh.fileno(), 0o666 & ~_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def clean_orphans(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed atomic writes of this host left in ``folder``.

    A temporary file is an orphan when the process that made it is gone; files of live processes
    and of other hosts (a shared file system) are left alone. Returns the removed paths.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _ORPHAN.match(name)
        if m is None or m["host"] != _HOST or _alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))
            removed.append(Path(folder) / name)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        return True
    return True


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def read_json(path: str | os.PathLike, *, missing: str, unreadable: str,
              error: type[Exception] = DatasetError) -> Any:
    """The JSON document at ``path``; a missing or unreadable file raises ``error(cause, path)``
    (one line: ``missing``, or ``unreadable`` with the parser's reason)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(missing, path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{unreadable} ({exc})", path) from None
    except RecursionError:  # e.g. 100,000 nested lists: refuse, never a traceback
        raise error(f"{unreadable} (nested too deeply)", path) from None


def ensure_writable_file(path: str | os.PathLike, *, error: type[Exception] = DatasetError) -> Path:
    """Refuse, before any work starts, an output file that could not be written: ``path`` is a
    folder, its parent is a file, or the folder it goes into refuses a new file (read-only, full,
    no permission). Creates nothing that stays behind."""
    path = Path(path)
    if path.is_dir():
        raise error("is a folder; give a file name to write", path)
    _probe(path.parent, path, error)
    return path


def ensure_writable_dir(path: str | os.PathLike, *, error: type[Exception] = DatasetError) -> Path:
    """Like :func:`ensure_writable_file` for an output folder (which may not exist yet)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise error("exists and is not a folder; give a folder to write into", path)
    _probe(path, path, error)
    return path


def _probe(directory: Path, label: Path, error: type[Exception]) -> None:
    """Write, sync and remove one byte in the nearest existing folder on the way to ``directory``
    (the folders below it are created later by the write itself)."""
    existing = directory if str(directory) else Path(".")
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise error(f"cannot write here: {existing} is a file, not a folder", label)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fewshot-write-test.", dir=existing)
        try:
            os.write(fd, b"\0")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        raise error(f"cannot write into {existing} ({exc.strerror or exc})", label) from None


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
