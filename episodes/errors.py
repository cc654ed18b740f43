"""The one exception type of the data side."""

from __future__ import annotations

import os


class DatasetError(Exception):
    """A problem with a user's data (path, format, size, impossible request).

    The message is one line that names the file (when there is one) and the cause, so the
    command line can print it as it is and exit 2.
    """

    def __init__(self, cause: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}" if self.path else cause)
