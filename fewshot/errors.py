"""The one exception type of the model side, and the options check that raises it most."""

from __future__ import annotations

import dataclasses
import os
from typing import Any


class FewShotError(Exception):
    """A problem a user can cause on the model side (names, checkpoints, shapes, NaNs).

    One line naming the file (when there is one) and the cause; the CLI prints it and exits 2.
    """

    def __init__(self, cause: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}" if self.path else cause)


def from_options(cls: type, options: dict, what: str) -> Any:
    """``cls(**options)`` for a dataclass of settings, refusing unknown keys in one line that
    lists them and the known ones (``what`` names the settings: "augmentation options")."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise FewShotError(f"unknown {what} {unknown}; known: {', '.join(known)}")
    return cls(**options)
