"""Running an ablation grid: train once per training cell and seed, score every head on the same episodes.

Each training cell of a :class:`~fewshot.experiments.grid.Grid` is trained once per seed by
:func:`fewshot.training.trainer.train` (the metric objective, or ProtoNet / R2-D2 on episodes:
:class:`fewshot.training.episodic.EpisodicConfig`); every evaluation factor is then scored from that
one checkpoint, on fixed episodes: one manifest per evaluation set and shot, saved in the output
folder, so every cell of every seed sees the very same episodes and differences can be paired by
seed and episode.

Resumable: ``results.json`` is rewritten atomically after each (training cell, seed); a rerun
skips what it holds, so a killed run loses at most the cell in flight. ``summary.md`` holds the
mean ± 95% CI across seeds per cell, the paired verdicts and the plots
(:mod:`fewshot.experiments.summary`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from episodes.atomic import atomic_write_text, read_json
from episodes.protocols import EpisodeProtocol, validation_settings
from fewshot.errors import FewShotError
from fewshot.experiments.grid import Grid, TrainCell
from fewshot.experiments.summary import summarize, write_summary
from fewshot.progress import progress as progress_bar

__all__ = ["FORMAT", "AblationResult", "run_ablation", "load_results", "validate_grid", "train_cell",
           "score_checkpoint", "prepare_manifests", "metric_config", "episodic_config"]

FORMAT = "fewshot-ablation/1"


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


def load_grid_data(grid: Grid):
    """Training set and evaluation sets of a grid (each loaded once)."""
    from episodes import load_data
    from fewshot.training.data import read_size

    fixed = {**load_recipe_safe(grid.recipe), **grid.train}
    train_data = None if "checkpoint" in grid.factors else load_data(
        grid.data, grid.split, image_size=read_size(fixed.get("image_size"), fixed.get("frame")),
        channels=fixed.get("channels"))
    sets = {s.name: load_data(s.data, s.split) for s in grid.eval_sets}
    return train_data, sets


def metric_config(grid: Grid, factors: dict, seed: int):
    """The ``TrainConfig`` of a metric cell: recipe (its protocol validation settings for the grid's
    data), then fixed ``[train]`` settings, then factors."""
    from fewshot.training.config import TrainConfig, load_recipe

    cfg = dict(load_recipe(grid.recipe)) if grid.recipe else {}
    cfg = {**validation_settings(cfg.get("val"), grid.data), **cfg}
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
            result = evaluate(checkpoint, sets[es.name], heads=heads,
                              episodes=[manifests[es.name][k] for k in shots],
                              transform=None if transform == "default" else transform, progress=progress)
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


def episode_protocol(grid: Grid, within_group: bool = False) -> EpisodeProtocol:
    """The grid's evaluation episodes: way, every shot of the grid, query, episodes, seed."""
    return EpisodeProtocol(grid.way, tuple(sorted(grid.factors["shot"])), grid.query, grid.episodes,
                           within_group, grid.episode_seed)


def prepare_manifests(grid: Grid, sets: dict, out_dir: Path) -> dict:
    """The fixed episodes of every evaluation set, saved once as manifests and reused on resume.

    One draw per evaluation set at the largest shot; the episodes of a smaller shot keep the same
    classes and queries and the first ``k`` support images (nested episodes,
    :meth:`EpisodeProtocol.sample_nested`), so shots are paired too. Saved as
    ``episodes/<set>-<k>shot.json`` (one manifest per shot). Returns ``{set name: {shot: path}}``.
    """
    from episodes import load_manifest, save_manifest

    paths: dict = {}
    shots = sorted(grid.factors["shot"])
    for es in grid.eval_sets:
        data = sets[es.name]
        files = {k: out_dir / "episodes" / f"{es.name}-{k}shot.json" for k in shots}
        if all(f.exists() for f in files.values()):
            for f in files.values():
                load_manifest(f, data)  # refuses a manifest drawn from other data
        else:
            for eps in episode_protocol(grid, es.within_group).sample_nested(data):
                save_manifest(files[eps.spec.shot], eps, data)
        paths[es.name] = files
    return paths


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
                           "use another output folder", out / "results.json")
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

