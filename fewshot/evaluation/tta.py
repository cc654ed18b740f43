"""Test-time augmentation (TTA): every image embedded as itself plus ``views - 1`` augmented
copies, the embeddings averaged (unit embeddings under a cosine-trained encoder); optionally under
several symmetries of the square too, each an embedding of its own, concatenated.

A :class:`TTA` is the whole setting: the number of views, the augmentation (options of
:class:`fewshot.training.augment.Augment`, geometric only), the seed and whether views are averaged as
unit vectors. Its views are a fixed, seeded set of ``views - 1`` random transforms applied to
*every* image (view 0 is the image itself), so the features of an image do not depend on which
other images share its batch, on the batch size or on the order of the data set; and every image
is embedded on its own, so a 1-shot episode stays 1-shot.

Where the setting comes from (:func:`resolve_tta`): the checkpoint's record (``ckpt["tta"]``,
written at training time from the recipe's ``val_tta`` / ``val_tta_augment`` / ``val_tta_symmetries``,
or ``eval_tta`` / ``eval_tta_symmetries`` where a recipe evaluates with more passes than it
validates with; older checkpoints: the same keys of their stored config), then the user's
overrides (``--tta N``, ``--tta-arg K=V``).
Without a recipe setting the default is one view (plain embedding) with the augmentation of the
data kind (:func:`default_augment`: mild affine for drawings, flips and mild crops for photos),
so ``--tta 16`` alone does the sensible thing.

Symmetries (``symmetries`` 2, 4 or 8: the mirror image, the four quarter turns, all eight
symmetries of the square): each image is also embedded turned and mirrored, each symmetry with the
same views, and the feature is the concatenation of the per-symmetry embeddings, so its cosine
similarity is the mean of the symmetries' similarities (the feature transform is applied to each
block; :func:`fewshot.evaluation.features.transform` with ``blocks``). It pays for an encoder
trained with rotated and mirrored classes (``rotate_classes`` / ``mirror_classes``): every turned
image is another character to it, scored by another expert on the same pair of drawings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fewshot.errors import FewShotError
from fewshot.options import declared, parse_pairs, typed_options
from fewshot.seeds import derive_seed
from fewshot.training.augment import AUGMENT_MODES, Augment

__all__ = ["TTA", "DRAWING_AUGMENT", "PHOTO_AUGMENT", "SYMMETRIES", "check_symmetries", "default_augment",
           "dihedral", "tta_from_config", "checkpoint_tta", "resolve_tta", "override_tta", "parse_tta_args",
           "images_per_pass"]

# Drawings (1 channel): milder than the Omniglot training augmentation (the recipe's choice).
DRAWING_AUGMENT = {"mode": "affine", "degrees": 15.0, "translate": 0.08, "scale": [0.85, 1.15], "shear": 10.0}
# Photos (3 channels): horizontal flips and mild random resized crops (60-100% of the area).
PHOTO_AUGMENT = {"mode": "crop", "scale": [0.6, 1.0], "ratio": [0.8, 1.25], "flip": True}
MODE_DEFAULTS = {"affine": DRAWING_AUGMENT, "crop": PHOTO_AUGMENT, "none": {"mode": "none"}}
_NOT_GEOMETRIC = ("brightness", "contrast", "saturation", "erase")
# symmetries of the square a TTA can add: the identity; + the mirror image; the four quarter turns;
# all eight (the dihedral group), as indices of :func:`dihedral`
SYMMETRIES = {1: (0,), 2: (0, 4), 4: (0, 1, 2, 3), 8: tuple(range(8))}


def check_symmetries(value: Any, what: str) -> int:
    """``value`` as a count of :data:`SYMMETRIES` (1, 2, 4 or 8), else a one-line error naming ``what``."""
    if isinstance(value, bool) or value not in SYMMETRIES:
        raise FewShotError(f"{what} must be 1, 2, 4 or 8, got {value!r}")
    return int(value)


def dihedral(x: torch.Tensor, g: int) -> torch.Tensor:
    """Symmetry ``g`` (0-7) of the square of a batch ``[..., H, W]``: a turn by ``90 * (g % 4)``
    degrees counter-clockwise, then the mirror image (left-right) for ``g >= 4``."""
    y = torch.rot90(x, g % 4, dims=(-2, -1)) if g % 4 else x
    return y.flip(-1) if g >= 4 else y


def default_augment(channels: int) -> dict:
    """The TTA augmentation of a data kind: photos (3 channels) flips + crops, drawings affine."""
    return dict(PHOTO_AUGMENT if int(channels) == 3 else DRAWING_AUGMENT)


@dataclass
class TTA:
    """A test-time augmentation setting.

    Attributes:
        views: embeddings averaged per image (1 = plain embedding, no augmentation).
        augment: :class:`~fewshot.training.augment.Augment` options of views 1.. (geometric only).
        seed: fixes the ``views - 1`` transforms (the same for every image).
        normalize: average unit-length embeddings (cosine-trained encoders) instead of raw ones.
        symmetries: 1, 2 (+ mirror image), 4 (quarter turns) or 8 (all symmetries of the square):
            each embedded with the views, the per-symmetry embeddings concatenated (``[N, symmetries
            * D]``); the turns need square images.
    """

    views: int = 1
    augment: dict = field(default_factory=lambda: dict(DRAWING_AUGMENT))
    seed: int = 0
    normalize: bool = True
    symmetries: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.views, bool) or not isinstance(self.views, (int, np.integer)) or self.views < 1:
            raise FewShotError(f"TTA views must be a positive integer, got {self.views!r}")
        self.views = int(self.views)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise FewShotError(f"TTA seed must be an integer, got {self.seed!r}")
        self.seed = int(self.seed)
        aug = Augment.from_dict(self.augment)  # unknown keys and bad values: one line
        if any(getattr(aug, k) for k in _NOT_GEOMETRIC):
            raise FewShotError("TTA takes geometric augmentation only (affine, crop, flip, elastic); "
                               f"drop {', '.join(k for k in _NOT_GEOMETRIC if getattr(aug, k))}")
        self.augment = aug.to_dict()
        self.normalize = bool(self.normalize)
        self.symmetries = check_symmetries(self.symmetries, "TTA symmetries")
        self._aug = aug

    @property
    def plain(self) -> bool:
        return self.views == 1 and self.symmetries == 1

    @property
    def passes(self) -> int:
        """Forward rows per image: views x symmetries."""
        return self.views * self.symmetries

    def to_dict(self) -> dict:
        """The record (``symmetries`` only when more than one: older records and caches stay valid)."""
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        if d["symmetries"] == 1:
            del d["symmetries"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TTA:
        if not isinstance(d, dict):
            raise FewShotError(f"a TTA record must be a dict, got {type(d).__name__}")
        unknown = sorted(set(d) - {"views", "augment", "seed", "normalize", "symmetries"})
        if unknown:
            raise FewShotError(f"unknown TTA settings {unknown}; known: views, augment, seed, normalize, "
                               "symmetries")
        return cls(**d)

    def describe(self) -> str:
        """One line for reports: ``plain`` or ``32 views (affine degrees=15 ...; seed 0)``."""
        sym = "" if self.symmetries == 1 else f" x {self.symmetries} symmetries"
        if self.views == 1:
            return "plain (1 view)" if self.plain else f"1 view{sym}"
        a = self.augment
        keys = {"affine": ("degrees", "translate", "scale", "shear"), "crop": ("scale", "ratio"),
                "none": ()}[a["mode"]]
        opts = [f"{k}={_short(a[k])}" for k in keys] + (["flip"] if a["flip"] else []) + (
            [f"elastic={_short(a['elastic'])}"] if a["elastic"] else [])
        return f"{self.views} views ({a['mode']} {' '.join(opts)}; seed {self.seed}){sym}".replace(" ;", ";")

    # ------------------------------------------------------------------ the views
    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """Views of a float batch ``[B, C, H, W]`` in [0, 1]: ``[B * symmetries * views, C, H, W]``,
        the rows of each image together (symmetry-major), view 0 of symmetry 0 the image itself.

        The ``views - 1`` transforms are drawn once from ``seed`` and applied to every image (and
        every symmetry of it) in one resampling pass (the images travel as channels of one
        ``[views - 1, B*C, H, W]`` batch).
        """
        if self.symmetries > 1:
            if x.shape[-1] != x.shape[-2] and self.symmetries > 2:
                raise FewShotError(f"TTA symmetries {self.symmetries} turn images by quarter turns, which "
                                   f"needs square images; these are {x.shape[-2]}x{x.shape[-1]} "
                                   "(use symmetries 2, the mirror image, or 1)")
            x = torch.stack([dihedral(x, g) for g in SYMMETRIES[self.symmetries]], 1).flatten(0, 1)
        b, c, h, w = x.shape
        if self.views == 1 or b == 0:
            return x
        gen = torch.Generator(device=x.device)
        gen.manual_seed(derive_seed(self.seed, 3))
        stacked = x.reshape(1, b * c, h, w).expand(self.views - 1, -1, -1, -1)
        views = self._aug(stacked, gen).view(self.views - 1, b, c, h, w).transpose(0, 1)
        return torch.cat([x.unsqueeze(1), views], 1).reshape(b * self.views, c, h, w)

    def reduce(self, emb: torch.Tensor) -> torch.Tensor:
        """Embeddings of :meth:`expand`'s rows ``[B * symmetries * views, D]`` -> the mean of every
        symmetry's views, the symmetries concatenated: ``[B, symmetries * D]``."""
        if self.plain:
            return emb
        return self.per_view(emb).mean(2).flatten(1)

    def per_view(self, emb: torch.Tensor) -> torch.Tensor:
        """Embeddings of :meth:`expand`'s rows ``[B * symmetries * views, D]`` as ``[B, symmetries,
        views, D]`` (unit length when views are averaged as unit vectors): what :meth:`reduce`
        averages, and what the tangent head's view directions are computed from."""
        emb = emb.view(-1, self.symmetries, self.views, emb.shape[-1])
        return F.normalize(emb, dim=-1) if self.normalize and self.views > 1 else emb


