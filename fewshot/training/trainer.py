"""Metric training of an encoder: the recipe of the field, on pytorch-metric-learning.

Batches come from PML's ``MPerClassSampler`` (m images of each of batch/m classes) or plain random
sampling; they are gathered by indexing the uint8 ``ImageSet`` held in memory (on the GPU when it
fits) and augmented there as batched tensor ops (:mod:`fewshot.training.augment`). The objective is
``w_metric * metric_loss(embedding, mined tuples) + w_ce * cross_entropy(logits)``, optimised with
SGD (Nesterov) or AdamW under a warm-up + cosine schedule. Every epoch (or every k) the encoder is
scored on fixed validation episodes with prototypes under the training distance; ``best.pt`` keeps
the best, ``last.pt`` the latest state (model, optimizer, scheduler, sampler position, RNGs), both
written atomically, so ``resume`` continues bit-exactly on CPU. Under ``torchrun`` the model runs in
DistributedDataParallel and the metric loss sees the global batch (PML's distributed wrappers).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from episodes import EpisodeSpec, ImageSet, sample_episodes
from episodes.atomic import atomic_write_text
from episodes.protocols import PROTOCOL_VAL, validation_settings
from fewshot.errors import FewShotError
from fewshot.evaluation.features import embed
from fewshot.evaluation.tta import DRAWING_AUGMENT, TTA, default_augment, tta_from_config
from fewshot.models.checkpoint import load_checkpoint, save_checkpoint, state_hash
from fewshot.models.encoders import ENCODERS, INIT_ONLY, build_encoder, encoder_spec
from fewshot.models.losses import (
    DISTANCES,
    LOSSES,
    MINERS,
    build_loss,
    build_miner,
    distance_name,
    is_proxy_loss,
)
from fewshot.models.preprocess import Preprocess
from fewshot.options import check_option_types, from_options
from fewshot.progress import progress as progress_bar
from fewshot.registry import Registry
from fewshot.training.augment import Augment
from fewshot.training.faults import (
    DeferredInterrupt,
    StepSnapshot,
    all_finite,
    nonfinite_names,
    save_interrupted,
)
from fewshot.training.runlock import RunLock
from fewshot.training.runstate import commit_epoch, reconcile, write_metrics

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["TrainConfig", "TrainResult", "load_recipe", "RECIPES", "train", "rotate_classes",
           "mirror_classes", "synthetic_classes", "episode_accuracy", "embed_images",
           "embed_tta"]

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
RECIPES = Registry("recipe", call=False, note="or give a .toml file")
for _path in sorted(RECIPE_DIR.glob("*.toml")):  # documented by the first line of the file
    RECIPES.register(_path.stem, _path, doc=_path.read_text().split("\n", 1)[0].lstrip("# "))
OPTIMIZERS = Registry("optimizer", call=False)
OPTIMIZERS.register("sgd", doc="SGD with Nesterov momentum (when momentum > 0)")
OPTIMIZERS.register("adamw", doc="AdamW")
SAMPLERS = Registry("sampler", call=False)
SAMPLERS.register("mperclass", doc="PML MPerClassSampler: m images of each of batch/m classes")
SAMPLERS.register("random", doc="plain random batches")


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
        path = RECIPES.create(name)
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


# -------------------------------------------------------------------- helpers
def rotate_classes(data: ImageSet) -> ImageSet:
    """Class augmentation by 90/180/270 degree rotations: every rotation is a new class (4x classes).

    Used by the Omniglot literature (Vinyals et al. 2016, Snell et al. 2017); a rotated character is
    a different character. Ids and class names get an ``@rot90``/``@rot180``/``@rot270`` suffix.
    """
    if data.image_size[0] != data.image_size[1]:
        raise FewShotError(f"rotation classes need square images, got {data.image_size}")
    parts = [_as_new_classes(data, torch.rot90(data.images, k, (2, 3)), f"@rot{90 * k}") for k in (1, 2, 3)]
    return ImageSet.concat([data, *parts], name=f"{data.name} x4 rotations")


def mirror_classes(data: ImageSet) -> ImageSet:
    """Class augmentation by horizontal mirroring: every mirrored class is a new class (2x classes).

    A mirrored character is a different character, as a rotated one is; with
    :func:`rotate_classes` the 8 symmetries of the square make 8x classes. Ids and class names get
    a ``@mirror`` suffix.
    """
    mirrored = _as_new_classes(data, torch.flip(data.images, (3,)), "@mirror")
    return ImageSet.concat([data, mirrored], name=f"{data.name} x2 mirrored")


def _as_new_classes(data: ImageSet, images: torch.Tensor, tag: str) -> ImageSet:
    """``data``'s labels and groups over transformed ``images``, every class renamed with ``tag``
    (class names and ids), so that :meth:`ImageSet.concat` keeps them apart from the originals."""
    return ImageSet(images.contiguous(), data.labels, [n + tag for n in data.class_names],
                    [i + tag for i in data.ids], data.groups, data.name)


def synthetic_classes(num_classes: int, like: ImageSet, *, per_class: int = 20, seed: int = 0,
                      thin: float = 3.0) -> ImageSet:
    """Procedural glyph classes (:func:`episodes.readers.glyphs.make_glyphs`) shaped like ``like``.

    Co-training on thousands of generated handwriting-like characters gives the metric loss and the
    classifier far more classes than a small base set holds (136 for minimal Omniglot), with no
    download and no validation data. The glyphs are rendered at twice the side, their ink raised to
    the power ``thin`` (a Gaussian pen profile narrows by ``sqrt(thin)``: Omniglot-like thin strokes;
    1 = as generated) and downsampled to ``like``'s size and channel count. Classes are named
    ``synthetic/alphabetAA/charCC`` in groups ``synthetic/alphabetAA``; the seed is offset from the
    training seed so the glyphs never coincide with the ``glyphs`` data set of the same seed.
    """
    from episodes.readers.glyphs import make_glyphs

    if num_classes < 1 or per_class < 1:
        raise FewShotError(f"extra synthetic classes need positive counts, got {num_classes} x {per_class}")
    if thin <= 0:
        raise FewShotError(f"synthetic_thin must be > 0, got {thin}")
    h, w = like.image_size
    glyphs = make_glyphs(num_classes, per_class, size=2 * max(h, w), seed=_derive_seed(seed, 7919))
    x = glyphs.images.float().div_(255).pow_(thin)
    x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    x = x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
    images = (x * 255).round_().clamp_(0, 255).to(torch.uint8)
    tag = "synthetic/"
    out = ImageSet(images, glyphs.labels, [tag + n for n in glyphs.class_names],
                   [tag + i for i in glyphs.ids],
                   [tag + g for g in glyphs.groups] if glyphs.groups is not None else None,
                   f"{num_classes} synthetic glyph classes")
    return out.with_channels(like.channels)


def _derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; one CUDA device per local rank under torchrun."""
    if name in ("auto", None):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FewShotError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FewShotError("--device cuda asked for, but no CUDA device is available")
    return device


