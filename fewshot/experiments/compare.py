"""The main job: train an encoder on base classes, then compare heads on novel classes, in one call.

:func:`compare` is ``fewshot train`` followed by ``fewshot eval`` with one configuration and one
report folder: it loads the data (:func:`episodes.load_data`; the val and novel sets default to
those of the data's benchmark protocol, :mod:`episodes.protocols`), trains with
:func:`fewshot.training.trainer.train` under a recipe (the built-in glyph set and its ``glyphs``
recipe by default, so it runs anywhere without a download), draws the evaluation episodes once and
saves them as manifests, scores every head on them (:func:`fewshot.evaluation.evaluate.evaluate`),
and writes the evaluation report (:func:`fewshot.evaluation.report.write_report`) next to the
checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from episodes.atomic import atomic_write_text
from episodes.protocols import (
    DataRef,
    EpisodeProtocol,
    default_validation,
    protocol_for,
    training_split,
    validation_spec,
)
from fewshot.errors import FewShotError

__all__ = ["DEFAULT_HEADS", "CompareConfig", "CompareResult", "compare", "default_out_dir"]

DEFAULT_HEADS = ("proto", "nn", "ls", "ls-mlp")


@dataclass
class CompareConfig:
    """Everything :func:`compare` needs; every field is a ``fewshot compare`` flag.

    Attributes:
        data, split: the base classes to train on (default: the glyph set's ``base`` split).
        novel, novel_split: the novel classes to evaluate on (default: the novel set of the data's
            benchmark protocol, e.g. the ``novel`` split of a source with splits).
        val, val_split: validation classes for checkpoint selection (default: the recipe's; else the
            val split of a source with splits; else a seeded share of the base classes).
        recipe: the training recipe (default: the one named after the data kind, e.g. ``glyphs``,
            sized so that the default run stays short on a CPU).
        train: further training settings (``TrainConfig`` fields) that override the recipe.
        heads, way, shots, query, episodes, episode_seed: the evaluation protocol.
        transform, distance, within_group: as in ``fewshot eval``.
        tta, tta_args: test-time augmentation views and options (default: the recipe's, as recorded
            in the checkpoint; see :func:`fewshot.evaluation.tta.resolve_tta`).
        out: the run folder (default ``runs/compare-<timestamp>``).
    """

    data: str = "glyphs"
    split: str | None = None
    novel: str | None = None
    novel_split: str | None = None
    val: str | None = None
    val_split: str | None = None
    recipe: str | None = None
    train: dict = field(default_factory=dict)
    heads: tuple[str, ...] = DEFAULT_HEADS
    way: int = 5
    shots: tuple[int, ...] = (1, 5)
    query: int = 15
    episodes: int = 2000
    episode_seed: int = 0
    transform: str | None = None
    distance: str | None = None
    within_group: bool = False
    tsne: bool = False
    out: str | None = None
    tta: int | None = None
    tta_args: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("way", "query", "episodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise FewShotError(f"{name} must be a positive integer, got {value!r}")
        self.shots = tuple(sorted({int(s) for s in self.shots}))
        if not self.shots or self.shots[0] < 1:
            raise FewShotError(f"shots must be positive integers, got {self.shots}")
        self.heads = tuple(self.heads)
        if not self.heads:
            raise FewShotError("no heads to compare")

    @property
    def kind(self) -> str:
        return self.data.split(":", 1)[0].split("?", 1)[0].lower()

    def resolved(self) -> CompareConfig:
        """Defaults filled in: splits, novel source and recipe."""
        from fewshot.training.config import RECIPES

        c = CompareConfig(**asdict(self))
        c.split = training_split(c.data, c.split)
        novel = protocol_for(c.data).novel
        if c.novel is None and c.novel_split is None and novel is not None:
            c.novel, c.novel_split = novel.spec, novel.split
        elif c.novel is None:
            c.novel = c.data
        if c.novel == c.data and c.novel_split == c.split:
            raise FewShotError(f"the novel classes would be the training classes ({c.data} {c.split or ''}); "
                               "give --novel or --novel-split")
        if c.recipe is None and c.kind in RECIPES:
            c.recipe = c.kind
        return c


@dataclass
class CompareResult:
    """What :func:`compare` produced: the folder, the checkpoint, the training and evaluation results,
    timings."""

    out_dir: Path
    checkpoint: Path
    train: object
    eval: object
    files: dict
    seconds: dict

    def table(self) -> str:
        return self.eval.table()


def default_out_dir(prefix: str = "compare") -> Path:
    """``runs/<prefix>-YYYYmmdd-HHMMSS`` (a suffix is added if it exists)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{prefix}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = Path("runs") / f"{prefix}-{stamp}-{n}"
    return path


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(f"fewshot compare: {msg}", file=sys.stderr, flush=True)


def compare(config: CompareConfig | None = None, *, progress: bool = True) -> CompareResult:
    """Train on the base classes, score every head on fixed novel-class episodes, write one report."""
    import episodes
    from episodes import save_manifest
    from fewshot.evaluation.evaluate import build_heads, evaluate
    from fewshot.evaluation.report import write_report
    from fewshot.evaluation.tta import TTA, override_tta
    from fewshot.training.config import TrainConfig, check_config
    from fewshot.training.data import read_size
    from fewshot.training.monitor import monitors, run_title
    from fewshot.training.trainer import train

    t_start = time.perf_counter()
    cfg = (config or CompareConfig()).resolved()
    build_heads(list(cfg.heads), cfg.distance)  # a bad head name fails now, not after training
    override_tta(TTA(), cfg.tta, cfg.tta_args)  # so does a bad TTA option
    out = Path(cfg.out) if cfg.out else default_out_dir()

    train_cfg = TrainConfig.resolve(cfg.recipe, **{**cfg.train, "data": cfg.data, "split": cfg.split,
                                                   "out": os.fspath(out)})
    check_config(train_cfg)  # names and sizes fail before any data is loaded
    # ---------------------------------------------------------------- data
    t0 = time.perf_counter()
    base = episodes.load_data(cfg.data, cfg.split, channels=train_cfg.channels,
                              image_size=read_size(train_cfg.image_size, train_cfg.frame))
    _say(f"base classes {base.describe()}", progress)
    val = None
    try:
        val_set = _validation_set(cfg, train_cfg.val)
        if val_set is not None:
            val = val_set.load(image_size=base.image_size, channels=base.channels)
    except episodes.DatasetError as exc:
        if cfg.val:
            raise
        warnings.warn(f"recipe validation data unavailable ({exc}); holding out base classes instead",
                      stacklevel=2)
        train_cfg.val, train_cfg.val_within_group = None, False
    else:
        if val is not None:
            train_cfg.val = val_set.joined()
            _say(f"validation {val.describe()}", progress)
    novel = episodes.load_data(cfg.novel, cfg.novel_split)
    _say(f"novel classes {novel.describe()}", progress)
    # the fixed evaluation episodes, drawn before training so an impossible request fails at once;
    # nested: the same classes and queries at every shot, the first k support images of each class
    protocol = EpisodeProtocol(cfg.way, cfg.shots, cfg.query, cfg.episodes, cfg.within_group,
                               cfg.episode_seed)
    nested = protocol.sample_nested(novel)
    out.mkdir(parents=True, exist_ok=True)
    manifests = [save_manifest(out / f"episodes-{eps.spec.shot}shot.json", eps, novel) for eps in nested]
    t_data = time.perf_counter() - t0

    # --------------------------------------------------------------- train
    t0 = time.perf_counter()
    title = run_title(train_cfg.encoder, base.name, val.name if val is not None else None)
    with monitors(out, title=title, tensorboard=train_cfg.tensorboard, config=train_cfg.to_dict(),
                  announce=progress) as callbacks:
        trained = train(train_cfg, base, val, out, progress=progress, callbacks=callbacks)
    t_train = time.perf_counter() - t0
    acc = "n/a" if trained.val_accuracy is None else f"{100 * trained.val_accuracy:.2f}%"
    _say(f"trained {train_cfg.encoder} for {train_cfg.epochs} epochs in {t_train:.1f} s "
         f"(best validation accuracy {acc}); checkpoint {trained.best_path}", progress)

    # ---------------------------------------------------------------- eval
    t0 = time.perf_counter()
    result = evaluate(trained.best_path, novel, heads=list(cfg.heads), episodes=manifests,
                      transform=cfg.transform, distance=cfg.distance, tsne=cfg.tsne, progress=progress,
                      tta_views=cfg.tta, tta_args=cfg.tta_args)
    files = write_report(result, out)
    t_eval = time.perf_counter() - t0
    seconds = {"data": round(t_data, 2), "train": round(t_train, 2), "eval": round(t_eval, 2),
               "total": round(time.perf_counter() - t_start, 2)}
    files = {**files, "curves.png": out / "curves.png", "checkpoint": Path(trained.best_path),
             "last": Path(trained.last_path),
             **{f"episodes-{k}shot": Path(m) for k, m in zip(cfg.shots, manifests)}}
    doc = {"format": "fewshot-compare/1", "compare": _jsonable(asdict(cfg)), "train": train_cfg.to_dict(),
           "val_accuracy": trained.val_accuracy, "held_out_classes": trained.held_out_classes,
           "seconds": seconds, "files": {k: os.fspath(v) for k, v in files.items()}}
    path = out / "compare.json"
    atomic_write_text(path, json.dumps(doc, indent=2, default=str))
    files["compare.json"] = path
    return CompareResult(out, Path(trained.best_path), trained, result, files, seconds)


def _validation_set(cfg: CompareConfig, recipe_val: str | None) -> DataRef | None:
    """``config.val``; else the recipe's validation set; else the val split of a source with splits
    when training on its base split; else None (base classes are held out)."""
    if cfg.val:
        return DataRef(cfg.val, cfg.val_split)
    if recipe_val:
        return DataRef(validation_spec(recipe_val, cfg.data))
    return default_validation(cfg.data, cfg.split)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))
