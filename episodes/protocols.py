"""Benchmark protocols: which classes to train, validate and test on, and how episodes are drawn.

A :class:`Protocol` (like learn2learn's benchmark objects) names a benchmark: its base, val and
novel sets, given where the data is, and its episode protocols (:class:`EpisodeProtocol`: way,
shots, query, within-group, number of episodes) for validation and for the reported figures.

==================  ========================================================================
``glyphs``          the built-in glyph set: splits base/val/novel = alphabets 0-19/20-23/24-29;
                    5-way 1- and 5-shot episodes
``omniglot-minimal`` Omniglot ``images_background_small1`` (136 characters, 5 alphabets) to train
                    on; validation: 20-way 1-shot within-alphabet episodes on the ``small2``
                    alphabets that small1 lacks and that hold >= 20 characters (Japanese
                    (katakana), Sanskrit); novel: all three small2 alphabets small1 lacks (with
                    Tagalog, 106 characters). Val is a subset of novel: the minimal sets hold no
                    third alphabet pool, so novel figures are development figures
``omniglot``        Omniglot background (30 alphabets) / evaluation (20 alphabets) sets of Lake et
                    al.; no val set; 20-way 1- and 5-shot episodes
``omniglot-runs``   the 20 fixed 20-way 1-shot one-shot challenge runs (novel only)
``miniimagenet``    the Ravi & Larochelle class split: base/val/novel = train/val/test (64/16/20
                    classes); 5-way 1- and 5-shot episodes, 15 queries per class
``folder``          an image folder as it is: base only
``digits``          scikit-learn's digits: novel only (a cross-domain set)
==================  ========================================================================

:func:`protocol_for` finds the protocol of a data spec (``omniglot:DIR/images_background_small1.zip``
or ``omniglot:DIR?set=small1`` is ``omniglot-minimal``); :func:`get_protocol` finds one by name and
:meth:`Protocol.at` places it at a folder. The sets are :class:`DataRef` (a spec and a split), built
from the given spec: a sibling file keeps the given path's form (relative stays relative), and the
source's own options (glyphs' ``alphabets``, ``seed``, ``per_class``; ``strict``) carry over, while
selections (``groups``, ``exclude_groups``, ``max_per_class``, ``split``) do not.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from .errors import DatasetError
from .imageset import ImageSet
from .sampling import Episodes, EpisodeSpec, sample_episodes
from .specs import COMMON_OPTIONS, DataSpec, load_data, parse_spec

__all__ = ["EpisodeProtocol", "DataRef", "Protocol", "Benchmark", "PROTOCOLS", "PROTOCOL_VAL",
           "get_protocol", "protocol_for", "training_split", "default_validation", "validation_spec",
           "validation_settings"]

PROTOCOL_VAL = "protocol"   # a recipe's ``val``: the val set and val episodes of its data's protocol


@dataclass(frozen=True)
class EpisodeProtocol:
    """How episodes are drawn: ``way`` classes, ``shots`` support images per class (one set of
    episodes per shot), ``query`` images per class, ``episodes`` per shot, optionally all classes of
    an episode from one group, with ``seed``."""

    way: int = 5
    shots: tuple[int, ...] = (1, 5)
    query: int = 15
    episodes: int = 2000
    within_group: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        shots = (self.shots,) if isinstance(self.shots, int) else tuple(self.shots)
        object.__setattr__(self, "shots", shots)
        for name, value in (("way", self.way), ("query", self.query), ("episodes", self.episodes),
                            *(("shot", s) for s in shots)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DatasetError(f"{name} must be a positive integer, got {value!r}")
        if not shots:
            raise DatasetError("an episode protocol needs at least one shot")

    def spec(self, shot: int) -> EpisodeSpec:
        return EpisodeSpec(self.way, int(shot), self.query)

    def replace(self, **changes) -> EpisodeProtocol:
        return replace(self, **changes)

    def sample(self, data: ImageSet) -> list[Episodes]:
        """One independent draw per shot, each with ``seed``."""
        return [sample_episodes(data, self.spec(s), self.episodes, seed=self.seed,
                                within_group=self.within_group) for s in self.shots]

    def sample_nested(self, data: ImageSet) -> list[Episodes]:
        """One draw at the largest shot; a smaller shot keeps the same classes and queries and the
        first ``k`` support images of each class, so shots are paired too (sorted by shot)."""
        shots = sorted(set(self.shots))
        drawn = sample_episodes(data, self.spec(shots[-1]), self.episodes, seed=self.seed,
                                within_group=self.within_group)
        return [Episodes(drawn.support[:, :, :k].contiguous(), drawn.query, drawn.classes, self.spec(k),
                         drawn.seed, drawn.within_group) for k in shots]

    def val_settings(self) -> dict:
        """The ``val_*`` training settings of this protocol (``TrainConfig`` fields)."""
        return {"val_way": self.way, "val_shots": list(self.shots), "val_query": self.query,
                "val_episodes": self.episodes, "val_within_group": self.within_group}


@dataclass(frozen=True)
class DataRef:
    """One set of a benchmark: a data spec and a split (None: the whole spec)."""

    spec: str
    split: str | None = None

    def load(self, **kwargs) -> ImageSet:
        """:func:`episodes.specs.load_data` of this set (``image_size``, ``channels``, ``cache_dir``...)."""
        return load_data(self.spec, self.split, **kwargs)

    def joined(self) -> str:
        """The set as one spec string (the split as ``?split=``), as a recipe or ``--val`` names it."""
        if self.split is None:
            return self.spec
        return f"{self.spec}{'&' if '?' in self.spec else '?'}split={self.split}"


@dataclass(frozen=True)
class Benchmark:
    """A protocol placed at its data: the three sets (None where the benchmark has none)."""

    protocol: Protocol
    base: DataRef | None
    val: DataRef | None
    novel: DataRef | None

    @property
    def name(self) -> str:
        return self.protocol.name

    def set(self, role: str) -> DataRef:
        """The ``base``, ``val`` or ``novel`` set; DatasetError when the benchmark has none."""
        if role not in ("base", "val", "novel"):
            raise DatasetError(f"unknown set {role!r} of a benchmark; choose base, val or novel")
        ref = getattr(self, role)
        if ref is None:
            raise DatasetError(f"protocol {self.name} has no {role} set")
        return ref


SetsFn = Callable[[DataSpec, str], tuple]


@dataclass(frozen=True)
class Protocol:
    """A named benchmark: how to find its sets from a data spec, and its episode protocols.

    ``one_source``: base, val and novel are splits of one source, so training defaults to its
    ``base`` split and the val split is the natural validation set.
    """

    name: str
    kind: str
    description: str
    sets: SetsFn = field(repr=False)
    val_episodes: EpisodeProtocol | None = None
    test_episodes: EpisodeProtocol = EpisodeProtocol(episodes=600)
    one_source: bool = False
    default_set: str | None = None   # the Omniglot set :meth:`at` names in a folder (e.g. ``small1``)

    def resolve(self, spec: str) -> Benchmark:
        """The sets of this benchmark for the data spec ``spec`` (of this protocol's kind)."""
        parsed = parse_spec(spec)
        if parsed.kind != self.kind:
            raise DatasetError(f"protocol {self.name} reads {self.kind} data, not {spec!r}")
        base, val, novel = self.sets(parsed, spec.strip())
        return Benchmark(self, base, val, novel)

    def at(self, location: str | os.PathLike | None = None) -> Benchmark:
        """The benchmark with its data at ``location`` (a folder or file; none for built-in data)."""
        if location is None:
            return self.resolve(self.kind)
        path = os.fspath(location)
        if self.default_set:   # the set's zip or folder inside ``location``, else the set option
            stem = os.path.join(path, "images_" + self.default_set if self.default_set == "background"
                                else "images_background_" + self.default_set)
            found = [p for p in (stem + ".zip", stem) if os.path.exists(p)]
            spec = f"{self.kind}:{found[0]}" if found else f"{self.kind}:{path}?set={self.default_set}"
            return self.resolve(spec)
        return self.resolve(f"{self.kind}:{path}")


# --------------------------------------------------------------------- the sets of each protocol
def _source(spec: DataSpec, text: str) -> str:
    """``text`` without its selection options: the source itself (kind, paths, kind options)."""
    body, _, query = text.partition("?")
    keep = [item for item in query.split("&")
            if item and item.partition("=")[0].strip() not in COMMON_OPTIONS]
    return body + ("?" + "&".join(keep) if keep else "")


def _splits(spec: DataSpec, text: str) -> tuple:
    source = _source(spec, text)
    base = DataRef(text, None if "split" in spec.options else "base")   # the training data as given
    return base, DataRef(source, "val"), DataRef(source, "novel")


MINIMAL_VAL_GROUPS = ("Japanese_(katakana)", "Sanskrit")
MINIMAL_NOVEL_GROUPS = ("Japanese_(katakana)", "Sanskrit", "Tagalog")


def _set_name(path: str) -> str:
    name = os.path.basename(path.rstrip("/\\"))
    return name[:-4] if name.endswith(".zip") else name


def _sibling(path: str, old: str, new: str) -> str:
    """The set ``new`` beside the set ``old`` at ``path`` (a zip stays a zip), in the same form."""
    name = os.path.basename(path.rstrip("/\\"))
    return os.path.join(os.path.dirname(path.rstrip("/\\")), name.replace(old, new, 1))


def _minimal(spec: DataSpec, text: str) -> tuple:
    def small2(groups: Sequence[str]) -> DataRef:
        if "set" in spec.options:   # a root holding both minimal sets
            return DataRef(f"omniglot:{spec.paths[0]}?set=small2&groups={','.join(groups)}")
        path = _sibling(spec.paths[0], "images_background_small1", "images_background_small2")
        return DataRef(f"omniglot:{path}?groups={','.join(groups)}")

    return DataRef(text), small2(MINIMAL_VAL_GROUPS), small2(MINIMAL_NOVEL_GROUPS)


def _omniglot(spec: DataSpec, text: str) -> tuple:
    novel = None
    if spec.options.get("set") == "background":
        novel = DataRef(f"omniglot:{spec.paths[0]}?set=evaluation")
    elif len(spec.paths) == 1 and _set_name(spec.paths[0]) == "images_background":
        novel = DataRef(f"omniglot:{_sibling(spec.paths[0], 'images_background', 'images_evaluation')}")
    return DataRef(text), None, novel


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("glyphs", "glyphs", "built-in glyph set: alphabets 0-19 base, 20-23 val, 24-29 novel",
             _splits, val_episodes=EpisodeProtocol(5, (1, 5), 15, 500),
             test_episodes=EpisodeProtocol(5, (1, 5), 15, 2000), one_source=True),
    Protocol("omniglot-minimal", "omniglot",
             "Omniglot small1 to train on; 20-way 1-shot within-alphabet validation on small2's "
             "Japanese (katakana) and Sanskrit; novel: small2's alphabets small1 lacks (with Tagalog)",
             _minimal, val_episodes=EpisodeProtocol(20, (1,), 5, 600, within_group=True),
             test_episodes=EpisodeProtocol(5, (1, 5), 15, 600), default_set="small1"),
    Protocol("omniglot", "omniglot", "Omniglot background set to train on, evaluation set as novel classes",
             _omniglot, test_episodes=EpisodeProtocol(20, (1, 5), 5, 1000), default_set="background"),
    Protocol("omniglot-runs", "omniglot-runs", "the 20 fixed 20-way 1-shot one-shot challenge runs",
             lambda spec, text: (None, None, DataRef(text)), test_episodes=EpisodeProtocol(20, (1,), 1, 20)),
    Protocol("miniimagenet", "miniimagenet",
             "miniImageNet, Ravi & Larochelle split: 64 base, 16 val, 20 novel",
             _splits, val_episodes=EpisodeProtocol(5, (1, 5), 15, 600),
             test_episodes=EpisodeProtocol(5, (1, 5), 15, 2000), one_source=True),
    Protocol("folder", "folder", "an image folder: the classes to train on",
             lambda spec, text: (DataRef(text), None, None)),
    Protocol("digits", "digits", "scikit-learn's 8x8 digits, a cross-domain novel set",
             lambda spec, text: (None, None, DataRef(text))),
)}


