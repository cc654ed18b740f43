"""The image sets of a training run: loading them from a config, and shaping them for training.

:func:`load_training_data` reads ``TrainConfig.data`` (its training split) and the validation set
``TrainConfig.val`` names (``"protocol"``: the val set of the data's benchmark protocol),
the way ``fewshot train`` and :func:`fewshot.training.trainer.train` both do. :func:`prepare_sets`
applies the run's size and channels, holds out validation classes when there is no validation
set, and adds the class augmentation (:mod:`fewshot.training.classes`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import episodes
from episodes import ImageSet
from episodes.protocols import training_split, validation_spec
from fewshot.errors import FewShotError
from fewshot.models.preprocess import Preprocess
from fewshot.training.classes import mirror_classes, rotate_classes, synthetic_classes
from fewshot.training.config import TrainConfig

__all__ = ["TrainingSets", "read_size", "load_training_data", "load_validation", "prepare_sets",
           "check_validation"]


def read_size(image_size: int | None, frame: float | None) -> int | None:
    """The size a training set is read at: its own when the run frames the ink (framing crops the
    full-size drawing, :func:`prepare_sets`), else the run's ``image_size``."""
    return None if frame is not None else image_size


def load_training_data(cfg: TrainConfig) -> ImageSet:
    """The training set ``cfg.data`` names, at ``cfg.image_size`` / ``cfg.channels`` (at its own
    size when ``cfg.frame`` is set: the ink is framed from the full-size drawing, in
    :func:`prepare_sets`); ``cfg.split`` is set to the split read (``base`` when the source has one)."""
    if not cfg.data:
        raise FewShotError("no training data: pass an ImageSet or set TrainConfig.data")
    cfg.split = training_split(cfg.data, cfg.split)
    return episodes.load_data(cfg.data, cfg.split, image_size=read_size(cfg.image_size, cfg.frame),
                              channels=cfg.channels)


def load_validation(cfg: TrainConfig, data: ImageSet, *, split: str | None = None,
                    required: bool = False) -> ImageSet | None:
    """The validation set ``cfg.val`` names (None when it names none), shaped like ``data``.

    A set the user named (``required``) that cannot be read is an error; a recipe's that cannot
    (e.g. its second Omniglot archive is not there) is a warning, and the run holds out base
    classes instead: ``cfg.val`` becomes None and the within-group setting is dropped where
    ``data`` has no groups. On success ``cfg.val`` holds the spec read (for ``"protocol"``, the
    protocol's val set with absolute paths).
    """
    if not cfg.val:
        return None
    try:
        spec = validation_spec(cfg.val, cfg.data or "")
        val = episodes.load_data(spec, split, image_size=data.image_size, channels=data.channels)
    except episodes.DatasetError as exc:
        if required:
            raise
        warnings.warn(f"recipe validation data unavailable ({exc}); holding out base classes instead",
                      stacklevel=2)
        cfg.val = None
        cfg.val_within_group = False if data.groups is None else cfg.val_within_group
        return None
    cfg.val = spec
    return val


@dataclass
class TrainingSets:
    """The sets of one run.

    Attributes:
        data: what the batches are drawn from (class-augmented, synthetic classes added).
        base: the real base classes before class augmentation (their mean embedding is the
            checkpoint's ``base_mean``).
        real: the real images after class augmentation (the preprocessing statistics).
        val: the validation classes; None when the run does not validate.
        held_out: names of the base classes held out for validation, when they were.
    """

    data: ImageSet
    base: ImageSet
    real: ImageSet
    val: ImageSet | None
    held_out: list[str] | None


def prepare_sets(cfg: TrainConfig, data: ImageSet, val: ImageSet | None,
                 say: Callable[[str], None] = lambda _: None) -> TrainingSets:
    """Resize (or frame, ``cfg.frame``) / convert ``data``, hold out ``cfg.val_fraction`` of its
    classes when ``val`` is None (no validation when that is 0), and add rotated, mirrored and
    synthetic classes.

    With framing only the training images are framed here, once (:meth:`Preprocess.prepare`);
    validation images keep their size and are framed as they are embedded, the way evaluation
    frames novel images, so the run's figures are the ones ``fewshot eval`` reproduces.
    """
    size = cfg.image_size
    if cfg.frame is None and size is not None and data.image_size != (size, size):
        data = data.resized(size)
    if cfg.channels is not None:
        data = data.with_channels(cfg.channels)
    held_out = None
    if val is None and cfg.val_fraction > 0:
        data, val = data.split_classes(cfg.val_fraction, seed=cfg.seed)
        held_out = list(val.class_names)
        say(f"held out {len(held_out)} of the base classes for validation (seed {cfg.seed}): "
            f"{', '.join(held_out[:8])}" + (f" and {len(held_out) - 8} more" if len(held_out) > 8 else ""))
    if cfg.frame is not None:
        framing = Preprocess(cfg.image_size, data.channels, frame=cfg.frame)
        data = ImageSet(framing.prepare(data.images), data.labels, data.class_names, data.ids, data.groups,
                        f"{data.name} (ink framed, {cfg.frame:g} of the side)")
    base = data
    if cfg.rotate_classes:
        data = rotate_classes(data)
    if cfg.mirror_classes:
        data = mirror_classes(data)
    real = data
    if cfg.extra_synthetic_classes:
        synth = synthetic_classes(int(cfg.extra_synthetic_classes), data,
                                  per_class=int(cfg.synthetic_per_class), seed=cfg.seed,
                                  thin=float(cfg.synthetic_thin))
        if data.groups is None:
            synth = ImageSet(synth.images, synth.labels, synth.class_names, synth.ids, None, synth.name)
        data = ImageSet.concat([data, synth], name=f"{data.name} + {synth.name}")
    return TrainingSets(data, base, real, val, held_out)


def check_validation(cfg: TrainConfig, sets: TrainingSets) -> None:
    """Enough validation classes for ``cfg.val_way``, and none of them a training class."""
    val = sets.val
    if val is None:
        return
    if val.num_classes < cfg.val_way:
        raise FewShotError(f"validation has {val.num_classes} classes; {cfg.val_way}-way episodes need more")
    shared = sorted(set(val.class_names) & set(sets.base.class_names))
    if shared:
        raise FewShotError(f"the validation classes overlap the training classes ({len(shared)} shared, "
                           f"e.g. {shared[0]!r}): its figures would be meaningless; train on the base "
                           "split only")
