"""Ablation grids: train once per training cell and seed, score every head on the same episodes.

A grid (a TOML file or command-line flags, see :func:`load_grid`) crosses *training factors*
(``mode``, ``loss``, ``miner``, ``weights`` = (w_metric, w_ce), ``m``, ``embedding_dim``,
``encoder``, ``episodic_head``, ``epochs``, ``lr``, ``batch_size``) with *evaluation factors*
(``head``, ``shot``, ``transform``), over several seeds. Each training cell is trained once per
seed by :func:`fewshot.training.trainer.train` (the metric objective, or ProtoNet / R2-D2 on episodes:
:class:`fewshot.training.episodic.EpisodicConfig`); every evaluation factor is then scored from that one
checkpoint, on fixed episodes: one manifest per evaluation set, saved in the output folder, so
every cell of every seed sees the very same episodes and differences can be paired by seed and
episode.

Resumable: ``results.json`` is rewritten atomically after each (training cell, seed); a rerun
skips what it holds, so a killed run loses at most the cell in flight. ``summary.md`` holds the
mean ± 95% CI across seeds per cell, the paired verdict for every two cells that differ in one
factor, and the plots (accuracy vs shot per head; a bar chart per factor).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from episodes.atomic import atomic_write_text, read_json
from fewshot.errors import FewShotError
from fewshot.progress import progress as progress_bar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["FACTORS", "TRAIN_FACTORS", "EVAL_FACTORS", "EvalSet", "Grid", "TrainCell", "load_grid",
           "grid_from_dict", "run_ablation", "summarize", "write_summary", "load_results"]

FORMAT = "fewshot-ablation/1"

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
    "transform": "feature transform before the head (default = the checkpoint's, none, l2, cl2n)",
}
FACTORS = {**TRAIN_FACTORS, **EVAL_FACTORS}
METRIC_ONLY = ("loss", "miner", "weights", "m", "batch_size")
EPISODIC_ONLY = ("episodic_head",)
MODES = ("metric", "episodic")


# ====================================================================== grid
@dataclass
class EvalSet:
    """Novel classes to score on: a data spec and split, optionally within-group episodes."""

    name: str
    data: str
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
    train: dict = field(default_factory=dict)       # fixed TRAIN config overrides (metric mode)
    episodic: dict = field(default_factory=dict)    # fixed EpisodicConfig overrides
    way: int = 5
    query: int = 15
    episodes: int = 600
    episode_seed: int = 0
    description: str = ""
    device: str | None = None

    def __post_init__(self) -> None:
        if not self.eval_sets:
            self.eval_sets = [EvalSet("novel", self.data, "novel")]
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
        return ", ".join(f"{k}={_fmt(v)}" for k, v in self.factors.items()) or "default"


def _fmt(value) -> str:
    if isinstance(value, (list, tuple)):
        return "/".join(_fmt(v) for v in value)
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
            if v not in ("default", "none", "l2", "cl2n"):
                raise FewShotError(f"unknown transform {v!r}; valid: default (the checkpoint's), "
                                   "none, l2, cl2n")
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
        if not isinstance(s, dict) or "data" not in s:
            raise FewShotError(f"[[eval.sets]] entry {i + 1} needs a 'data' spec", where)
        bad = sorted(set(s) - {"name", "data", "split", "within_group"})
        if bad:
            raise FewShotError(f"unknown [[eval.sets]] keys {bad}", where)
        sets.append(EvalSet(s.get("name", f"set{i + 1}"), s["data"], s.get("split"),
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
    """TRAIN's recipe named after the data kind (``glyphs``, ``omniglot``, ...), as compare does."""
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


# ============================================================ results file
def _eval_signature(grid: Grid) -> dict:
    return {"way": grid.way, "query": grid.query, "episodes": grid.episodes, "seed": grid.episode_seed,
            "sets": [asdict(s) for s in grid.eval_sets]}


def load_results(out_dir: str | os.PathLike) -> dict:
    """The results document of an ablation folder (empty when there is none yet)."""
    path = Path(out_dir) / "results.json"
    if not path.exists():
        return {"format": FORMAT, "runs": {}}
    doc = read_json(path, missing="no such ablation results file", unreadable="unreadable ablation results",
                    error=FewShotError)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise FewShotError(f"not a fewshot ablation results file (expected format {FORMAT!r})", path)
    return doc