def _short(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "-".join(_short(x) for x in v)
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


# ---------------------------------------------------------------- where it comes from
def tta_from_config(config: dict, channels: int, distance: str | None, *, validation: bool = False) -> TTA:
    """The TTA of a training config: what a checkpoint records and evaluation reuses (``eval_tta``
    views and ``eval_tta_symmetries`` where set, else validation's), or with ``validation`` what
    the run validates with (``val_tta``, ``val_tta_symmetries``); both with ``val_tta_augment`` over
    the data kind's default and the run's seed."""
    config = config or {}
    views, symmetries = config.get("val_tta") or 1, config.get("val_tta_symmetries") or 1
    if not validation:
        views, symmetries = config.get("eval_tta") or views, config.get("eval_tta_symmetries") or symmetries
    augment = {**default_augment(channels), **dict(config.get("val_tta_augment") or {})}
    return TTA(int(views), augment, int(config.get("seed") or 0),
               normalize=(distance or "cosine") == "cosine", symmetries=int(symmetries))


def checkpoint_tta(info: dict) -> TTA:
    """The TTA a checkpoint was validated with: its ``tta`` record, else from its config."""
    record = info.get("tta")
    if isinstance(record, dict):
        try:
            return TTA.from_dict(record)
        except FewShotError as exc:
            raise FewShotError(f"bad TTA record in the checkpoint ({exc})", info.get("path")) from None
    channels = getattr(info.get("preprocess"), "channels", 1)
    return tta_from_config(info.get("config") or {}, channels, info.get("distance"))


def resolve_tta(info: dict, views: int | None = None, args: dict | None = None) -> TTA:
    """The checkpoint's TTA (:func:`checkpoint_tta`) with the user's overrides (:func:`override_tta`)."""
    return override_tta(checkpoint_tta(info), views, args)


def override_tta(base: TTA, views: int | None = None, args: dict | None = None) -> TTA:
    """``base`` with the user's overrides: ``views`` and augmentation options ``args`` (``seed``,
    ``normalize`` and ``symmetries`` among them). A new ``mode`` starts from that mode's default
    options (affine: the drawing one, crop: the photo one)."""
    args = dict(args or {})
    seed = args.pop("seed", base.seed)
    normalize = args.pop("normalize", base.normalize)
    symmetries = args.pop("symmetries", base.symmetries)
    augment = dict(base.augment)
    mode = args.get("mode")
    if mode is not None and mode != augment.get("mode"):
        augment = dict(MODE_DEFAULTS[AUGMENT_MODES.get(mode).name])
    augment.update(args)
    return TTA(base.views if views is None else views, augment, seed, normalize, symmetries)


def parse_tta_args(items: list[str] | dict | None) -> dict:
    """``["degrees=20", "scale=0.8,1.2", "flip=true"]`` -> options typed by their declarations
    (:class:`Augment`'s fields, ``seed``, ``normalize`` and ``symmetries``)."""
    tta = declared(TTA)[0]
    options = {**declared(Augment)[0], **{k: tta[k] for k in ("seed", "normalize", "symmetries")}}
    return typed_options(options, parse_pairs(items, "TTA option"), "TTA")


def images_per_pass(views: int, batch_size: int) -> int:
    """Images per forward pass so that a pass holds about ``batch_size`` rows of views."""
    return max(1, int(batch_size) // max(1, int(views)))
