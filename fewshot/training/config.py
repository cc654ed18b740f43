"""Settings of a training run: :class:`TrainConfig`, recipes (shipped TOML files),
:class:`TrainResult`, and the checks that fail a bad setting in one line before any
data is loaded (:func:`check_config`) or before any step is taken (:func:`check_data`)."""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from episodes import ImageSet
from episodes.protocols import PROTOCOL_VAL, validation_settings
from fewshot.device import check_precision
from fewshot.errors import FewShotError
from fewshot.evaluation.features import TRANSFORMS
from fewshot.evaluation.tta import check_symmetries
from fewshot.models.encoders import ENCODERS
from fewshot.models.losses import DISTANCES, LOSSES, MINERS
from fewshot.models.preprocess import check_frame
from fewshot.options import check_option_types, from_options
from fewshot.registry import Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["TrainConfig", "TrainResult", "load_recipe", "RECIPES", "OBJECTIVES", "OPTIMIZERS", "SAMPLERS",
           "check_config", "check_data", "world_size"]

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
RECIPES = Registry("recipe", call=False, note="or give a .toml file")
for _path in sorted(RECIPE_DIR.glob("*.toml")):  # documented by the first line of the file
    RECIPES.register(_path.stem, _path, doc=_path.read_text().split("\n", 1)[0].lstrip("# "))
OBJECTIVES = Registry("objective", call=False)
OBJECTIVES.register("metric", doc="PML metric loss + miner + cross-entropy on M-per-class batches")
OBJECTIVES.register("protonet", doc="ProtoNet on sampled episodes")
OBJECTIVES.register("r2d2", doc="R2-D2 (ridge-regression head) on sampled episodes")
OPTIMIZERS = Registry("optimizer", call=False)
OPTIMIZERS.register("sgd", doc="SGD with Nesterov momentum (when momentum > 0)")
OPTIMIZERS.register("adamw", doc="AdamW")
OPTIMIZERS.register("adam", doc="Adam")
SAMPLERS = Registry("sampler", call=False)
M_PER_CLASS = ("mperclass", "mperclass-group")  # the samplers of m images per class
SAMPLERS.register("mperclass", doc="PML MPerClassSampler: m images of each of batch/m classes")
SAMPLERS.register("random", doc="plain random batches")
SAMPLERS.register("mperclass-group", doc="m images of each of batch/m classes, all classes of a batch "
                  "from one group (Omniglot alphabet): hard within-group negatives")