# ============================================================ train & score
def load_grid_data(grid: Grid):
    """Training set and evaluation sets of a grid (each loaded once, through DATA's ``load_data``)."""
    from episodes import load_data

    fixed = {**load_recipe_safe(grid.recipe), **grid.train}
    train_data = None if "checkpoint" in grid.factors else load_data(
        grid.data, grid.split, image_size=fixed.get("image_size"), channels=fixed.get("channels"))
    sets = {s.name: load_data(s.data, s.split) for s in grid.eval_sets}
    return train_data, sets


def metric_config(grid: Grid, factors: dict, seed: int):
    """TRAIN's ``TrainConfig`` for a metric cell: recipe, then fixed ``[train]`` settings, then factors."""
    from fewshot.training.config import TrainConfig, load_recipe

    cfg = dict(load_recipe(grid.recipe)) if grid.recipe else {}
    cfg.update(grid.train)
    for key, value in factors.items():
        if key == "mode":
            continue
        if key == "weights":
            cfg["w_metric"], cfg["w_ce"] = value
        else:
            cfg[key] = value
    cfg["seed"] = seed
    if grid.device:
        cfg["device"] = grid.device
    return TrainConfig.from_dict(cfg)


def episodic_config(grid: Grid, factors: dict, seed: int):
    """The ``TrainConfig`` of an episodic cell (:class:`EpisodicConfig`): the recipe's encoder settings,
    ``[episodic]``, factors."""
    from fewshot.training.episodic import EpisodicConfig

    cfg: dict = {}
    base = dict(load_recipe_safe(grid.recipe))
    base.update(grid.train)
    for key in ("encoder", "embedding_dim", "image_size", "channels"):  # same network and input
        if key in base and key in EpisodicConfig.__dataclass_fields__:
            cfg[key] = base[key]
    if isinstance(base.get("augment"), dict):
        cfg["augment"] = base["augment"]
    cfg.update(grid.episodic)
    for key, value in factors.items():
        if key == "mode":
            continue
        cfg["head" if key == "episodic_head" else key] = value
    cfg["seed"] = seed
    if grid.device:
        cfg["device"] = grid.device
    return EpisodicConfig.from_dict(cfg).train_config()


def load_recipe_safe(name: str | None) -> dict:
    if not name:
        return {}
    from fewshot.training.config import load_recipe

    return load_recipe(name)


def validate_grid(grid: Grid) -> None:
    """Build every cell's training settings (every seed shares them) and every head of the grid,
    so a bad key or value anywhere fails in one line before the first cell trains, not after."""
    from fewshot.heads import get_head
    from fewshot.training.config import check_config

    for cell in grid.cells():
        if "checkpoint" in cell.factors:  # a trained encoder scored as it is: nothing to build
            continue
        try:
            if cell.factors.get("mode", "metric") == "episodic":
                episodic_config(grid, cell.factors, grid.seeds[0])
            else:
                check_config(metric_config(grid, cell.factors, grid.seeds[0]), world=1)
        except FewShotError as exc:
            raise FewShotError(f"grid cell {cell.label()}: {exc.cause}", exc.path) from None
    for head in grid.factors["head"]:
        get_head(head)


def train_cell(grid: Grid, cell: TrainCell, seed: int, data, out_dir: Path, *, progress: bool = True) -> Path:
    """Train one cell for one seed; returns the checkpoint to score (``best.pt``, or the cell's own)."""
    if "checkpoint" in cell.factors:
        return Path(cell.factors["checkpoint"]).resolve()
    from fewshot.training.trainer import train

    if cell.factors.get("mode", "metric") == "episodic":
        cfg = episodic_config(grid, cell.factors, seed)
    else:
        cfg = metric_config(grid, cell.factors, seed)
    result = train(cfg, data, None, out_dir, progress=progress)
    from fewshot.training.curves import CURVES_FILE, plot_curves

    plot_curves(result.metrics, out_dir / CURVES_FILE, title=f"{grid.name}: {cell.label()}, seed {seed}")
    return Path(result.best_path)


