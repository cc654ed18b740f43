"""Every image's views as the tangent head (:mod:`fewshot.heads.tangent`) reads them.

One embedding pass gives both the features (exactly :func:`fewshot.evaluation.features.embed`'s:
the mean of each symmetry's views, which every other head takes) and a :class:`ViewTangents`: per
image and symmetry, the mean of its views *after* the feature transform (each view transformed on
its own, e.g. ``pt``: square root, unit length) and the ``k`` leading principal directions of
those transformed views around it, an orthonormal ``[k, D]`` basis of how the image's feature moves
under the views' deformations. Directions along which the views do not spread (a blank image) are
zero. The tangent distance is measured from a query's view mean (at unit length per block under
a unit-length transform, where single views lie) to a support image's view mean along its
directions, all in the same transformed space (:meth:`ViewTangents.gather`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from episodes.imageset import ImageSet
from fewshot.errors import FewShotError
from fewshot.evaluation.features import check_finite, collect, forward_passes, image_tensor, transform
from fewshot.evaluation.tta import TTA

__all__ = ["ViewTangents", "view_tangents", "embed_with_tangents"]


@dataclass
class ViewTangents:
    """What the tangent head reads of every image: ``features [N, blocks * D]`` (float32, the mean
    of each symmetry block's transformed views) and ``directions [N, blocks, k, D]`` (float16,
    orthonormal per image and block). ``unit``: the transform gives every view unit length (``l2``,
    ``cl2n``, ``pt``), so queries are scored at unit length per block (:meth:`gather`)."""

    features: torch.Tensor
    directions: torch.Tensor
    unit: bool = True

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def k(self) -> int:
        return self.directions.shape[2]

    def gather(self, index: torch.Tensor, n_support: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Episode rows ``index [E, S+Q]`` (support first): the support rows' view means ``[E, S,
        D]`` and directions ``[E, S, blocks, k, D / blocks]``, and the query rows' view means at unit
        length per block ``[E, Q, D]``, all float32.

        A support image is the centre of its views, through which its subspace passes; with a
        ``unit`` transform a query is scored as a point where single views lie, on the unit sphere of
        each block (otherwise as its view mean). Measured on Omniglot dev val, this scores 0.05-0.15
        points above view means on both sides (``benchmarks/RESULTS.md``).
        """
        index = index.to(self.features.device)
        e, (blocks, d) = index.shape[0], (self.directions.shape[1], self.directions.shape[-1])
        rows = index[:, :n_support].reshape(-1)
        support = self.features[rows].view(e, n_support, -1)
        directions = self.directions[rows].float().view(e, n_support, *self.directions.shape[1:])
        query = self.features[index[:, n_support:].reshape(-1)].view(e, -1, blocks, d)
        query = torch.nn.functional.normalize(query, dim=-1) if self.unit else query
        return support, directions, query.flatten(2)


def view_tangents(views: torch.Tensor, k: int) -> torch.Tensor:
    """Orthonormal leading directions of each set of views ``[..., V, D]`` around its mean:
    ``[..., min(k, V - 1), D]`` (rows of zeros where the views do not spread that far)."""
    centred = views - views.mean(-2, keepdim=True)
    _, sv, vh = torch.linalg.svd(centred, full_matrices=False)
    keep = min(k, views.shape[-2] - 1)
    sv, vh = sv[..., :keep], vh[..., :keep, :]
    floor = sv[..., :1] * 1e-4 + torch.finfo(sv.dtype).tiny
    return vh * (sv > floor).unsqueeze(-1).to(vh.dtype)


def embed_with_tangents(model: torch.nn.Module, images: ImageSet | torch.Tensor, preprocess: Callable | None,
                        *, tta: TTA, k: int, kind: str, base_mean: torch.Tensor | None = None,
                        device: str | torch.device | None = None, batch_size: int = 256,
                        progress: bool = True) -> tuple[torch.Tensor, ViewTangents]:
    """Features ``float32 [N, symmetries * D]`` (untransformed, as :func:`embed` returns them) and
    the images' :class:`ViewTangents` under transform ``kind`` (``min(k, views - 1)`` directions)."""
    if tta.views < 2:
        raise FewShotError("the tangent head needs each image's TTA views: use --tta N with N >= 2")
    x_all = image_tensor(images)

    def parts(emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        views = transform(tta.per_view(emb), kind, base_mean)              # [B, blocks, views, D]
        return tta.reduce(emb), views.mean(2).flatten(1), view_tangents(views, k).half()

    passes = forward_passes(model, x_all, preprocess, device=device, batch_size=batch_size,
                            progress=progress, tta=tta)
    out = collect(passes, x_all.shape[0], parts)
    if out is None:
        return torch.empty(0, 0), ViewTangents(torch.empty(0, 0),
                                               torch.empty(0, tta.symmetries, 0, 0, dtype=torch.float16))
    check_finite(out[0], getattr(images, "name", "") or None)
    return out[0], ViewTangents(out[1], out[2], unit=kind != "none")