@dataclass
class TrainConfig:
    """Every setting of a training run (one field per ``fewshot train`` flag, plus recipe-only keys)."""

    data: str | None = None
    split: str | None = None
    val: str | None = None
    out: str | None = None
    recipe: str | None = None
    # model
    encoder: str = "conv4"
    encoder_args: dict = field(default_factory=dict)
    embedding_dim: int | None = None
    image_size: int | None = None
    channels: int | None = None
    frame: float | None = None   # drawings: crop to the ink's box (this share of the side), then resize
    download: bool = False
    # objective: metric (loss + miner + cross-entropy), or episodic protonet / r2d2
    objective: str = "metric"
    loss: str = "circle"
    loss_args: dict = field(default_factory=dict)
    miner: str = "multisimilarity"
    distance: str = "cosine"
    w_metric: float = 0.1
    w_ce: float = 1.0
    label_smoothing: float = 0.0
    # episodic objectives: training episodes, the ridge penalty of r2d2
    episode_way: int = 10
    episode_shot: int = 5
    episode_query: int = 5
    episodes_per_step: int = 2
    steps_per_epoch: int = 50
    ridge_lambda: float = 1.0
    # data
    sampler: str = "mperclass"
    m: int = 4
    batch_size: int = 64
    rotate_classes: bool = False
    mirror_classes: bool = False
    extra_synthetic_classes: int = 0
    synthetic_per_class: int = 20
    synthetic_thin: float = 3.0
    augment: dict = field(default_factory=dict)
    # optimisation
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 30
    warmup_epochs: float = 1.0
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    precision: str = "auto"
    resume: str | None = None
    # validation
    val_every: int = 1
    val_way: int = 5
    val_shots: list = field(default_factory=lambda: [1, 5])
    val_query: int = 15
    val_episodes: int = 500
    val_within_group: bool = False
    val_fraction: float = 0.2
    val_tta: int = 1
    val_tta_every: int = 1
    val_tta_augment: dict = field(default_factory=dict)
    val_tta_symmetries: int = 1   # 1, 2, 4 or 8 symmetries of the square, each with the views
    # evaluation's default views and symmetries where they differ from validation's (None: the
    # same), recorded in the checkpoint: `fewshot eval` can afford more passes per image than the
    # last validation of a run with a time budget (the augmentation is val_tta_augment for both)
    eval_tta: int | None = None
    eval_tta_symmetries: int | None = None
    # the feature transform of validation and, recorded in the checkpoint, of evaluation's default
    # (None: by the distance, l2 for cosine); cl2n needs the base mean only the finished run knows
    eval_transform: str | None = None
    # monitoring
    tensorboard: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return from_options(cls, d, "training")

    @classmethod
    def resolve(cls, recipe: str | None = None, **overrides) -> TrainConfig:
        """Defaults, then the recipe, then every override that is not None."""
        base: dict = {}
        if recipe:
            base.update(load_recipe(recipe))
            base["recipe"] = recipe
            _drop_foreign_encoder_args(base, overrides.get("encoder"), recipe)
        if PROTOCOL_VAL in (base.get("val"), overrides.get("val")):   # the data's benchmark val episodes
            base = {**validation_settings(PROTOCOL_VAL, overrides.get("data")), **base}
        for key, value in overrides.items():
            if value is None:
                continue
            if key in ("augment", "encoder_args", "loss_args", "val_tta_augment") and isinstance(value, dict):
                base[key] = {**base.get(key, {}), **value}
            else:
                base[key] = value
        return cls.from_dict(base)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """What a run produced: the run folder, checkpoint paths, the per-epoch metrics and the best
    validation accuracy (None without validation)."""

    out_dir: Path
    best_path: Path
    last_path: Path
    metrics: list
    val_accuracy: float | None
    held_out_classes: list | None = None
    config: TrainConfig | None = None
    model: torch.nn.Module | None = None  # the trained encoder in memory (the last epoch's weights)


def load_recipe(name: str) -> dict:
    """A shipped recipe (``fewshot/recipes/<name>.toml``) or a TOML file path, as a flat dict."""
    path = Path(name)
    if not (path.suffix == ".toml" and path.exists()):
        path = RECIPES.create(name)
    try:
        with open(path, "rb") as fh:
            recipe = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise FewShotError(f"bad recipe TOML ({exc})", path) from None
    check_option_types(TrainConfig, recipe, path)  # the file and the key in the error
    return recipe


def _drop_foreign_encoder_args(recipe_dict: dict, encoder, recipe: str) -> None:
    """A recipe's ``[encoder_args]`` belong to the recipe's own encoder: when ``encoder`` names
    another one they are dropped, with a one-line note, instead of failing inside the constructor."""
    own = str(recipe_dict.get("encoder", TrainConfig.encoder)).lower()
    args = recipe_dict.get("encoder_args")
    if encoder is None or not isinstance(encoder, str) or encoder.lower() == own or not args:
        return
    del recipe_dict["encoder_args"]
    shown = ", ".join(f"{k}={v}" for k, v in args.items())
    warnings.warn(f"recipe {recipe}: encoder options {shown} are for {own}; not applied to {encoder}",
                  stacklevel=3)