def score_checkpoint(checkpoint: Path, grid: Grid, sets: dict, manifests: dict, *,
                     progress: bool = True) -> list[dict]:
    """Every evaluation point of the grid on every evaluation set: one record each, per-episode."""
    from fewshot.evaluation.evaluate import evaluate

    records = []
    heads = grid.factors["head"]
    shots = tuple(grid.factors["shot"])
    for es in grid.eval_sets:
        for transform in grid.factors["transform"]:
            result = evaluate(checkpoint, sets[es.name], heads=heads, way=grid.way, shots=shots,
                              query=grid.query, episodes=grid.episodes, seed=grid.episode_seed,
                              transform=None if transform == "default" else transform,
                              within_group=es.within_group,
                              episodes_file=[manifests[es.name][k] for k in shots], progress=progress)
            for head in heads:
                for shot in shots:
                    acc = np.asarray(result.accuracy[(_head_key(head, result), shot)], dtype=np.float64)
                    nq = grid.way * grid.query
                    records.append({"set": es.name, "transform": transform, "head": head, "shot": shot,
                                    "accuracy": float(acc.mean()), "queries": nq,
                                    "correct": np.rint(acc * nq).astype(int).tolist()})
    return records


def _head_key(head: str, result) -> str:
    keys = {k[0] for k in result.accuracy}
    if head in keys:
        return head
    base = head.partition(":")[0]
    return base if base in keys else head


def prepare_manifests(grid: Grid, sets: dict, out_dir: Path) -> dict:
    """The fixed episodes of every evaluation set, saved once as manifests and reused on resume.

    One draw per evaluation set at the largest shot; the episodes of a smaller shot keep the same
    classes and queries and the first ``k`` support images (nested episodes), so shots are paired
    too. Saved as ``episodes/<set>-<k>shot.json`` (EVAL's ``evaluate`` takes one manifest per shot).
    Returns ``{set name: {shot: path}}``.
    """
    from episodes import Episodes, EpisodeSpec, load_manifest, sample_episodes, save_manifest

    paths: dict = {}
    shots = sorted(grid.factors["shot"])
    spec = EpisodeSpec(grid.way, shots[-1], grid.query)
    for es in grid.eval_sets:
        data = sets[es.name]
        files = {k: out_dir / "episodes" / f"{es.name}-{k}shot.json" for k in shots}
        if all(f.exists() for f in files.values()):
            for f in files.values():
                load_manifest(f, data)  # refuses a manifest drawn from other data
        else:
            eps = sample_episodes(data, spec, grid.episodes, seed=grid.episode_seed,
                                  within_group=es.within_group)
            for k, f in files.items():
                nested = Episodes(eps.support[:, :, :k].contiguous(), eps.query, eps.classes,
                                  EpisodeSpec(grid.way, k, grid.query), eps.seed, eps.within_group)
                save_manifest(f, nested, data)
        paths[es.name] = files
    return paths


# ===================================================================== run
@dataclass
class AblationResult:
    out_dir: Path
    results: dict
    summary: dict
    trained: int = 0
    skipped: int = 0