def get_protocol(name: str) -> Protocol:
    """The protocol named ``name``; DatasetError listing the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise DatasetError(f"unknown protocol {name!r}; known protocols: {', '.join(PROTOCOLS)}") from None


def protocol_for(spec: str) -> Benchmark:
    """The benchmark a data spec belongs to, with its sets found from the spec.

    Omniglot: a path named ``images_background_small1`` (zip or folder) or ``?set=small1`` is
    ``omniglot-minimal``; anything else is ``omniglot``. Every other kind has one protocol.
    """
    parsed = parse_spec(spec)
    name = parsed.kind
    if parsed.kind == "omniglot":
        minimal = parsed.options.get("set") == "small1" or (
            len(parsed.paths) == 1 and _set_name(parsed.paths[0]) == "images_background_small1")
        name = "omniglot-minimal" if minimal else "omniglot"
    return PROTOCOLS[name].resolve(spec)


def training_split(spec: str, split: str | None = None) -> str | None:
    """The split to train on: ``split`` when given or named in the spec, else ``base`` where the
    benchmark's sets are splits of one source (a whole miniImageNet root would put the val classes
    in training)."""
    if split is not None or "split" in parse_spec(spec).options:
        return split
    return "base" if protocol_for(spec).protocol.one_source else None


def default_validation(spec: str, split: str | None) -> DataRef | None:
    """The validation set a run takes when neither the caller nor the recipe names one: the val
    split of a source whose sets are splits of one source, when training on its ``base`` split;
    else None (base classes are held out)."""
    bench = protocol_for(spec)
    return bench.val if bench.protocol.one_source and split == "base" else None


def _absolute(spec: str) -> str:
    """``spec`` with its paths made absolute (a run's configuration then names them from anywhere)."""
    parsed = parse_spec(spec)
    if not parsed.paths:
        return spec
    body, sep, query = spec.strip().partition("?")
    paths = "+".join(os.path.abspath(p) for p in parsed.paths)
    return f"{body.split(':', 1)[0]}:{paths}{sep}{query}"


def validation_spec(val: str | None, data: str) -> str | None:
    """The validation set a training run names: ``val`` itself, or for ``val = "protocol"`` the val
    set of ``data``'s protocol as one spec string with absolute paths; DatasetError when that
    protocol has no val set."""
    if val != PROTOCOL_VAL:
        return val
    bench = protocol_for(_absolute(data))
    return bench.set("val").joined()


def validation_settings(val: str | None, data: str | None) -> dict:
    """The ``val_*`` settings of ``data``'s protocol when a run validates on it (``val = "protocol"``),
    else nothing: a recipe's or the caller's own settings then stand."""
    if val != PROTOCOL_VAL or not data:
        return {}
    try:
        protocol = protocol_for(data).protocol
    except DatasetError:
        return {}
    return protocol.val_episodes.val_settings() if protocol.val_episodes else {}
