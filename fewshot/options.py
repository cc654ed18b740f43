"""Typed ``NAME:KEY=VALUE,...`` options for the registries (heads today; any other later).

A registry entry is a class (a dataclass or any callable with annotated keyword parameters).
:func:`parse_spec` splits ``"nn:k=3,weighted=false"`` into the name and the raw texts;
:func:`typed_options` converts each text by the parameter's declared type, so ``weighted=false``
is ``False`` (not the true string ``'false'``), ``k=3`` is ``3`` and ``C=abc`` is a one-line
error that says what is accepted. Range checks (``C > 0``, ``k >= 1``) belong to the class itself
(its ``__post_init__``, with :func:`check`), so they also hold when it is built from Python.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable
from typing import Any

import torch

from fewshot.errors import FewShotError

__all__ = ["parse_spec", "typed_options", "convert", "check", "finite_positive", "at_least"]

TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64}


def parse_spec(spec: str, what: str = "option") -> tuple[str, dict[str, str]]:
    """``"nn:k=5,distance=cosine"`` -> ``("nn", {"k": "5", "distance": "cosine"})`` (texts, unconverted)."""
    name, _, rest = spec.strip().partition(":")
    raw: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise FewShotError(f"{what} {item!r} in {spec!r} must be key=value")
        if key.strip() in raw:
            raise FewShotError(f"{what} {key.strip()!r} given twice in {spec!r}")
        raw[key.strip()] = value.strip()
    return name.strip(), raw


def typed_options(cls: Callable, raw: dict[str, Any], what: str) -> dict[str, Any]:
    """``raw`` (texts or already typed values) converted by ``cls``'s annotated parameters.

    Unknown keys are refused listing the known ones; ``what`` names the owner in messages
    (``"head 'nn'"``).
    """
    params = inspect.signature(cls).parameters
    hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else typing.get_type_hints(
        cls.__init__ if inspect.isclass(cls) else cls)
    unknown = sorted(set(raw) - set(params))
    if unknown:
        valid = ", ".join(p for p in params if p != "name")
        raise FewShotError(f"{what} takes no option(s) {unknown}; valid: {valid}")
    out = {}
    for key, value in raw.items():
        hint = hints.get(key, Any)
        out[key] = convert(value, hint, f"{what} option {key}") if isinstance(value, str) else value
    return out


def convert(text: str, hint: Any, what: str) -> Any:
    """One text as the type ``hint`` (bool, int, float, str, torch.dtype, tuples, unions, None)."""
    kinds = _alternatives(hint)
    for kind in kinds:
        ok, value = _try(text, kind)
        if ok:
            return value
    accepted = " or ".join(dict.fromkeys(_describe(k) for k in kinds))
    raise FewShotError(f"{what}={text!r}: expected {accepted}")


def _alternatives(hint: Any) -> list:
    """The members of a union (``float | str`` -> ``[float, str]``), strings last (they accept all)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = list(typing.get_args(hint))
    else:
        members = [hint]
    return sorted(members, key=lambda k: k is str)


def _try(text: str, kind: Any) -> tuple[bool, Any]:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":  # 'error' reads as error
        text = text[1:-1]
    low = text.lower()
    if kind is type(None):
        return low in ("none", "null"), None
    if kind is bool:
        return (True, True) if low in TRUE else (True, False) if low in FALSE else (False, None)
    if kind is int:
        try:
            return True, int(low)
        except ValueError:
            return False, None
    if kind is float:
        try:
            return True, float(low)
        except ValueError:
            return False, None
    if kind is torch.dtype:
        return (low in DTYPES), DTYPES.get(low)
    if typing.get_origin(kind) is tuple:
        inner = typing.get_args(kind)[0]
        parts = [p for p in text.replace(";", " ").split() if p]
        values = [_try(p, inner) for p in parts]
        if parts and all(ok for ok, _ in values):
            return True, tuple(v for _, v in values)
        return False, None
    if kind in (str, Any):
        return True, text
    return False, None


def _describe(kind: Any) -> str:
    if kind is type(None):
        return "none"
    if kind is bool:
        return "a boolean (" + "/".join(TRUE[:3] + FALSE[:3]) + ")"
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if kind is torch.dtype:
        return "a dtype (" + ", ".join(DTYPES) + ")"
    if typing.get_origin(kind) is tuple:
        return f"{_describe(typing.get_args(kind)[0])} list separated by ';'"
    return "text"


# ----------------------------------------------------------------- range checks
def check(ok: bool, what: str, value: Any, accepted: str) -> None:
    """Raise ``FewShotError("{what}={value}: must be {accepted}")`` unless ``ok``."""
    if not ok:
        raise FewShotError(f"{what}={value!r}: must be {accepted}")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return float(value) if not isinstance(value, (bool, str)) else None
        except (TypeError, ValueError):
            return None
    return float(value)


def finite_positive(value: Any, what: str) -> float:
    """``value`` as a float that is finite and > 0, else a one-line error."""
    v = _number(value)
    check(v is not None and math.isfinite(v) and v > 0, what, value, "a finite number > 0")
    return float(v)  # type: ignore[arg-type]



def at_least(value: Any, low: int, what: str) -> int:
    """``value`` as an int ``>= low``, else a one-line error (floats with a fraction refused)."""
    v = _number(value)
    check(v is not None and math.isfinite(v) and v == int(v) and v >= low, what, value,
          f"an integer >= {low}")
    return int(v)  # type: ignore[arg-type]