def run_ablation(grid: Grid, out_dir: str | os.PathLike, *, progress: bool = True,
                 on_cell_done: Callable[[TrainCell, int, list[dict]], None] | None = None,
                 command: str | None = None) -> AblationResult:
    """Run (or resume) ``grid`` in ``out_dir``: train each missing (cell, seed), score, record, summarise."""
    validate_grid(grid)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = load_results(out)
    signature = _eval_signature(grid)
    if doc.get("eval") and doc["eval"] != signature:
        raise FewShotError("holds results scored on other episodes (way/query/episodes/seed/sets differ); "
                           "use another --out folder", out / "results.json")
    doc["eval"] = signature
    doc["grid"] = grid.to_dict()
    if command:
        doc["command"] = command
    cells = grid.cells()
    todo = [(c, s) for c in cells for s in grid.seeds if f"{c.id}/seed{s}" not in doc["runs"]]
    n_total = len(cells) * len(grid.seeds)
    train_data = sets = manifests = None
    trained = 0
    bar = progress_bar(total=n_total, initial=n_total - len(todo), desc=f"ablate {grid.name}", unit="cell",
                       leave=True, disable=not progress, every=0)   # in a log: one line per cell
    for cell, seed in todo:
        if sets is None:
            train_data, sets = load_grid_data(grid)
            manifests = prepare_manifests(grid, sets, out)
        key = f"{cell.id}/seed{seed}"
        bar.set_postfix_str(f"{cell.label()} seed={seed}"[:80])
        run_dir = out / "cells" / cell.id / f"seed{seed}"
        done_marker = run_dir / "trained.json"
        t0 = time.perf_counter()
        if done_marker.exists():  # trained before a kill during scoring: reuse the checkpoint
            saved = Path(json.loads(done_marker.read_text())["checkpoint"])
            checkpoint = run_dir / saved if (run_dir / saved).exists() else saved
        else:
            checkpoint = train_cell(grid, cell, seed, train_data, run_dir, progress=progress)
            atomic_write_text(done_marker, json.dumps({"checkpoint": os.path.relpath(checkpoint, run_dir)}))
            trained += 1
        t1 = time.perf_counter()
        records = score_checkpoint(checkpoint, grid, sets, manifests, progress=progress)
        t2 = time.perf_counter()
        doc["runs"][key] = {"cell": cell.id, "factors": cell.factors, "seed": seed,
                            "checkpoint": os.path.relpath(checkpoint, out),
                            "train_seconds": round(t1 - t0, 2), "eval_seconds": round(t2 - t1, 2),
                            "records": records}
        atomic_write_text(out / "results.json", json.dumps(doc, indent=None, separators=(",", ":")))
        bar.update(1)
        if on_cell_done is not None:
            on_cell_done(cell, seed, records)
    bar.close()
    if not todo:
        atomic_write_text(out / "results.json", json.dumps(doc, separators=(",", ":")))
    summary = summarize(grid, doc)
    write_summary(grid, summary, out, command=command)
    return AblationResult(out, doc, summary, trained, n_total - len(todo))


# ================================================================= summary
def _collect(grid: Grid, doc: dict) -> dict:
    """``{(cell_id, set, transform, head, shot): {seed: correct/queries [E]}}`` for the grid's cells."""
    ids = {c.id for c in grid.cells()}
    table: dict = {}
    for run in doc["runs"].values():
        if run["cell"] not in ids or run["seed"] not in grid.seeds:
            continue
        for r in run["records"]:
            if (r["head"] not in grid.factors["head"] or r["shot"] not in grid.factors["shot"]
                    or r["transform"] not in grid.factors["transform"]):
                continue
            key = (run["cell"], r["set"], r["transform"], r["head"], r["shot"])
            table.setdefault(key, {})[run["seed"]] = np.asarray(r["correct"], dtype=np.float64) / r["queries"]
    return table


def _seed_ci(means: np.ndarray) -> float:
    from scipy import stats

    if len(means) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(means) - 1) * means.std(ddof=1) / np.sqrt(len(means)))


def _paired(a: dict, b: dict) -> dict | None:
    """Paired comparison of two cells, pairing by seed and episode (the seeds both have).

    EVAL's :func:`fewshot.evaluation.stats.paired` on all (seed, episode) pairs, plus the per-seed mean
    differences (a verdict also needs every seed to agree in sign).
    """
    from fewshot.evaluation.stats import paired

    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = np.stack([a[s] - b[s] for s in seeds])                       # [seeds, E]
    res = paired(np.concatenate([a[s] for s in seeds]), np.concatenate([b[s] for s in seeds]))
    per_seed = d.mean(1)
    agree = int((np.sign(per_seed) == np.sign(res.diff)).sum()) if res.diff != 0 else 0
    return {"diff": res.diff, "ci95": res.ci95, "p": res.p_value, "p_wilcoxon": res.p_wilcoxon,
            "wins": res.wins, "ties": res.ties, "losses": res.losses, "seeds": len(seeds),
            "seeds_agree": agree, "per_seed": per_seed.tolist()}