def embed_images(model: torch.nn.Module, images: torch.Tensor, preprocess: Preprocess,
                 device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Embeddings ``[N, D]`` (float32, on ``device``) of uint8 images:
    :func:`fewshot.evaluation.features.embed`."""
    return embed(model, images, preprocess, device=device, batch_size=batch_size, progress=False).to(device)


TTA_AUGMENT = DRAWING_AUGMENT


def embed_tta(model: torch.nn.Module, images: torch.Tensor, preprocess: Preprocess, device: torch.device,
              views: int, augment: Augment | dict | None = None, *, seed: int = 0,
              normalize: bool = True, batch_size: int = 512) -> torch.Tensor:
    """Test-time augmentation: the mean embedding ``[N, D]`` of ``views`` versions of every image
    (:func:`fewshot.evaluation.features.embed` with a :class:`fewshot.evaluation.tta.TTA`;
    ``augment`` over the data kind's default, :func:`fewshot.evaluation.tta.default_augment`).
    ``views=1`` is plain :func:`embed_images` (unit length with ``normalize``)."""
    if views < 1:
        raise FewShotError(f"val_tta must be a positive number of views, got {views}")
    options = augment.to_dict() if isinstance(augment, Augment) else dict(augment or {})
    tta = TTA(views, {**default_augment(preprocess.channels), **options}, seed, normalize)
    emb = embed(model, images, preprocess, device=device, batch_size=batch_size, progress=False, tta=tta)
    return (F.normalize(emb, dim=-1) if normalize and views == 1 else emb).to(device)


def episode_accuracy(features: torch.Tensor, episodes, distance: str = "cosine") -> torch.Tensor:
    """Per-episode accuracy ``[E]`` of nearest-prototype classification, all episodes batched."""
    if distance == "cosine":
        features = F.normalize(features, dim=-1)
    s, sy, q, qy = episodes.gather(features)
    way = episodes.spec.way
    onehot = F.one_hot(sy, way).to(s.dtype)                                    # [E,S,way]
    protos = onehot.transpose(1, 2) @ s / onehot.sum(1).unsqueeze(-1)           # [E,way,D]
    if distance == "cosine":
        scores = q @ F.normalize(protos, dim=-1).transpose(1, 2)
    else:
        scores = -torch.cdist(q, protos).pow(2)
    return (scores.argmax(-1) == qy).float().mean(1)


# ------------------------------------------------------------------ checks
def check_config(cfg: TrainConfig, world: int | None = None) -> None:
    """Checks that need no data: names, positive sizes, batch divisibility. One-line FewShotError."""
    world = _dist_info()[1] if world is None else world
    for registry, name in ((ENCODERS, cfg.encoder), (LOSSES, cfg.loss), (MINERS, cfg.miner),
                           (DISTANCES, cfg.distance), (OPTIMIZERS, cfg.optimizer), (SAMPLERS, cfg.sampler)):
        if isinstance(name, str):
            registry.get(name)  # unknown names: one line listing the valid ones
    for name in ("batch_size", "m", "epochs", "val_every", "val_tta"):
        if int(getattr(cfg, name)) < 1:
            raise FewShotError(f"{name.replace('_', '-')} must be a positive integer, "
                               f"got {getattr(cfg, name)}")
    if int(cfg.seed) < 0:
        raise FewShotError(f"seed must be a non-negative integer, got {cfg.seed}")
    if int(cfg.val_tta_every) < 0:
        raise FewShotError(f"val-tta-every must be >= 0 (0: only the last epoch), got {cfg.val_tta_every}")
    if cfg.lr <= 0 or cfg.weight_decay < 0 or cfg.w_metric < 0 or cfg.w_ce < 0:
        raise FewShotError("lr must be > 0; weight-decay, w-metric and w-ce must be >= 0")
    if cfg.w_metric == 0 and cfg.w_ce == 0:
        raise FewShotError("w-metric and w-ce are both 0: nothing to train")
    if cfg.batch_size % world:
        raise FewShotError(f"batch size {cfg.batch_size} is not divisible by the {world} processes")
    if cfg.sampler == "mperclass":
        per_rank = cfg.batch_size // world
        if per_rank % cfg.m:
            raise FewShotError(f"batch size {cfg.batch_size} is not divisible by m={cfg.m}"
                               + (f" per process ({per_rank} each)" if world > 1 else ""))
    if not cfg.val_shots or min(int(s) for s in cfg.val_shots) < 1 or cfg.val_way < 2:
        raise FewShotError(f"validation needs way >= 2 and shots >= 1, got {cfg.val_way} / {cfg.val_shots}")


def _check_config(cfg: TrainConfig, data: ImageSet, world: int) -> None:
    check_config(cfg, world)
    if cfg.sampler == "mperclass":
        counts = data.class_counts()
        smallest = int(counts.argmin())
        if cfg.m > counts[smallest]:
            raise FewShotError(f"m={cfg.m} is larger than the smallest class "
                               f"({data.class_names[smallest]!r} has {counts[smallest]} images)")
        if cfg.batch_size // cfg.m > data.num_classes:
            raise FewShotError(f"batch size {cfg.batch_size} with m={cfg.m} needs {cfg.batch_size // cfg.m} "
                               f"classes per batch; the training set has {data.num_classes}")
    if len(data) < cfg.batch_size:
        raise FewShotError(f"batch size {cfg.batch_size} exceeds the {len(data)} training images")


def _compare_resume(ckpt: dict, spec: dict, fingerprint: str, path: str) -> None:
    old = dict(ckpt.get("encoder", {}))
    if isinstance(old.get("kwargs"), dict):  # where the starting weights came from is no part of the model
        old["kwargs"] = {k: v for k, v in old["kwargs"].items() if k not in INIT_ONLY}
    diffs = []
    for key in ("name", "in_channels", "num_classes", "embedding_dim", "kwargs"):
        if old.get(key) != spec.get(key):
            diffs.append(f"{key} {old.get(key)!r} (checkpoint) vs {spec.get(key)!r} (now)")
    if ckpt.get("data_fingerprint") not in (None, fingerprint):
        diffs.append(f"training data {ckpt.get('data_fingerprint')} vs {fingerprint}")
    if diffs:
        raise FewShotError("cannot resume, the checkpoint differs: " + "; ".join(diffs), path)


# -------------------------------------------------------------------- batches
class _Batches:
    """The batch index lists of one epoch, identical on every rank and after a resume.

    ``mperclass`` runs PML's ``MPerClassSampler`` with its module RNG seeded for the epoch (and
    the sampler's class order reset), so the epoch's batches are a function of (seed, epoch).
    """

    def __init__(self, labels: torch.Tensor, cfg: TrainConfig):
        self.cfg = cfg
        self.labels = labels
        self.n = int(labels.shape[0])
        if cfg.sampler == "mperclass":
            from pytorch_metric_learning.samplers import MPerClassSampler
            self.sampler = MPerClassSampler(labels, cfg.m, batch_size=cfg.batch_size,
                                            length_before_new_iter=max(self.n, cfg.batch_size))
            self._classes = list(self.sampler.labels)

    def __len__(self) -> int:
        return self.n // self.cfg.batch_size if self.cfg.sampler == "random" else (
            len(self.sampler) // self.cfg.batch_size)

    def epoch(self, epoch: int) -> torch.Tensor:
        seed = _derive_seed(self.cfg.seed, epoch, 1)
        if self.cfg.sampler == "random":
            g = torch.Generator().manual_seed(seed)
            perm = torch.randperm(self.n, generator=g)
            return perm[: len(self) * self.cfg.batch_size].view(len(self), self.cfg.batch_size)
        from pytorch_metric_learning.utils import common_functions as c_f
        saved = c_f.NUMPY_RANDOM
        c_f.NUMPY_RANDOM = np.random.RandomState(seed % (2**32))
        try:
            self.sampler.labels = list(self._classes)
            idx = list(iter(self.sampler))
        finally:
            c_f.NUMPY_RANDOM = saved
        return torch.as_tensor(np.asarray(idx, dtype=np.int64)).view(-1, self.cfg.batch_size)


def _zero_sums() -> dict:
    return {"loss": 0.0, "metric": 0.0, "ce": 0.0, "correct": 0.0, "seen": 0, "time": 0.0, "steps": 0}


# ---------------------------------------------------------------------- train
def train(config: TrainConfig, data: ImageSet, val: ImageSet | None, out_dir: str | os.PathLike | None,
          *, progress: bool = True, loss: torch.nn.Module | None = None, miner: torch.nn.Module | None = None,
          encoder: torch.nn.Module | None = None, callbacks: list | tuple = ()) -> TrainResult:
    """Train an encoder on ``data`` (the base classes), validate on ``val``, write the run to ``out_dir``.

    ``loss`` / ``miner`` / ``encoder`` accept objects (any PML loss or miner, any backbone
    module) in place of the names in ``config``. Without ``val`` a seeded ``val_fraction`` of the
    base classes is held out (``TrainResult.held_out_classes``). ``callbacks``: objects with
    ``on_epoch_end(row, metrics, out_dir)``, called on the main process after each epoch's row is
    written (:mod:`fewshot.training.monitor`: training curves, TensorBoard).
    """
    out = Path(out_dir if out_dir is not None else config.out or "runs/train")
    # one writer per run folder: a second run pointed at a live one is refused, not interleaved
    with RunLock(out) if _dist_info()[0] == 0 else contextlib.nullcontext():
        return _train(config, data, val, out, progress=progress, loss=loss, miner=miner, encoder=encoder,
                      callbacks=callbacks)


def _train(config: TrainConfig, data: ImageSet, val: ImageSet | None, out_dir: Path, *, progress: bool,
           loss: torch.nn.Module | None, miner: torch.nn.Module | None, encoder: torch.nn.Module | None,
           callbacks: list | tuple) -> TrainResult:
    """The body of :func:`train`, run while the main process holds the run folder's lock."""
    cfg = config
    rank, world, local_rank = _dist_info()
    distributed = world > 1
    device = resolve_device(cfg.device, local_rank)
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    is_main = rank == 0
    if device.type == "cuda":
        torch.cuda.set_device(device)

    if cfg.image_size is not None and data.image_size != (cfg.image_size, cfg.image_size):
        data = data.resized(cfg.image_size)
    if cfg.channels is not None:
        data = data.with_channels(cfg.channels)
    held_out = None
    if val is None:
        data, val = data.split_classes(cfg.val_fraction, seed=cfg.seed)
        held_out = list(val.class_names)
    base_data = data
    if cfg.rotate_classes:
        data = rotate_classes(data)
    if cfg.mirror_classes:
        data = mirror_classes(data)
    real_data = data
    if cfg.extra_synthetic_classes:
        synth = synthetic_classes(int(cfg.extra_synthetic_classes), data,
                                  per_class=int(cfg.synthetic_per_class), seed=cfg.seed,
                                  thin=float(cfg.synthetic_thin))
        if data.groups is None:
            synth = ImageSet(synth.images, synth.labels, synth.class_names, synth.ids, None, synth.name)
        data = ImageSet.concat([data, synth], name=f"{data.name} + {synth.name}")
    _check_config(cfg, data, world)
    if val.num_classes < cfg.val_way:
        raise FewShotError(f"validation has {val.num_classes} classes; {cfg.val_way}-way episodes need more")
    shared = sorted(set(val.class_names) & set(base_data.class_names))
    if shared:
        raise FewShotError(f"the validation classes overlap the training classes ({len(shared)} shared, e.g. "
                           f"{shared[0]!r}): its figures would be meaningless; train on the base split only")

    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    preprocess = Preprocess.fit(real_data.images, channels=data.channels)  # real images only
    model = build_encoder(encoder if encoder is not None else cfg.encoder, in_channels=data.channels,
                          num_classes=data.num_classes, embedding_dim=cfg.embedding_dim,
                          image_size=data.image_size[0],
                          **({} if encoder is not None else {  # resuming: the checkpoint has the weights
                              k: v for k, v in cfg.encoder_args.items()
                              if not (cfg.resume and k in INIT_ONLY)}),
                          **({"download": True} if cfg.download and encoder is None and not cfg.resume
                             and str(cfg.encoder).startswith("resnet") and cfg.encoder != "resnet12" else {}))
    spec = encoder_spec(model)
    # channels_last on every device: oneDNN convolutions on CPU run ~1.5x faster in NHWC too
    model = model.to(device).to(memory_format=torch.channels_last)

    loss_args = cfg.loss_args
    loss_name = cfg.loss if loss is None else type(loss).__name__
    if cfg.w_metric > 0:
        metric_loss = build_loss(loss if loss is not None else cfg.loss, distance=cfg.distance,
                                 num_classes=data.num_classes, embedding_dim=model.embedding_dim,
                                 **loss_args).to(device)
    else:  # pure cross-entropy ("Baseline"): no metric loss at all
        metric_loss = torch.nn.Module()
    is_proxy = loss is None and is_proxy_loss(cfg.loss)
    metric_miner = None
    if not is_proxy and cfg.w_metric > 0:
        metric_miner = build_miner(miner if miner is not None else cfg.miner, distance=cfg.distance)
    if distributed:
        from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper
        loss_fn: torch.nn.Module = DistributedLossWrapper(metric_loss)
        miner_fn = DistributedMinerWrapper(metric_miner) if metric_miner is not None else None
    else:
        loss_fn, miner_fn = metric_loss, metric_miner

    params = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    loss_params = [p for p in metric_loss.parameters() if p.requires_grad]
    if loss_params:
        params.append({"params": loss_params})
    if cfg.optimizer == "sgd":
        # foreach: one fused update over all parameters (torch uses it by default on CUDA only)
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                                    weight_decay=cfg.weight_decay, foreach=True)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)

    batches = _Batches(data.labels, cfg)
    steps_per_epoch = len(batches)
    total = steps_per_epoch * cfg.epochs
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    augment = Augment.from_dict(cfg.augment)
    gen = torch.Generator(device=device)

    # Fixed validation episodes, one set per shot.
    val_sets = {shot: sample_episodes(val, EpisodeSpec(cfg.val_way, shot, cfg.val_query), cfg.val_episodes,
                                      seed=cfg.seed, within_group=cfg.val_within_group, drop_small=True)
                for shot in cfg.val_shots}
    distance = distance_name(cfg.distance)

    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    metrics_path = out_dir / "metrics.jsonl"
    start_epoch, start_step = 0, 0
    best: dict | None = None  # {"epoch", "accuracy", "hash"} of best.pt; last.pt records it
    metrics: list[dict] = []
    run_sums = None
    saved: tuple | None = None  # (path, epoch, step) of the checkpoint this run can vouch for
    if cfg.resume:
        rpath = last_path if cfg.resume in ("auto", "true", "True", True) else Path(cfg.resume)
        if not rpath.exists():
            raise FewShotError("nothing to resume: no such checkpoint", rpath)
        ckpt = load_checkpoint(rpath, map_location="cpu")  # refuses non-finite weights
        _compare_resume(ckpt, spec, data.fingerprint, str(rpath))
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("loss_state"):
            metric_loss.load_state_dict(ckpt["loss_state"])
        start_epoch, start_step = int(ckpt["sampler"]["epoch"]), int(ckpt["sampler"]["step"])
        best = ckpt.get("best")
        if best is None and float(ckpt.get("best_accuracy", -1.0)) >= 0:  # written by an older version
            best = {"epoch": None, "accuracy": float(ckpt["best_accuracy"]), "hash": None}
        run_sums = ckpt.get("running")
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        gen.set_state(ckpt["rng"]["augment"].to("cpu") if device.type == "cpu" else ckpt["rng"]["augment"])
        resume_gen_state = gen.get_state()
        # The checkpoint is the commit point: metrics.jsonl and best.pt are made to agree with it.
        metrics = reconcile(out_dir, ckpt) if is_main else list(ckpt.get("metrics") or [])
        saved = (rpath, start_epoch, start_step)
        del ckpt
    else:
        resume_gen_state = None

    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:  # a fresh run: no checkpoint of an earlier run may pass for this one's
            for stale in (last_path, best_path):
                stale.unlink(missing_ok=True)
        doc = {**cfg.to_dict(), "resolved": {
            "data": data.describe(), "validation": val.describe(), "num_classes": data.num_classes,
            "held_out_classes": held_out, "world_size": world, "device": str(device),
            "preprocess": preprocess.to_dict(), "encoder": spec, "loss": loss_name,
            "steps_per_epoch": steps_per_epoch}}
        atomic_write_text(out_dir / "config.json", json.dumps(doc, indent=2, default=str) + "\n")
        if held_out is not None and progress:
            print(f"fewshot train: no --val given; held out {len(held_out)} of the base classes for "
                  f"validation (seed {cfg.seed}): {', '.join(held_out[:8])}"
                  + (f" and {len(held_out) - 8} more" if len(held_out) > 8 else ""), file=sys.stderr)
        if not cfg.resume:
            write_metrics(metrics_path, metrics)

    run_model: torch.nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel
        run_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        run_model = torch.compile(run_model)

    images = data.images
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        images = images.to(device) if images.numel() < 0.25 * free else images.pin_memory()
    labels_dev = data.labels.to(device)
    per_rank = cfg.batch_size // world
    check_every = 1 if device.type == "cpu" else 20
    # Everything a step may poison (watched) and what it changes before its update (snapshot).
    watched = [*model.parameters(), *model.buffers(), *metric_loss.parameters(), *metric_loss.buffers()]
    snapshot = StepSnapshot([*model.buffers(), *metric_loss.buffers()], [gen], device)

    def state(epoch: int, step: int, sums: dict | None) -> dict:
        return {
            "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            "encoder": spec, "preprocess": preprocess.to_dict(), "distance": distance,
            "base_classes": list(data.class_names), "data_fingerprint": data.fingerprint,
            "config": json.loads(json.dumps(cfg.to_dict(), default=str)),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "loss_state": metric_loss.state_dict() if loss_params else None,
            "sampler": {"kind": cfg.sampler, "epoch": epoch, "step": step, "seed": cfg.seed},
            "rng": {"torch": torch.get_rng_state(), "augment": gen.get_state().cpu(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "running": sums, "epoch": epoch, "metrics": list(metrics), "best": best,
            "best_accuracy": best["accuracy"] if best else -1.0,
            "val_accuracy": metrics[-1].get("val_accuracy") if metrics else None,
            "hash": None, "base_mean": None,
            "tta": tta_from_config(cfg.to_dict(), data.channels, distance).to_dict(),  # eval's default
        }

    def finalize(ckpt: dict) -> dict:
        ckpt["hash"] = state_hash(ckpt["model"])
        return ckpt

    def kept() -> str:
        """Which checkpoint is still good, for the message of a stop."""
        if saved is None:
            return "no checkpoint was written yet, so none is kept"
        return f"the last good checkpoint {saved[0]} (epoch {saved[1]}, step {saved[2]}) is finite and intact"

    def check_weights(epoch: int, step: int) -> None:
        """Stop (FewShotError) when a weight or buffer went NaN / inf: one fused check, one sync."""
        ok = all_finite(watched)
        if distributed:
            ok = ok.float()
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        if not bool(ok):
            names = nonfinite_names({**model.state_dict(), **{f"loss.{k}": v for k, v in
                                                             metric_loss.state_dict().items()}})
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise FewShotError(f"weights became non-finite ({shown or 'elements beyond float32 range'}) "
                               f"by epoch {epoch + 1} step {step + 1}; stopped, {kept()} (try a lower --lr)")

    def validate(with_tta: bool) -> dict:
        """Episode accuracy on ``val``. With ``val_tta > 1`` the plain figure is always kept (keys
        ``..._plain``) and the TTA figure, the recipe's ``val_accuracy``, only when ``with_tta``."""
        plain = embed_images(model, val.images, preprocess, device)
        views = {"": plain}
        if cfg.val_tta > 1:
            views = {"_plain": plain}
            if with_tta:
                views[""] = embed_tta(model, val.images, preprocess, device, int(cfg.val_tta),
                                      cfg.val_tta_augment, seed=cfg.seed, normalize=distance == "cosine")
        out = {}
        for shot, eps in val_sets.items():
            for suffix, feats in views.items():
                acc = episode_accuracy(feats, eps, distance)
                out[f"val_{cfg.val_way}w{shot}s{suffix}"] = float(acc.mean())
                out[f"val_{cfg.val_way}w{shot}s{suffix}_ci95"] = float(1.96 * acc.std() / math.sqrt(len(acc)))
        key = f"val_{cfg.val_way}w{cfg.val_shots[0]}s"
        if key in out:
            out["val_accuracy"] = out[key]
        return out

    # Where the run stands, for a KeyboardInterrupt: ``at`` (epoch, step) is the next step to run
    # when ``phase`` is "idle"; "step" is a step before its optimizer update (rolled back), "update"
    # inside it (nothing written), "stepped" after it (finished), "commit"/"final" the epoch-end
    # and end-of-run writes (nothing written; --resume reconciles).
    cur: dict = {"phase": "idle", "at": (start_epoch, start_step), "out": None}
    optimizer.register_step_post_hook(lambda *_: cur.__setitem__("phase", "stepped"))
    sums = run_sums or _zero_sums()

    def book(epoch: int, step: int) -> None:
        """Finish step ``step``: the scheduler step (unless done) and the running sums (unless
        booked), then mark the next step; each part is applied once even when re-entered."""
        nonlocal sums
        if scheduler.last_epoch < epoch * steps_per_epoch + step + 1:
            scheduler.step()
        if sums.get("steps") != step + 1:
            total_loss, m_loss, ce_loss, logits, y = cur["out"]
            new = {"loss": sums["loss"] + float(total_loss.detach()),
                   "metric": sums["metric"] + float(m_loss.detach()),
                   "ce": sums["ce"] + float(ce_loss.detach()),
                   "correct": sums["correct"] + float((logits.detach().argmax(1) == y).sum()),
                   "seen": sums["seen"] + int(y.shape[0]) * world, "time": sums["time"], "steps": step + 1}
            sums = new
        cur.update(phase="idle", at=(epoch, step + 1), out=None)

    epoch, step = start_epoch, start_step
    interrupts = DeferredInterrupt(enabled=not distributed)
    interrupts.__enter__()  # first Ctrl-C: finish the step, save at its boundary
    try:
        model.train()
        for epoch in range(start_epoch, cfg.epochs):
            epoch_idx = batches.epoch(epoch)
            first = start_step if epoch == start_epoch else 0
            if epoch == start_epoch and resume_gen_state is not None and first > 0:
                gen.set_state(resume_gen_state)
            else:
                gen.manual_seed(_derive_seed(cfg.seed, epoch, 2))
                sums = _zero_sums()
            bar = None
            if progress and is_main:
                bar = progress_bar(total=steps_per_epoch, initial=first, unit="step",
                                   desc=f"epoch {epoch + 1}/{cfg.epochs}")
            t0 = time.perf_counter()
            for step in range(first, steps_per_epoch):
                cur["at"] = (epoch, step)
                if interrupts.requested:  # a clean boundary: the previous step is finished
                    raise KeyboardInterrupt
                snapshot.take()
                cur["phase"] = "step"
                idx = epoch_idx[step, rank * per_rank:(rank + 1) * per_rank]
                x = images[idx.to(images.device)].to(device, non_blocking=True)
                y = labels_dev[idx.to(device)]
                x = preprocess.normalize(augment(preprocess.to_unit(x), gen))
                x = x.contiguous(memory_format=torch.channels_last)
                if device.type == "cuda":
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        emb, logits = run_model(x)
                else:
                    emb, logits = run_model(x)
                emb, logits = emb.float(), logits.float()
                total_loss = emb.new_zeros(())
                m_loss = ce_loss = emb.new_zeros(())
                if cfg.w_metric > 0:
                    tuples = miner_fn(emb, y) if miner_fn is not None else None
                    m_loss = loss_fn(emb, y, tuples)
                    total_loss = total_loss + cfg.w_metric * m_loss
                if cfg.w_ce > 0:
                    ce_loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                    total_loss = total_loss + cfg.w_ce * ce_loss
                if not cfg.w_ce > 0:
                    total_loss = total_loss + 0.0 * logits.sum()  # every parameter takes part (DDP)
                optimizer.zero_grad(set_to_none=True)
                total_loss.backward()
                if distributed and loss_params:
                    for p in loss_params:  # identical global-batch gradients, scaled by world in the wrapper
                        if p.grad is not None:
                            torch.distributed.all_reduce(p.grad)
                            p.grad /= world * world
                checked = step % check_every == 0 or step == steps_per_epoch - 1
                if checked:
                    value = total_loss.detach()
                    if distributed:
                        value = value.clone()
                        torch.distributed.all_reduce(value)
                    if not torch.isfinite(value):
                        raise FewShotError(
                            f"loss became {float(value)} at epoch {epoch + 1} step {step + 1}; stopped, "
                            f"{kept()} (try a lower --lr)")
                cur.update(phase="update", out=(total_loss, m_loss, ce_loss, logits, y))
                optimizer.step()  # its post-hook sets phase "stepped"
                book(epoch, step)
                if checked:
                    check_weights(epoch, step)
                if bar is not None:
                    elapsed = sums["time"] + time.perf_counter() - t0
                    bar.set_postfix(loss=f"{sums['loss'] / (step + 1):.3f}",
                                    img_s=f"{sums['seen'] / max(elapsed, 1e-9):.0f}", refresh=False)
                    bar.update(1)
            sums["time"] += time.perf_counter() - t0
            if distributed:  # BN running stats saw each rank's own last batch: every rank keeps rank 0's
                for buf in model.buffers():
                    torch.distributed.broadcast(buf, 0)
            if bar is not None:
                bar.close()
            step = steps_per_epoch
            n_steps = steps_per_epoch
            row = {"epoch": epoch + 1, "loss": sums["loss"] / n_steps,
                   "metric_loss": sums["metric"] / n_steps, "ce_loss": sums["ce"] / n_steps,
                   "train_acc": sums["correct"] / max(1, sums["seen"] // world),
                   "lr": optimizer.param_groups[0]["lr"], "img_per_s": sums["seen"] / max(sums["time"], 1e-9),
                   "epoch_time_s": sums["time"]}
            last_epoch = epoch + 1 == cfg.epochs
            if (epoch + 1) % cfg.val_every == 0 or last_epoch:
                tta_now = cfg.val_tta_every > 0 and (epoch + 1) % cfg.val_tta_every == 0
                row.update(validate(last_epoch or tta_now))
            improved = row.get("val_accuracy") is not None and row["val_accuracy"] > (
                best["accuracy"] if best else -1.0)
            row["best"] = bool(improved)
            check_weights(epoch, step - 1)  # never commit a non-finite state
            # The epoch's record goes into last.pt, the commit point (fewshot.training.runstate); from
            # here until it is written an interrupt writes nothing (last.pt is the previous epoch).
            cur["phase"] = "commit"
            metrics = [*metrics, row]
            ckpt = finalize(state(epoch + 1, 0, None))
            if improved:
                best = {"epoch": epoch + 1, "accuracy": row["val_accuracy"], "hash": ckpt["hash"]}
                ckpt.update(best=best, best_accuracy=best["accuracy"])
            if is_main:
                commit_epoch(out_dir, ckpt, improved, metrics)
                if progress:
                    shown = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in row.items() if not k.endswith("ci95") and k != "lr")
                    print(f"fewshot train: {shown}", file=sys.stderr)
                for callback in callbacks:
                    callback.on_epoch_end(row, metrics, out_dir)
            saved = (last_path, epoch + 1, 0)
            cur.update(phase="idle", at=(epoch + 1, 0))
            resume_gen_state = None
            if interrupts.requested:
                raise KeyboardInterrupt
        # Base mean (for centred-l2 features) of the best and the last encoders: best.pt first,
        # last.pt (the commit point) last; a --resume of a finished run redoes this part.
        cur["phase"] = "final"
        if is_main:
            last = load_checkpoint(last_path)
            if best_path.exists():
                best_ckpt = load_checkpoint(best_path)
                model.load_state_dict(best_ckpt["model"])
                best_ckpt["base_mean"] = embed_images(model, base_data.images, preprocess,
                                                      device).mean(0).cpu()
                model.load_state_dict(last["model"])
            else:
                best_ckpt = last
            last["base_mean"] = embed_images(model, base_data.images, preprocess, device).mean(0).cpu()
            save_checkpoint(best_path, best_ckpt)
            save_checkpoint(last_path, last)
        cur["phase"] = "done"
    except KeyboardInterrupt:
        if is_main:
            save_interrupted(cur, snapshot, book, lambda: bool(all_finite(watched)),
                              lambda at: finalize(state(*at, sums)), last_path, saved)
        raise
    finally:
        interrupts.__exit__()
        if distributed and torch.distributed.is_initialized():
            torch.distributed.barrier()
    best_acc = best["accuracy"] if best else -1.0
    return TrainResult(out_dir, best_path, last_path, metrics, best_acc if best_acc >= 0 else None,
                       held_out, cfg, model)
