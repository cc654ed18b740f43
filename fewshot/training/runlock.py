"""One writer per run folder: an advisory lock held while a training run writes there.

Two training runs pointed at the same folder would interleave their checkpoints
and metrics (one run's ``best.pt`` beside the other's ``last.pt``), a run no file describes. The
lock is ``fcntl.flock`` on ``<folder>/.lock``: the kernel drops it when the holder exits or is
killed, so a crashed run never blocks the next one. Where ``fcntl`` is missing (Windows) the lock
is a no-op.
"""

from __future__ import annotations

import os
from pathlib import Path

from fewshot.errors import FewShotError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunLock"]


class RunLock:
    """``with RunLock(folder):`` -- FewShotError naming the folder and the holder's pid if taken."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._fh = None
        self._created = False

    def __enter__(self) -> RunLock:
        if fcntl is None:
            return self
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        fh = open(self.folder / ".lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise FewShotError(f"another run (pid {holder}) is writing to this folder; wait for it to end "
                               "or use another output folder", self.folder) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            try:
                os.unlink(self.folder / ".lock")
            except OSError:
                pass
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
            if self._created:  # a run refused before writing anything leaves no empty folder behind
                try:
                    self.folder.rmdir()
                except OSError:
                    pass