def summarize(grid: Grid, doc: dict) -> dict:
    """Per-cell mean ± CI across seeds, and paired verdicts between cells that differ in one factor."""
    from fewshot.evaluation.stats import mean_ci

    table = _collect(grid, doc)
    cells = {c.id: c for c in grid.cells()}
    rows = []
    order = [(c.id, es.name, p["transform"], p["head"], p["shot"]) for c in cells.values()
             for es in grid.eval_sets for p in grid.eval_points()]
    for cid, set_name, transform, head, shot in order:
        by_seed = table.get((cid, set_name, transform, head, shot))
        if not by_seed:
            continue
        means = np.array([v.mean() for _, v in sorted(by_seed.items())])
        pooled = np.concatenate(list(by_seed.values()))
        factors = {**cells[cid].factors, "transform": transform, "head": head, "shot": shot}
        rows.append({"cell": cid, "set": set_name, "factors": factors, "seeds": len(means),
                     "mean": float(means.mean()), "ci95_seeds": _seed_ci(means),
                     "ci95_episodes": mean_ci(pooled)[1],
                     "per_seed": means.tolist()})
    # paired verdicts: every two rows on the same set that differ in exactly one varying factor
    by_key: dict = {}
    for row in rows:
        by_key[(row["set"], json.dumps(row["factors"], sort_keys=True, default=str))] = row
    comparisons = []
    factor_names = [f for f in grid.varying if f != "shot"]   # more shots winning is no finding
    for i, ra in enumerate(rows):
        for rb in rows[i + 1:]:
            if ra["set"] != rb["set"]:
                continue
            fa_, fb_ = ra["factors"], rb["factors"]
            diff = [k for k in set(fa_) & set(fb_) if fa_[k] != fb_[k]]
            one_sided = set(fa_) ^ set(fb_)   # factors of one training mode only (loss, episodic_head, ...)
            if len(diff) != 1 or diff[0] not in factor_names or (one_sided and diff[0] != "mode"):
                continue
            fa = table[(ra["cell"], ra["set"], ra["factors"]["transform"], ra["factors"]["head"],
                        ra["factors"]["shot"])]
            fb = table[(rb["cell"], rb["set"], rb["factors"]["transform"], rb["factors"]["head"],
                        rb["factors"]["shot"])]
            res = _paired(fa, fb)
            if res is None:
                continue
            factor = diff[0]
            same = {k: v for k, v in {**fb_, **fa_}.items() if k != factor and k in grid.varying}
            comparisons.append({"set": ra["set"], "factor": factor, "a": ra["factors"].get(factor),
                                "b": rb["factors"].get(factor), "context": same, **res})
    rank = {f: i for i, f in enumerate(FACTORS)}
    level = {(f, json.dumps(v, default=str)): i for f, vs in grid.factors.items() for i, v in enumerate(vs)}
    set_rank = {s.name: i for i, s in enumerate(grid.eval_sets)}

    def order(c: dict) -> tuple:   # grid order: factor, set, then the levels of the other factors
        ctx = [level.get((k, json.dumps(v, default=str)), 0) for k, v in sorted(c["context"].items())]
        return rank[c["factor"]], set_rank.get(c["set"], 0), ctx

    comparisons.sort(key=order)
    _adjust(comparisons)
    return {"rows": rows, "comparisons": comparisons, "varying": factor_names}


def _adjust(comparisons: list[dict]) -> None:
    """Holm-adjusted p-values over all comparisons of the summary (one family), then the verdict."""
    from fewshot.evaluation.stats import holm

    if not comparisons:
        return
    for c, pa in zip(comparisons, holm([c["p"] for c in comparisons])):
        c["p_holm"] = float(pa)
        winner, loser = (c["a"], c["b"]) if c["diff"] > 0 else (c["b"], c["a"])
        significant = bool(np.isfinite(pa) and pa < 0.05 and c["diff"] != 0)
        if significant and c["seeds_agree"] == c["seeds"]:
            c["verdict"] = f"{_fmt(winner)} > {_fmt(loser)}"
        elif significant:
            c["verdict"] = (f"{_fmt(winner)} > {_fmt(loser)} on pooled episodes, "
                            f"but only {c['seeds_agree']}/{c['seeds']} seeds agree")
        else:
            c["verdict"] = "no significant difference"


