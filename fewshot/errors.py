"""The one exception type of the model side, and the options check that raises it most."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
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
    lists them and the known ones (``what`` names the settings: "augmentation options"), and values
    of the wrong type (:func:`check_option_types`)."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise FewShotError(f"unknown {what} {unknown}; known: {', '.join(known)}")
    check_option_types(cls, options)
    return cls(**options)


def check_option_types(cls: type, options: dict, path: str | os.PathLike | None = None) -> None:
    """Refuse values whose type does not fit the field of dataclass ``cls`` that they set (one line
    naming ``path`` -- e.g. the recipe file -- and the key). Unknown keys are left to the caller.

    Accepted: ``bool`` for bool only; an int for ``int`` (not a bool); an int or a float for
    ``float``; a list or tuple (of fitting items) for ``list`` / ``tuple[...]``; a dict for ``dict``;
    ``None`` where the field is optional.
    """
    hints = typing.get_type_hints(cls)
    for key, value in options.items():
        expected = hints.get(key)
        if expected is not None and not _fits(value, expected):
            raise FewShotError(f"{key} must be {_describe(expected)}, got {value!r}", path)


def _fits(value: Any, expected: Any) -> bool:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if (origin or expected) in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        return not args or all(_fits(v, args[0]) for v in value)
    if (origin or expected) is dict:
        return isinstance(value, dict)
    return not isinstance(origin or expected, type) or isinstance(value, origin or expected)


def _describe(expected: Any) -> str:
    args = [a for a in typing.get_args(expected) if a is not type(None)]
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args) + (" (or omitted)" if len(args) < len(
            typing.get_args(expected)) else "")
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             dict: "a table of options", list: "a list"}
    if typing.get_origin(expected) is tuple:
        return f"a list of {len(typing.get_args(expected))} numbers"
    return names.get(typing.get_origin(expected) or expected, getattr(expected, "__name__", str(expected)))
