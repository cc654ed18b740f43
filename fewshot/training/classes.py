"""Class augmentation: more base classes for the metric loss and the classifier.

A rotated or mirrored character is a different character (the Omniglot literature's 4x and 8x
classes), and procedural glyphs add thousands of handwriting-like classes with no download.
Each function returns a new :class:`~episodes.ImageSet` whose new classes are named apart from
the originals (``@rot90``, ``@mirror``, ``synthetic/...``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from episodes import ImageSet
from fewshot.errors import FewShotError
from fewshot.seeds import derive_seed

__all__ = ["rotate_classes", "mirror_classes", "synthetic_classes"]


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
    glyphs = make_glyphs(num_classes, per_class, size=2 * max(h, w), seed=derive_seed(seed, 7919))
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