def _p(p: float) -> str:
    return "n/a" if p != p else ("< 1e-6" if p < 1e-6 else f"{p:.2g}")


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.2f}"


def format_table(grid: Grid, summary: dict, markdown: bool = True) -> str:
    """The per-cell table (one row per cell and evaluation set), mean ± 95% CI across seeds."""
    shown = [f for f in FACTORS if f in grid.factors and (len(grid.factors[f]) > 1 or f in ("head", "shot"))]
    head = ["set", *shown, "accuracy %", "± CI (seeds)", "± CI (episodes)", "seeds"]
    lines = []
    for row in summary["rows"]:
        lines.append([row["set"], *(_fmt(row["factors"].get(f, "-")) for f in shown), _pct(row["mean"]),
                      _pct(row["ci95_seeds"]), _pct(row["ci95_episodes"]), str(row["seeds"])])
    return _render(head, lines, markdown)


def format_comparisons(summary: dict, markdown: bool = True) -> str:
    head = ["set", "factor", "A", "B", "where", "A - B (pts)", "± CI", "p (Holm)", "seeds agree", "verdict"]
    lines = []
    for c in summary["comparisons"]:
        where = ", ".join(f"{k}={_fmt(v)}" for k, v in c["context"].items()) or "-"
        lines.append([c["set"], c["factor"], _fmt(c["a"]), _fmt(c["b"]), where, f"{100 * c['diff']:+.2f}",
                      f"{100 * c['ci95']:.2f}", _p(c["p_holm"]), f"{c['seeds_agree']}/{c['seeds']}",
                      c["verdict"]])
    return _render(head, lines, markdown)


def _render(head: list[str], lines: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))]
                     + [fmt.format(*line) for line in lines])


