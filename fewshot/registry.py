"""Name -> object tables with typed options and one error form (timm's register/create, PML's
objects-by-name).

A :class:`Registry` maps a name to a factory (a class or function) whose keyword options are
declared by its signature and type hints (:func:`fewshot.options.declared`) or given explicitly::

    ENCODERS = Registry("encoder", passthrough=nn.Module)

    @ENCODERS.register("conv4")
    class Conv4(nn.Module): ...

    ENCODERS.create("conv4:width=32,pool=avg")     # options in the name, typed: width=32
    ENCODERS.create("conv4", width=32)             # or as keywords (they win over the name's)
    ENCODERS.create(my_module)                     # objects pass through unchanged

Every lookup fails the same way, in one line: ``unknown loss 'cirle'; choose one of circle,
contrastive, ...``; an option the factory does not take lists the valid ones with their types
(``unknown head 'nn' options ['depth']; valid: k: int = 1, ...``); a text that does not fit the
declared type says what is accepted. Registries that name plain objects rather than factories
(feature transforms, recipe files) are built with ``call=False``: ``create`` returns the object.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

from fewshot.errors import FewShotError
from fewshot.options import Option, declared, listing, parse_spec, typed_options

__all__ = ["Registry", "Entry", "Option", "choices_help"]


@dataclasses.dataclass
class Entry:
    """One registered name: the object, its declared options and free-form facts (``meta``)."""

    name: str
    obj: Any
    options: dict[str, Option]
    open: bool = False  # the factory also takes **kwargs: other keys are passed on as literals
    supplied: tuple[str, ...] = ()  # keywords the calling code supplies (not user options)
    meta: dict = dataclasses.field(default_factory=dict)
    doc: str = ""


class Registry:
    """Names -> factories (or objects), one kind each (``"loss"``, ``"head"``...).

    Args:
        kind: what an entry is, for messages.
        passthrough: types that :meth:`create` returns unchanged (a PML loss, a torch module);
            ``None``: every non-text object passes through.
        call: ``False`` for tables of plain objects: :meth:`create` returns the object itself.
        note: appended to the unknown-name error (``"or give a .toml file"``).
        ignore_case: look names up case-insensitively (``"Conv4"`` is ``conv4``).
    """

    def __init__(self, kind: str, *, passthrough: type | tuple[type, ...] | None = None, call: bool = True,
                 note: str = "", ignore_case: bool = False):
        self.kind, self.passthrough, self.call, self.note = kind, passthrough, call, note
        self.ignore_case = ignore_case
        self._entries: dict[str, Entry] = {}

    # ------------------------------------------------------------- building
    def register(self, name: str, obj: Any = None, *, options: dict[str, Any] | None = None,
                 skip: tuple[str, ...] = (), doc: str | None = None, **meta: Any) -> Any:
        """Register ``obj`` under ``name`` (usable as a decorator when ``obj`` is omitted; in a
        ``call=False`` table an omitted ``obj`` is the name itself: a documented choice).

        Options come from ``obj``'s signature and type hints, minus ``skip`` (keywords the calling
        code supplies itself, e.g. ``in_channels``: passed on unchecked), or from ``options``
        (name -> type, or :class:`Option`). ``meta`` holds facts about the entry (``proxy=True``),
        read back as ``entry.meta`` and filtered on by :meth:`names`.
        """
        if obj is None and self.call:
            return lambda o: self.register(name, o, options=options, skip=skip, doc=doc, **meta)
        key = self._key(name)
        obj = key if obj is None else obj
        if key in self._entries:
            raise FewShotError(f"{self.kind} {key!r} is registered twice")
        if options is not None:
            opts = {k: v if isinstance(v, Option) else Option(k, v) for k, v in options.items()}
            is_open = False
        elif self.call:
            opts, is_open = declared(obj, skip)
        else:
            opts, is_open = {}, False
        text = doc if doc is not None else (getattr(obj, "__doc__", None) or "") if self.call else ""
        self._entries[key] = Entry(key, obj, opts, is_open, tuple(skip), meta, _first_sentence(text))
        return obj

    # ------------------------------------------------------------- lookup
    def names(self, **meta: Any) -> tuple[str, ...]:
        """Registered names in order, optionally those whose ``meta`` has the given values."""
        return tuple(n for n, e in self._entries.items()
                     if all(e.meta.get(k) == v for k, v in meta.items()))

    def _key(self, name: str) -> str:
        # exact names (case-folded only where the registry says so): a padded " cosine" is not
        # "cosine", and would be recorded as given and compared as given downstream
        return str(name).lower() if self.ignore_case else str(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

    def get(self, name: str) -> Entry:
        """The entry of ``name``; unknown names list the valid ones."""
        key = self._key(name)
        if key not in self._entries:
            note = f" {self.note}" if self.note else ""
            raise FewShotError(f"unknown {self.kind} {str(name)!r}; choose one of "
                               f"{', '.join(self._entries)}{note}")
        return self._entries[key]

    __getitem__ = get

    # ------------------------------------------------------------- options
    def parse(self, spec: str) -> tuple[Entry, dict[str, str]]:
        """``"nn:k=3,weighted=false"`` -> (the ``nn`` entry, ``{"k": "3", "weighted": "false"}``)."""
        name, raw = parse_spec(spec, f"{self.kind} option")
        return self.get(name), raw

    def options(self, spec: str, **overrides: Any) -> tuple[Entry, dict[str, Any]]:
        """The entry of ``spec`` and its options typed: those in the name, then ``overrides``
        (texts converted by the declared types, typed values checked)."""
        entry, raw = self.parse(spec)
        supplied = {k: v for k, v in overrides.items() if k in entry.supplied}
        given = {**raw, **{k: v for k, v in overrides.items() if k not in supplied}}
        return entry, {**typed_options(entry.options, given, f"{self.kind} {entry.name!r}", open=entry.open),
                       **supplied}

    def create(self, spec: Any, **overrides: Any) -> Any:
        """The object named by ``spec`` (``"name"`` or ``"name:key=value,..."``) built with its
        options and ``overrides``; a non-text ``spec`` of a ``passthrough`` type is returned as is."""
        if not isinstance(spec, str):
            if self.passthrough is None or isinstance(spec, self.passthrough):
                return spec
            raise FewShotError(f"a {self.kind} must be a name ({', '.join(self._entries)}) or a "
                               f"{_type_names(self.passthrough)}, got {type(spec).__name__}")
        entry, kwargs = self.options(spec, **overrides)
        if not self.call:  # a table of objects: no options were declared, so none got through
            return entry.obj
        try:
            return entry.obj(**kwargs)
        except (TypeError, ValueError, AssertionError) as exc:
            valid = listing(entry.options) + (" and the keywords of its base class" if entry.open else "")
            raise FewShotError(f"bad options for {self.kind} {entry.name!r} {kwargs}: {exc}; "
                               f"valid: {valid}") from None

    def describe(self) -> str:
        """Markdown lines ``- `name`: doc. Options: ...`` (the reference of ``docs/registry.md``)."""
        lines = []
        for e in self._entries.values():
            opts = f" Options: `{listing(e.options)}`" if e.options else ""
            more = " (and its base class's keywords)" if e.open else ""
            lines.append(f"- `{e.name}`: {e.doc}{opts}{more}".rstrip())
        return "\n".join(lines)


def _first_sentence(doc: str) -> str:
    """The first sentence of a docstring, on one line."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    return re.split(r"(?<=\.)\s+(?=[A-Z])", paragraph)[0]


def _type_names(types_: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (types_ if isinstance(types_, tuple) else (types_,)))


def choices_help(registry: Registry, default: str | None = None) -> str:
    """``"circle (default), contrastive, ..."``: a CLI help text listing a registry's names."""
    return ", ".join(f"{n} (default)" if n == default else n for n in registry)

