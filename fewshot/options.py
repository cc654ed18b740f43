"""Typed options: the one ``KEY=VALUE`` parser of the toolkit.

Every setting that has a name -- a registry entry's keyword (``"nn:k=3,weighted=false"``), a
repeatable ``--loss-arg K=V`` flag, a ``[train]`` table of a recipe -- is declared once, as an
:class:`Option` read from the owner's signature and type hints (:func:`declared`), and checked
by :func:`typed_options`:

* texts are converted by the declared type (:func:`convert`): ``weighted=false`` is ``False``
  (not the true string ``'false'``), ``k=3`` is ``3``, ``grid=0.1;1;10`` a tuple, ``none``
  ``None``; an undeclared type (``Any``: PML's un-annotated keywords) reads the text as a literal
  (:func:`literal`);
* values that are already typed (Python calls, TOML files) must fit the declared type
  (:func:`fits`);
* unknown keys are refused in one line that lists the valid options with their types.

Range checks (``C > 0``, ``k >= 1``) belong to the owner itself (its ``__post_init__``, with
:func:`check`), so they also hold when it is built from Python.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from fewshot.errors import FewShotError

__all__ = ["Option", "declared", "typed_options", "from_options", "check_option_types", "parse_spec",
           "parse_pairs", "convert", "literal", "fits", "describe", "check", "finite_positive", "at_least"]

TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")
NONE = ("none", "null")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64}
REQUIRED = inspect.Parameter.empty


# ----------------------------------------------------------------- declarations
@dataclasses.dataclass(frozen=True)
class Option:
    """One declared option: its name, type (``Any`` when undeclared), default and allowed values."""

    name: str
    type: Any = Any
    default: Any = REQUIRED
    choices: tuple | None = None

    def __str__(self) -> str:
        """``k: int = 1``, ``lam: float | str = 'loo'``, ``margin = 0.05`` (undeclared type)."""
        text = self.name if self.type is Any else f"{self.name}: {type_name(self.type)}"
        if self.choices is not None and typing.get_origin(self.type) is not typing.Literal:
            text += " in " + "/".join(map(str, self.choices))
        if self.default is REQUIRED:
            return text
        default = self.default
        if isinstance(default, (tuple, list)) and len(default) > 4:  # a long grid: its ends
            default = f"({default[0]:g}, ..., {default[-1]:g})" if all(
                isinstance(v, float) for v in default) else f"({len(default)} values)"
            return f"{text} = {default}"
        return f"{text} = {default!r}"


def declared(factory: Callable, skip: Iterable[str] = ()) -> tuple[dict[str, Option], bool]:
    """The keyword options of a class, dataclass, function or ``functools.partial`` from its
    signature and type hints, and whether it also takes ``**kwargs`` (then it is *open*: keys it
    does not name are passed on, read as literals)."""
    target = factory.func if hasattr(factory, "func") and hasattr(factory, "keywords") else factory
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: no declared options
        return {}, True
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target)
                                      and not dataclasses.is_dataclass(target) else target)
    except Exception:  # noqa: BLE001 - unresolvable annotations: treat as undeclared
        hints = {}
    skip = set(skip)
    options, is_open = {}, False
    for p in params.values():
        if p.kind is p.VAR_KEYWORD:
            is_open = True
        elif p.kind is not p.VAR_POSITIONAL and p.name not in skip:
            hint = hints.get(p.name, Any)
            choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
            options[p.name] = Option(p.name, hint, p.default, choices)
    return options, is_open


def typed_options(options: dict[str, Option], given: dict[str, Any], what: str, *,
                  open: bool = False, strict: bool = False) -> dict[str, Any]:
    """``given`` checked against the declared ``options``: texts converted by type (unless
    ``strict``: values read from files must already have their type), typed values checked,
    choices enforced, unknown keys refused (``open``: passed on, texts read as literals).
    ``what`` names the owner in messages (``"head 'nn'"``, ``"augmentation"``)."""
    unknown = sorted(set(given) - set(options))
    if unknown and not open:
        raise FewShotError(f"unknown {what} options {unknown}; valid: {listing(options)}")
    out = {}
    for key, value in given.items():
        opt = options.get(key, Option(key))
        if isinstance(value, str) and not strict:
            value = convert(value, opt.type, f"{what} option {key}")
        elif not fits(value, opt.type):
            raise FewShotError(f"{what} option {key} must be {describe(opt.type)}, got {value!r}")
        if opt.choices is not None and value not in opt.choices:
            raise FewShotError(f"{what} option {key}={value!r}: choose one of "
                               + ", ".join(map(str, opt.choices)))
        out[key] = value
    return out


def listing(options: dict[str, Option]) -> str:
    """``k: int = 1, distance: str = 'euclidean'``: the options of an error message."""
    return ", ".join(map(str, options.values())) or "(none)"


def from_options(cls: type, options: dict, what: str) -> Any:
    """``cls(**options)`` for a dataclass of settings whose values already have their types
    (recipes, records, Python): unknown keys and values of the wrong type refused in one line."""
    return cls(**typed_options(declared(cls)[0], dict(options), what, strict=True))


def check_option_types(cls: type, options: dict, path: str | os.PathLike | None = None) -> None:
    """Refuse values whose type does not fit the field of dataclass ``cls`` that they set (one line
    naming ``path`` -- e.g. the recipe file -- and the key). Unknown keys are left to the caller."""
    hints = typing.get_type_hints(cls)
    for key, value in options.items():
        expected = hints.get(key)
        if expected is not None and not fits(value, expected):
            raise FewShotError(f"{key} must be {describe(expected)}, got {value!r}", path)


# ----------------------------------------------------------------- texts
def parse_spec(spec: str, what: str = "option") -> tuple[str, dict[str, str]]:
    """``"nn:k=5,distance=cosine"`` -> ``("nn", {"k": "5", "distance": "cosine"})`` (texts, unconverted)."""
    name, _, rest = spec.strip().partition(":")
    return name.strip(), parse_pairs([p for p in rest.split(",") if p.strip()], what, spec)


def parse_pairs(items: Iterable[str] | dict | None, what: str = "option",
                source: str | None = None) -> dict[str, Any]:
    """``["m=0.25", "gamma=80"]`` -> ``{"m": "0.25", "gamma": "80"}`` (texts, converted later by
    the owner's declared types); a dict is copied as it is. A key given twice is refused."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    raw: dict[str, str] = {}
    for item in items:
        key, eq, value = str(item).partition("=")
        key = key.strip()
        where = f" in {source!r}" if source else ""
        if not eq or not key:
            raise FewShotError(f"{what} {str(item).strip()!r}{where} must be key=value")
        if key in raw:
            raise FewShotError(f"{what} {key!r} given twice{where}")
        raw[key] = value.strip()
    return raw


def convert(text: str, hint: Any, what: str) -> Any:
    """One text as the type ``hint`` (bool, int, float, str, torch.dtype, Literal, tuples, lists,
    unions, None; ``Any``: :func:`literal`)."""
    kinds = _alternatives(hint)
    for kind in kinds:
        ok, value = _try(text, kind)
        if ok:
            return value
    accepted = " or ".join(dict.fromkeys(describe(k, text=True) for k in kinds))
    raise FewShotError(f"{what}={text!r}: expected {accepted}")


def literal(text: str) -> Any:
    """A text read without a declared type: ``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True,
    ``"none"`` -> None, ``"64,96"`` -> [64, 96]; anything else stays text."""
    if "," in text:
        parts = [literal(part) for part in text.split(",")]
        return text if any(isinstance(p, str) for p in parts) else parts
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in NONE:
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _alternatives(hint: Any) -> list:
    """The members of a union (``float | str`` -> ``[float, str]``), strings last (they accept all)."""
    origin = typing.get_origin(hint)
    members = list(typing.get_args(hint)) if origin in (typing.Union, types.UnionType) else [hint]
    return sorted(members, key=lambda k: k is str)


def _sequence(kind: Any) -> tuple[type, Any] | None:
    """``(tuple, item type)`` / ``(list, item type)`` for sequence hints, else None."""
    origin = typing.get_origin(kind) or kind
    if origin in (tuple, list, Sequence, typing.Sequence):
        args = [a for a in typing.get_args(kind) if a is not Ellipsis]
        return (tuple if origin is tuple else list), (args[0] if args else Any)
    return None


def _try(text: str, kind: Any) -> tuple[bool, Any]:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":  # 'error' reads as error
        text = text[1:-1]
    low = text.lower()
    if kind is Any:
        return True, literal(text)
    if kind is type(None):
        return low in NONE, None
    if kind is bool:
        return (True, True) if low in TRUE else (True, False) if low in FALSE else (False, None)
    if kind in (int, float):
        try:
            return True, kind(low)
        except ValueError:
            return False, None
    if kind is torch.dtype:
        return (low in DTYPES), DTYPES.get(low)
    if typing.get_origin(kind) is typing.Literal:
        match = [c for c in typing.get_args(kind) if str(c) == text]
        return (True, match[0]) if match else (False, None)
    seq = _sequence(kind)
    if seq is not None:  # items separated by ';' (inside a NAME:K=V,... spec) or ','
        container, inner = seq
        parts = text.replace(";", " ").replace(",", " ").split()
        values = [_try(p, inner) for p in parts]
        if parts and all(ok for ok, _ in values):
            return True, container(v for _, v in values)
        return False, None
    if kind is str:
        return True, text
    return False, None


# ----------------------------------------------------------------- typed values
def fits(value: Any, expected: Any) -> bool:
    """Whether an already typed ``value`` fits the hint ``expected`` (an int fits a float, a bool
    fits only a bool, a list or tuple of fitting items fits a sequence, None an optional)."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if _sequence(expected) is not None:
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args))
        return not args or all(fits(v, args[0]) for v in value)
    if (origin or expected) is dict:
        return isinstance(value, dict)
    return not isinstance(origin or expected, type) or isinstance(value, origin or expected)


def describe(hint: Any, text: bool = False) -> str:
    """What a value of type ``hint`` must be, for messages (``text``: as written on a command line)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        optional = " (or omitted)" if len(args) < len(typing.get_args(hint)) and not text else ""
        members = typing.get_args(hint) if text else args
        return " or ".join(describe(a, text) for a in members) + optional
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if hint is type(None):
        return "none"
    if hint is bool:
        return "a boolean (" + "/".join(TRUE[:3] + FALSE[:3]) + ")" if text else "true or false"
    if hint is torch.dtype:
        return "a dtype (" + ", ".join(DTYPES) + ")"
    seq = _sequence(hint)
    if seq is not None:
        if origin is tuple and args and args[-1] is not Ellipsis and not text:
            return f"a list of {len(args)} numbers"
        item = describe(seq[1], text) if seq[1] is not Any else "value"
        return f"{item} list separated by ';' or ','" if text else "a list"
    names = {int: "an integer", float: "a number", str: "a string" if not text else "text",
             dict: "a table of options", Any: "a value"}
    return names.get(origin or hint, getattr(hint, "__name__", str(hint)))


def type_name(hint: Any) -> str:
    """A short name of a type hint: ``int``, ``float | str``, ``tuple[float, ...]``."""
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    return str(hint).replace("typing.", "").replace("collections.abc.", "").replace("NoneType", "None")


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