def write_summary(grid: Grid, summary: dict, out_dir: Path, *, command: str | None = None) -> Path:
    """``summary.md`` (tables, verdicts, plots) and ``summary.json`` in ``out_dir``."""
    out = Path(out_dir)
    plots = plot_summary(grid, summary, out / "plots") if summary["rows"] else []
    lines = [f"# Ablation: {grid.name}", ""]
    if grid.description:
        lines += [grid.description, ""]
    if command:
        lines += ["```bash", command, "```", ""]
    n_cells = len(grid.cells())
    trained = (f"{n_cells} trained encoder(s), scored, not trained (weights hash in each cell id)"
               if "checkpoint" in grid.factors else
               f"Training data `{grid.data}` (split {grid.split}), recipe `{grid.recipe or 'default'}`; "
               f"{n_cells} training cell(s) x {len(grid.seeds)} seed(s) {grid.seeds}")
    lines += [f"{trained}; "
              f"{grid.way}-way, {grid.query} queries per class, {grid.episodes} fixed episodes per "
              f"evaluation set (manifests in `episodes/`), seed {grid.episode_seed}.", ""]
    described = [f"`{s.name}` = `{s.data}`" + (f" ({s.split})" if s.split else "")
                 + (" within-group" if s.within_group else "") for s in grid.eval_sets]
    lines += ["Evaluation sets: " + "; ".join(described), ""]
    lines += ["## Accuracy per cell (mean over seeds ± 95% CI)", "", format_table(grid, summary), ""]
    if summary["comparisons"]:
        lines += ["## Paired comparisons (cells that differ in one factor)", "",
                  "Differences are paired by seed and episode; the CI and p-value come from a paired t-test "
                  "over all (seed, episode) pairs (`fewshot.evaluation.stats.paired`), p-values are "
                  "Holm-adjusted over "
                  "this table; a verdict needs adjusted p < 0.05 and every seed agreeing in sign.", "",
                  format_comparisons(summary), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    path = out / "summary.md"
    atomic_write_text(path, "\n".join(lines))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    return path


def plot_summary(grid: Grid, summary: dict, out_dir: Path) -> list[Path]:
    """Accuracy vs shot per head (one panel per evaluation set) and one bar chart per varying factor."""
    from fewshot.figures import pyplot, save_figure, shorten, wrap

    plt = pyplot()

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summary["rows"]
    set_names = [s.name for s in grid.eval_sets if any(r["set"] == s.name for r in rows)]
    paths = []

    def marginal(set_name: str, **where) -> tuple[float, float]:
        chosen = [r for r in rows if r["set"] == set_name
                  and all(r["factors"].get(k) == v for k, v in where.items())]
        if not chosen:
            return float("nan"), float("nan")
        n = len(chosen[0]["per_seed"])
        per_seed = np.array([r["per_seed"] for r in chosen if len(r["per_seed"]) == n])
        means = per_seed.mean(0)
        return float(means.mean()), _seed_ci(means)

    fig, axes = plt.subplots(1, len(set_names), figsize=(max(6.5, 5.5 * len(set_names)), 4.5), squeeze=False,
                             sharey=True)
    shots = sorted(grid.factors["shot"])
    cells = grid.cells()
    # one line per head; per head and training cell when there are a few cells (else their mean)
    per_cell = 1 < len(cells) <= 4
    styles = ["-", "--", ":", "-."]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, set_name in zip(axes[0], set_names):
        for hi, head in enumerate(grid.factors["head"]):
            for ci_, cell in enumerate(cells if per_cell else [None]):
                where = {"head": head} if cell is None else {"head": head, **cell.factors}
                stats = [marginal(set_name, shot=k, **where) for k in shots]
                m = np.array([s[0] for s in stats]) * 100
                ci = np.nan_to_num(np.array([s[1] for s in stats]) * 100)
                factors = cell.factors.items() if cell is not None else ()
                shown = [f"{k}={_fmt(v)}" for k, v in factors if k in grid.varying]
                label = " | ".join([head, ", ".join(shown)]) if shown else head
                ax.errorbar(shots, m, yerr=ci, marker="o", capsize=3, label=label,
                            color=colors[hi % len(colors)], linestyle=styles[ci_ % len(styles)])
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(shots)
        ax.set_xticklabels([str(s) for s in shots])
        ax.set_xlabel("shots")
        ax.set_ylabel(f"{grid.way}-way accuracy (%)")
        ax.set_title(shorten(set_name, 40))
        ax.grid(alpha=0.3)
        ax.set_ylim(top=min(ax.get_ylim()[1], 101))   # a few-seed CI may pass 100%; accuracy cannot
    # one legend for all panels, below them: it never covers a line, however long its labels
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(f"{shorten(grid.name, 80)}\naccuracy vs shot (mean over seeds ± 95% CI)", fontsize=10)
    ncol = 1 if len(labels) <= 2 else min(len(set_names) * 2, 4, -(-len(labels) // 2))
    rows_ = -(-len(labels) // ncol)
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + 0.2 * rows_)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, (0.1 + 0.2 * rows_) / (height + 0.2 * rows_), 1, 1))
    path = out_dir / "accuracy_vs_shot.png"
    save_figure(fig, path, dpi=110)
    paths.append(path)

    for factor in grid.varying:
        if factor in ("shot",):
            continue
        levels = grid.factors[factor]
        groups = [(s, k) for s in set_names for k in shots]
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(groups) * len(levels) / 2 + 2), 4))
        width = 0.8 / len(levels)
        for j, level in enumerate(levels):
            stats = [marginal(s, shot=k, **{factor: level}) for s, k in groups]
            m = np.array([st[0] for st in stats]) * 100
            ci = np.nan_to_num(np.array([st[1] for st in stats]) * 100)
            ax.bar(np.arange(len(groups)) + (j - (len(levels) - 1) / 2) * width, m, width, yerr=ci, capsize=2,
                   label=_fmt(level))
        ax.set_xticks(np.arange(len(groups)))
        ax.set_xticklabels([f"{wrap(s, 14)}\n{k}-shot" for s, k in groups], fontsize=8)
        ax.set_ylabel(f"{grid.way}-way accuracy (%)")
        ax.set_title(f"{shorten(grid.name, 60)}: {factor}\n(mean over the other factors and seeds ± 95% CI)",
                     fontsize=9)
        ax.legend(title=factor, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        lo = np.nanmin([r["mean"] for r in rows]) * 100
        ax.set_ylim(max(0, lo - 10), 100)
        fig.tight_layout()
        path = out_dir / f"factor_{factor}.png"
        save_figure(fig, path, dpi=110)
        paths.append(path)
    return paths