def check_config(cfg: TrainConfig, world: int | None = None) -> None:
    """Checks that need no data: names, positive sizes, batch divisibility. One-line FewShotError."""
    world = world_size() if world is None else world
    for registry, name in ((ENCODERS, cfg.encoder), (LOSSES, cfg.loss), (MINERS, cfg.miner),
                           (DISTANCES, cfg.distance), (OPTIMIZERS, cfg.optimizer),
                           (OBJECTIVES, cfg.objective), (SAMPLERS, cfg.sampler)):
        if isinstance(name, str):
            registry.get(name)  # unknown names: one line listing the valid ones
    for name in ("batch_size", "m", "epochs", "val_every", "val_tta", "episode_way", "episode_shot",
                 "episode_query", "episodes_per_step", "steps_per_epoch"):
        if int(getattr(cfg, name)) < 1:
            raise FewShotError(f"{name.replace('_', '-')} must be a positive integer, "
                               f"got {getattr(cfg, name)}")
    check_precision(cfg.precision)
    if cfg.eval_transform is not None:
        TRANSFORMS.get(cfg.eval_transform)  # unknown: one line listing the valid ones
        if cfg.eval_transform == "cl2n":
            raise FewShotError("eval-transform cl2n needs the base-class mean, known only at the end of "
                               "training: validate with l2 or pt and evaluate with --transform cl2n")
    if int(cfg.seed) < 0:
        raise FewShotError(f"seed must be a non-negative integer, got {cfg.seed}")
    if int(cfg.val_tta_every) < 0:
        raise FewShotError(f"val-tta-every must be >= 0 (0: only the last epoch), got {cfg.val_tta_every}")
    check_symmetries(cfg.val_tta_symmetries, "val-tta-symmetries")
    if cfg.eval_tta is not None and (isinstance(cfg.eval_tta, bool) or not isinstance(cfg.eval_tta, int)
                                     or cfg.eval_tta < 1):
        raise FewShotError(f"eval-tta must be a positive integer, got {cfg.eval_tta!r}")
    if cfg.eval_tta_symmetries is not None:
        check_symmetries(cfg.eval_tta_symmetries, "eval-tta-symmetries")
    if cfg.frame is not None:
        check_frame(cfg.frame)
    if cfg.frame is not None and cfg.image_size is None:
        raise FewShotError("frame needs image-size: the size the framed ink is resampled to")
    if cfg.lr <= 0 or cfg.weight_decay < 0 or cfg.w_metric < 0 or cfg.w_ce < 0:
        raise FewShotError("lr must be > 0; weight-decay, w-metric and w-ce must be >= 0")
    if cfg.w_metric == 0 and cfg.w_ce == 0:
        raise FewShotError("w-metric and w-ce are both 0: nothing to train")
    if cfg.objective != "metric":
        if cfg.episodes_per_step % world:
            raise FewShotError(f"{cfg.episodes_per_step} episodes per step are not divisible by the {world} "
                               "processes")
    elif cfg.batch_size % world:
        raise FewShotError(f"batch size {cfg.batch_size} is not divisible by the {world} processes")
    elif cfg.sampler in M_PER_CLASS:
        per_rank = cfg.batch_size // world
        if per_rank % cfg.m:
            raise FewShotError(f"batch size {cfg.batch_size} is not divisible by m={cfg.m}"
                               + (f" per process ({per_rank} each)" if world > 1 else ""))
    if not cfg.val_shots or min(int(s) for s in cfg.val_shots) < 1 or cfg.val_way < 2:
        raise FewShotError(f"validation needs way >= 2 and shots >= 1, got {cfg.val_way} / {cfg.val_shots}")


def check_data(cfg: TrainConfig, data: ImageSet, world: int) -> None:
    """:func:`check_config`, then what the training set must hold for the batches asked for."""
    check_config(cfg, world)
    if cfg.objective != "metric":
        return
    if cfg.sampler in M_PER_CLASS:
        counts = data.class_counts()
        smallest = int(counts.argmin())
        if cfg.m > counts[smallest]:
            raise FewShotError(f"m={cfg.m} is larger than the smallest class "
                               f"({data.class_names[smallest]!r} has {counts[smallest]} images)")
        if cfg.batch_size // cfg.m > data.num_classes:
            raise FewShotError(f"batch size {cfg.batch_size} with m={cfg.m} needs {cfg.batch_size // cfg.m} "
                               f"classes per batch; the training set has {data.num_classes}")
    if cfg.sampler == "mperclass-group":
        if not data.groups:
            raise FewShotError(f"sampler mperclass-group needs class groups (such as Omniglot's alphabets); "
                               f"{data.name or 'the training set'} has none")
        largest = max(data.groups.count(g) for g in data.group_names)
        if largest < cfg.batch_size // cfg.m:
            raise FewShotError(f"sampler mperclass-group draws {cfg.batch_size // cfg.m} classes of one "
                               f"group per batch; the largest group has {largest}")
    if len(data) < cfg.batch_size:
        raise FewShotError(f"batch size {cfg.batch_size} exceeds the {len(data)} training images")


def world_size() -> int:
    """The number of processes of this run (``WORLD_SIZE`` under torchrun, else 1)."""
    return int(os.environ.get("WORLD_SIZE", "1"))
