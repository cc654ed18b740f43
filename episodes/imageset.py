"""`ImageSet`: a whole labelled image collection decoded once into memory.

Every reader returns one. Images live in a single uint8 tensor ``[N, C, H, W]`` so that
training gathers batches by indexing (no per-image decode in the epoch loop) and evaluation
embeds a split in one batched pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DatasetError


@dataclass
class ImageSet:
    """Decoded images with their labels.

    Attributes:
        images: uint8 ``[N, C, H, W]`` (C is 1 or 3); for ink-on-paper sets ink is high.
        labels: int64 ``[N]``, indices into ``class_names``.
        class_names: one name per class (Omniglot: ``"Alphabet/characterNN"``; miniImageNet: wnid).
        ids: a stable identifier per image (a relative path, or ``"<file>#<row>"`` for pickles).
        groups: optional group name per *class* (the Omniglot alphabet), for within-group episodes.
        name: a short human-readable description of the source.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    ids: list[str]
    groups: list[str] | None = None
    name: str = ""
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DatasetError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                               f"{tuple(self.images.shape)}", self.name or None)
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        n = self.images.shape[0]
        if self.labels.shape != (n,) or len(self.ids) != n:
            raise DatasetError(f"{n} images but {tuple(self.labels.shape)} labels and "
                               f"{len(self.ids)} ids", self.name or None)
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)):
            raise DatasetError("labels out of range of class_names", self.name or None)
        if self.groups is not None and len(self.groups) != len(self.class_names):
            raise DatasetError("groups must give one group per class", self.name or None)

    # ----------------------------------------------------------------- shape
    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def class_counts(self) -> np.ndarray:
        """Images per class, ``[num_classes]``."""
        return np.bincount(self.labels.numpy(), minlength=self.num_classes)

    @property
    def group_names(self) -> list[str]:
        """Distinct groups in first-seen order (empty when the set has none)."""
        return list(dict.fromkeys(self.groups)) if self.groups else []

    # ------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> str:
        """Hash of class names, groups, image ids, labels, image shape and the pixels themselves.

        Two loads of the same data agree; two sets that differ in any pixel, membership, labelling
        or size never share a fingerprint, so nothing keyed on it (cached features, manifests,
        resumed runs) is ever reused across different data, whatever the folders are called.
        Computed once per set, on first use: SHA-256 over the uint8 pixels runs at about 1 GB/s
        (0.8 s for the 38,400 images of the miniImageNet base split; benchmarks/RESULTS.md).
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(repr(tuple(self.images.shape[1:])).encode())
            h.update("\x1f".join(self.class_names).encode())
            h.update("\x1f".join(self.groups or []).encode())
            h.update("\x1f".join(self.ids).encode())
            h.update(self.labels.numpy().astype("<i8").tobytes())
            h.update(pixel_bytes(self.images))
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def describe(self) -> str:
        counts = self.class_counts()
        c, (hh, ww) = self.channels, self.image_size
        span = f"{counts.min()}-{counts.max()}" if len(counts) else "0"
        groups = f", {len(self.group_names)} groups" if self.groups else ""
        return (f"{self.name or 'imageset'}: {len(self)} images, {self.num_classes} classes "
                f"({span} images each{groups}), {c}x{hh}x{ww}")

    # ----------------------------------------------------------- selection
    def subset(self, indices: Sequence[int] | torch.Tensor | np.ndarray, name: str | None = None) -> ImageSet:
        """The images at ``indices``, keeping only classes that still have images (relabelled)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        labels = self.labels[idx]
        kept = torch.unique(labels)
        remap = torch.full((self.num_classes,), -1, dtype=torch.int64)
        remap[kept] = torch.arange(len(kept))
        return ImageSet(
            images=self.images[idx],
            labels=remap[labels],
            class_names=[self.class_names[i] for i in kept.tolist()],
            ids=[self.ids[i] for i in idx.tolist()],
            groups=None if self.groups is None else [self.groups[i] for i in kept.tolist()],
            name=self.name if name is None else name,
        )

    def select_classes(self, classes: Sequence[int] | Sequence[str], name: str | None = None) -> ImageSet:
        """Only the given classes (indices or names), in the given order."""
        if len(classes) and isinstance(classes[0], str):
            lookup = {n: i for i, n in enumerate(self.class_names)}
            missing = [c for c in classes if c not in lookup]
            if missing:
                raise DatasetError(f"unknown classes {missing[:5]}", self.name or None)
            classes = [lookup[c] for c in classes]
        order = torch.as_tensor(list(classes), dtype=torch.int64)
        remap = torch.full((self.num_classes,), -1, dtype=torch.int64)
        remap[order] = torch.arange(len(order))
        keep = torch.nonzero(remap[self.labels] >= 0).flatten()
        return ImageSet(
            images=self.images[keep],
            labels=remap[self.labels[keep]],
            class_names=[self.class_names[i] for i in order.tolist()],
            ids=[self.ids[i] for i in keep.tolist()],
            groups=None if self.groups is None else [self.groups[i] for i in order.tolist()],
            name=self.name if name is None else name,
        )

    def select_groups(self, groups: Sequence[str], name: str | None = None) -> ImageSet:
        """Only the classes whose group is in ``groups``."""
        if self.groups is None:
            raise DatasetError("this image set has no groups", self.name or None)
        unknown = sorted(set(groups) - set(self.groups))
        if unknown:
            raise DatasetError(f"unknown groups {unknown}; known: {self.group_names}", self.name or None)
        wanted = set(groups)
        return self.select_classes([i for i, g in enumerate(self.groups) if g in wanted], name=name)

    def split_classes(self, fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """Seeded class-disjoint split: (the rest, a ``fraction`` of the classes)."""
        rng = np.random.default_rng(seed)
        perm = rng.permutation(self.num_classes)
        n_held = max(1, int(round(fraction * self.num_classes)))
        if n_held >= self.num_classes:
            raise DatasetError(f"cannot hold out {fraction:.0%} of {self.num_classes} classes",
                               self.name or None)
        held, rest = sorted(perm[:n_held].tolist()), sorted(perm[n_held:].tolist())
        return self.select_classes(rest), self.select_classes(held)

    # ------------------------------------------------------------- transform
    def resized(self, size: int | tuple[int, int] | None) -> ImageSet:
        """Images resized (antialiased bilinear) to ``size``; the same set if already that size."""
        if size is None:
            return self
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(self.image_size) == hw:
            return self
        return ImageSet(resize_uint8(self.images, hw), self.labels, self.class_names, self.ids,
                        self.groups, self.name)

    def with_channels(self, channels: int) -> ImageSet:
        """Grey to RGB by repetition, RGB to grey by luminance."""
        if channels == self.channels:
            return self
        if channels == 3 and self.channels == 1:
            images = self.images.expand(-1, 3, -1, -1).contiguous()
        elif channels == 1 and self.channels == 3:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (self.images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        else:
            raise DatasetError(f"cannot convert {self.channels} channels to {channels}", self.name or None)
        return ImageSet(images, self.labels, self.class_names, self.ids, self.groups, self.name)

    @staticmethod
    def concat(sets: Sequence[ImageSet], name: str = "") -> ImageSet:
        """Several sets as one; classes with the same name are merged."""
        if not sets:
            raise DatasetError("nothing to concatenate")
        shapes = {tuple(s.images.shape[1:]) for s in sets}
        if len(shapes) > 1:
            raise DatasetError(f"cannot concatenate images of shapes {sorted(shapes)}")
        names: dict[str, int] = {}
        groups: list[str] = []
        labels = []
        for s in sets:
            mapping = []
            for i, cname in enumerate(s.class_names):
                if cname not in names:
                    names[cname] = len(names)
                    groups.append(s.groups[i] if s.groups else "")
                mapping.append(names[cname])
            labels.append(torch.as_tensor(mapping, dtype=torch.int64)[s.labels])
        has_groups = all(s.groups is not None for s in sets)
        return ImageSet(torch.cat([s.images for s in sets]), torch.cat(labels), list(names),
                        [i for s in sets for i in s.ids], groups if has_groups else None, name)


def pixel_bytes(images: torch.Tensor) -> memoryview:
    """The raw bytes of a uint8 image tensor, without a copy when it is already contiguous on the CPU."""
    return memoryview(np.ascontiguousarray(images.detach().cpu().numpy())).cast("B")


def resize_uint8(images: torch.Tensor, hw: tuple[int, int], chunk: int = 4096) -> torch.Tensor:
    """Antialiased bilinear resize of a uint8 ``[N, C, H, W]`` tensor, in chunks to bound memory."""
    out = torch.empty((images.shape[0], images.shape[1], *hw), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].float()
        y = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out
