"""The one exception type of the model side."""

from __future__ import annotations

import os


class FewShotError(Exception):
    """A problem a user can cause on the model side (names, checkpoints, shapes, NaNs).

    One line naming the file (when there is one) and the cause; the CLI prints it and exits 2.
    """

    def __init__(self, cause: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}" if self.path else cause)
