"""Settings of a training run: :class:`TrainConfig`, recipes (shipped TOML files) and their placeholders."""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fewshot.errors import FewShotError, check_option_types, from_options

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["TrainConfig", "TrainResult", "load_recipe", "RECIPES", "fill_placeholders"]

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
RECIPES = sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))
OPTIMIZERS = ("sgd", "adamw")
SAMPLERS = ("mperclass", "random")


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
    download: bool = False
    # objective
    loss: str = "circle"
    loss_args: dict = field(default_factory=dict)
    miner: str = "multisimilarity"
    distance: str = "cosine"
    w_metric: float = 0.1
    w_ce: float = 1.0
    label_smoothing: float = 0.0
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
    # monitoring
    tensorboard: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return from_options(cls, d, "training settings")

    @classmethod
    def resolve(cls, recipe: str | None = None, **overrides) -> TrainConfig:
        """Defaults, then the recipe, then every override that is not None."""
        base: dict = {}
        if recipe:
            base.update(load_recipe(recipe))
            base["recipe"] = recipe
            _drop_foreign_encoder_args(base, overrides.get("encoder"), recipe)
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
    """What a run produced: checkpoint paths, the per-epoch metrics and the best validation accuracy."""

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
        path = RECIPE_DIR / f"{name}.toml"
        if not path.exists():
            raise FewShotError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)} "
                               "or give a .toml file")
    try:
        with open(path, "rb") as fh:
            recipe = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise FewShotError(f"bad recipe TOML ({exc})", path) from None
    check_option_types(TrainConfig, recipe, path)  # the file and the key in the error
    return recipe


def _drop_foreign_encoder_args(recipe_dict: dict, encoder, recipe: str) -> None:
    """A recipe's ``[encoder_args]`` belong to the recipe's own encoder: when ``--encoder`` names
    another one they are dropped, with a one-line note, instead of failing inside the constructor."""
    own = str(recipe_dict.get("encoder", TrainConfig.encoder)).lower()
    args = recipe_dict.get("encoder_args")
    if encoder is None or not isinstance(encoder, str) or encoder.lower() == own or not args:
        return
    del recipe_dict["encoder_args"]
    shown = ", ".join(f"{k}={v}" for k, v in args.items())
    warnings.warn(f"recipe {recipe}: encoder options {shown} are for {own}; not applied to {encoder}",
                  stacklevel=3)


def fill_placeholders(spec: str, data_spec: str) -> str:
    """A recipe's data spec with ``{data_path}`` (the first path of ``data_spec``) and ``{data_dir}``
    (the folder holding it) filled in: how a recipe names validation data that sits beside, or
    inside, the training data (``omniglot:{data_dir}/small2.zip``, ``miniimagenet:{data_path}?split=val``)."""
    body = data_spec.split(":", 1)[1] if ":" in data_spec else data_spec
    first = body.split("?", 1)[0].split("+", 1)[0]
    path = os.path.abspath(first) if first else os.getcwd()
    data_dir = os.path.dirname(path) if first else path
    return spec.replace("{data_path}", path).replace("{data_dir}", data_dir)
