"""Ablation grids: factors and their levels, seeds, evaluation sets; parsed from TOML or a dict.

A grid crosses *training factors* (``mode``, ``loss``, ``miner``, ``weights`` = (w_metric, w_ce),
``m``, ``embedding_dim``, ``encoder``, ``episodic_head``, ``epochs``, ``lr``, ``batch_size``,
``checkpoint``) with *evaluation factors* (``head``, ``shot``, ``transform``), over several seeds.
:meth:`Grid.cells` lists the distinct training cells; every evaluation factor is scored from each
cell's checkpoint (:mod:`fewshot.experiments.ablate` runs them). An evaluation set without a
``data`` spec is the set of that role (``split``: base, val or novel) of the training data's
benchmark protocol (:mod:`episodes.protocols`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from episodes.errors import DatasetError
from episodes.protocols import protocol_for
from fewshot.errors import FewShotError
from fewshot.evaluation.features import TRANSFORMS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["FACTORS", "TRAIN_FACTORS", "EVAL_FACTORS", "EvalSet", "Grid", "TrainCell", "load_grid",
           "grid_from_dict", "read_grid_file", "format_level"]

TRAIN_FACTORS: dict[str, str] = {
    "mode": "training mode: 'metric' (PML loss, fewshot.training.trainer) or 'episodic' "
            "(fewshot.training.episodic)",
    "loss": "metric loss (circle, contrastive, triplet, multisimilarity, ...)",
    "miner": "miner (multisimilarity, triplet-semihard, batch-hard, none)",
    "weights": "[w_metric, w_ce]: weights of the metric loss and the joint cross-entropy",
    "m": "images per class in a batch (M-per-class sampler)",
    "embedding_dim": "projection size of the embedding (0 or none: the backbone's)",
    "encoder": "encoder name (conv4, resnet12, resnet18, ...)",
    "episodic_head": "head used as a layer in episodic training (proto = ProtoNet, ls = R2-D2)",
    "epochs": "training epochs",
    "lr": "learning rate",
    "batch_size": "batch size (metric mode)",
    "checkpoint": "an already trained encoder checkpoint (scored, not trained): e.g. one per source domain",
}
EVAL_FACTORS: dict[str, str] = {
    "head": "few-shot head (proto, nn, ls, ls-mlp, logreg, or 'name:key=value')",
    "shot": "support images per class",
    "transform": f"feature transform before the head (default = the checkpoint's, {', '.join(TRANSFORMS)})",
}
FACTORS = {**TRAIN_FACTORS, **EVAL_FACTORS}
METRIC_ONLY = ("loss", "miner", "weights", "m", "batch_size")
EPISODIC_ONLY = ("episodic_head",)
MODES = ("metric", "episodic")

@dataclass
class EvalSet:
    """Novel classes to score on: a data spec and split, optionally within-group episodes.

    Without ``data`` the set is the training data's benchmark set of the role ``split`` (default
    ``novel``), filled in by :class:`Grid`.
    """

    name: str
    data: str | None = None
    split: str | None = None
    within_group: bool = False


@dataclass
class Grid:
    """A whole ablation: data, fixed settings, factors and their levels, seeds, evaluation sets."""

    name: str
    data: str = "glyphs"
    split: str | None = "base"
    recipe: str | None = None
    factors: dict[str, list] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eval_sets: list[EvalSet] = field(default_factory=list)
    train: dict = field(default_factory=dict)       # fixed TrainConfig overrides (metric mode)
    episodic: dict = field(default_factory=dict)    # fixed EpisodicConfig overrides
    way: int = 5
    query: int = 15
    episodes: int = 600
    episode_seed: int = 0
    description: str = ""
    device: str | None = None

    def __post_init__(self) -> None:
        if not self.eval_sets:
            self.eval_sets = [EvalSet("novel")]
        for es in self.eval_sets:
            if es.data is None:   # a set of the training data's benchmark protocol
                try:
                    ref = protocol_for(self.data).set(es.split or "novel")
                except DatasetError as exc:
                    raise FewShotError(f"evaluation set {es.name!r}: {exc}") from None
                es.data, es.split = ref.spec, ref.split
        names = [s.name for s in self.eval_sets]
        if len(set(names)) != len(names):
            raise FewShotError(f"evaluation set names must be distinct, got {names}")
        for key in ("way", "query", "episodes"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise FewShotError(f"{key} must be a positive integer, got {value!r}")
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise FewShotError(f"seeds must be a non-empty list of integers, got {self.seeds!r}")
        self.factors = {k: _levels(k, v) for k, v in self.factors.items()}
        self.factors.setdefault("mode", ["metric"])
        self.factors.setdefault("head", ["proto"])
        self.factors.setdefault("shot", [1, 5])
        self.factors.setdefault("transform", ["default"])
        for mode in self.factors["mode"]:
            if mode not in MODES:
                raise FewShotError(f"unknown training mode {mode!r}; valid: {', '.join(MODES)}")
        if "checkpoint" in self.factors:
            trained = [k for k, v in self.train_factors.items() if k not in ("checkpoint", "mode")]
            if trained or self.factors["mode"] != ["metric"] or len(self.seeds) != 1:
                raise FewShotError("checkpoint cells are scored, not trained: give no other training factor "
                                   f"(got {', '.join(trained) or 'mode'}) and one seed (got {self.seeds})")

    @property
    def train_factors(self) -> dict[str, list]:
        return {k: v for k, v in self.factors.items() if k in TRAIN_FACTORS}

    @property
    def varying(self) -> list[str]:
        """Factors with more than one level (the ones the summary compares)."""
        return [k for k, v in self.factors.items() if len(v) > 1]

    def to_dict(self) -> dict:
        return asdict(self)

    def cells(self) -> list[TrainCell]:
        """Distinct training cells (metric-only factors collapse for episodic cells and vice versa)."""
        keys = list(self.train_factors)
        seen: dict[str, TrainCell] = {}
        for values in itertools.product(*(self.train_factors[k] for k in keys)):
            factors = dict(zip(keys, values))
            if factors["mode"] == "episodic":
                factors = {k: v for k, v in factors.items() if k not in METRIC_ONLY}
            else:
                factors = {k: v for k, v in factors.items() if k not in EPISODIC_ONLY}
            cell = TrainCell(factors, _cell_id(self, factors))
            seen.setdefault(cell.id, cell)
        return list(seen.values())

    def eval_points(self) -> list[dict]:
        """Every (transform, head, shot) scored from each checkpoint."""
        return [{"transform": t, "head": h, "shot": s} for t in self.factors["transform"]
                for h in self.factors["head"] for s in self.factors["shot"]]


@dataclass
class TrainCell:
    """One training configuration (factor values) and its stable id (hash of everything it depends on)."""

    factors: dict
    id: str

    def label(self) -> str:
        return ", ".join(f"{k}={format_level(v)}" for k, v in self.factors.items()) or "default"


def format_level(value) -> str:
    """A factor level as a table shows it: ``0.1/1``, ``circle``, ``5``."""
    if isinstance(value, (list, tuple)):
        return "/".join(format_level(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _levels(name: str, value) -> list:
    if name not in FACTORS:
        raise FewShotError(f"unknown factor {name!r}; known factors: {', '.join(FACTORS)}")
    levels = list(value) if isinstance(value, (list, tuple)) else [value]
    if name == "weights" and levels and not isinstance(levels[0], (list, tuple)):
        levels = [levels]  # a single pair
    if not levels:
        raise FewShotError(f"factor {name!r} has no levels")
    out = []
    for v in levels:
        if name == "weights":
            if not (isinstance(v, (list, tuple)) and len(v) == 2
                    and all(isinstance(x, (int, float)) and x >= 0 for x in v) and sum(v) > 0):
                raise FewShotError(f"each 'weights' level must be [w_metric, w_ce] (>= 0, not both 0), "
                                   f"got {v!r}")
            v = [float(v[0]), float(v[1])]
        elif name in ("shot", "m", "epochs", "batch_size"):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise FewShotError(f"levels of {name!r} must be positive integers, got {v!r}")
        elif name == "embedding_dim":
            if v in (0, "none", None):
                v = None
            elif not isinstance(v, int) or v < 1:
                raise FewShotError(f"levels of 'embedding_dim' must be positive integers or 'none', "
                                   f"got {v!r}")
        elif name == "lr":
            if not isinstance(v, (int, float)) or v <= 0:
                raise FewShotError(f"levels of 'lr' must be positive numbers, got {v!r}")
            v = float(v)
        elif name == "checkpoint":
            if not isinstance(v, str) or not os.path.isfile(v):
                raise FewShotError(f"checkpoint level {v!r} is not a file")
        elif name == "transform":
            if v != "default" and v not in TRANSFORMS:
                raise FewShotError(f"unknown transform {v!r}; valid: default (the checkpoint's), "
                                   f"{', '.join(TRANSFORMS)}")
        elif not isinstance(v, str):
            raise FewShotError(f"levels of {name!r} must be names, got {v!r}")
        if v in out:
            raise FewShotError(f"factor {name!r} lists level {v!r} twice")
        out.append(v)
    return out


def _cell_id(grid: Grid, factors: dict) -> str:
    if "checkpoint" in factors:  # the trained weights themselves, wherever the file lives
        from fewshot.models.checkpoint import load_checkpoint
        doc: dict = {"checkpoint": load_checkpoint(factors["checkpoint"]).get("hash")}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]
    doc = {"data": grid.data, "split": grid.split, "recipe": grid.recipe, "factors": factors,
           "fixed": grid.episodic if factors.get("mode") == "episodic" else grid.train}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]


GRID_KEYS = {"name", "description", "data", "split", "recipe", "seeds", "grid", "train", "episodic",
             "eval", "device"}
EVAL_KEYS = {"way", "query", "episodes", "seed", "sets"}


def grid_from_dict(doc: dict, *, source: str | None = None) -> Grid:
    """A :class:`Grid` from the TOML document layout (see ``benchmarks/ablations/*.toml``)."""
    where = source or None
    unknown = sorted(set(doc) - GRID_KEYS)
    if unknown:
        raise FewShotError(f"unknown grid keys {unknown}; known: {', '.join(sorted(GRID_KEYS))}", where)
    ev = doc.get("eval", {})
    if not isinstance(ev, dict):
        raise FewShotError("[eval] must be a table", where)
    unknown = sorted(set(ev) - EVAL_KEYS)
    if unknown:
        raise FewShotError(f"unknown [eval] keys {unknown}; known: {', '.join(sorted(EVAL_KEYS))}", where)
    sets = []
    for i, s in enumerate(ev.get("sets", [])):
        if not isinstance(s, dict):
            raise FewShotError(f"[[eval.sets]] entry {i + 1} must be a table", where)
        bad = sorted(set(s) - {"name", "data", "split", "within_group"})
        if bad:
            raise FewShotError(f"unknown [[eval.sets]] keys {bad}", where)
        sets.append(EvalSet(s.get("name", f"set{i + 1}"), s.get("data"), s.get("split"),
                            bool(s.get("within_group", False))))
    factors = doc.get("grid", {})
    if not isinstance(factors, dict):
        raise FewShotError("[grid] must be a table of factor = [levels]", where)
    seeds = doc.get("seeds", [0, 1, 2])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(seeds))
    try:
        return Grid(
            name=str(doc.get("name") or (Path(source).stem if source else "ablation")),
            description=str(doc.get("description", "")),
            data=str(doc.get("data", "glyphs")),
            split=doc.get("split", "base"),
            recipe=doc["recipe"] if "recipe" in doc else _default_recipe(str(doc.get("data", "glyphs"))),
            factors=dict(factors),
            seeds=list(seeds),
            eval_sets=sets,
            train=dict(doc.get("train", {})),
            episodic=dict(doc.get("episodic", {})),
            way=ev.get("way", 5), query=ev.get("query", 15), episodes=ev.get("episodes", 600),
            episode_seed=ev.get("seed", 0),
            device=doc.get("device"),
        )
    except FewShotError as exc:
        if where and exc.path is None:
            raise FewShotError(exc.cause, where) from None
        raise


def _default_recipe(spec: str) -> str | None:
    """The recipe named after the data kind (``glyphs``, ``omniglot``, ...), as compare chooses it."""
    from fewshot.training.config import RECIPES

    kind = spec.split(":", 1)[0].split("?", 1)[0].lower()
    return kind if kind in RECIPES else None


def read_grid_file(path: str | os.PathLike) -> dict:
    """The TOML document of a grid file; FewShotError naming the file if missing or malformed."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FewShotError("no such grid file", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FewShotError(f"cannot read grid file ({exc})", path) from None
    except tomllib.TOMLDecodeError as exc:
        raise FewShotError(f"not valid TOML ({exc})", path) from None


def load_grid(path: str | os.PathLike) -> Grid:
    """Read a grid TOML file; FewShotError naming the file for a missing, malformed or unknown entry."""
    return grid_from_dict(read_grid_file(path), source=os.fspath(path))

