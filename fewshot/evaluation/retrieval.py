"""Retrieval figures of an embedding, the way metric learning is judged: every image of the set
queries all the others (leave-one-out) and the ranking is scored by precision@1, R-precision and
MAP@R (Musgrave, Belongie and Lim 2020, "A Metric Learning Reality Check").

Computed by pytorch-metric-learning's ``AccuracyCalculator`` with ``k="max_bin_count"`` (the
neighbour lists are as long as the largest class minus the query, which R-precision and MAP@R
need) and its exact torch k-NN (``CustomKNN``; faiss is not needed) under the distance the encoder
was trained with: cosine -> ``CosineSimilarity``, euclidean -> ``LpDistance``.
"""

from __future__ import annotations

import time

import torch

from fewshot.errors import FewShotError

__all__ = ["METRICS", "retrieval_figures", "describe"]

# PML's names -> the names in results.json (MAP@R: PML's "mean_average_precision_at_r")
METRICS = {"precision_at_1": "precision_at_1", "r_precision": "r_precision",
           "mean_average_precision_at_r": "map_at_r"}


def retrieval_figures(features: torch.Tensor, labels: torch.Tensor, distance: str = "cosine", *,
                      batch_size: int = 1024) -> dict:
    """``{"precision_at_1", "r_precision", "map_at_r", "images", "classes", "distance", "seconds"}``
    of leave-one-out retrieval over ``features [N, D]`` with class ``labels [N]``.

    Every class needs at least two images (a lone image has nothing to retrieve); the k-NN runs in
    blocks of ``batch_size`` queries, so memory stays ``batch_size x N``.
    """
    from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    if distance not in ("cosine", "euclidean"):
        raise FewShotError(f"retrieval distance must be cosine or euclidean, got {distance!r}")
    labels = torch.as_tensor(labels).long().cpu()
    if features.dim() != 2 or features.shape[0] != labels.shape[0]:
        raise FewShotError(f"retrieval needs features [N, D] and N labels, got {tuple(features.shape)} "
                           f"and {tuple(labels.shape)}")
    counts = torch.bincount(labels)
    counts = counts[counts > 0]
    if counts.numel() < 2 or int(counts.min()) < 2:
        raise FewShotError("retrieval needs at least two classes with at least two images each")
    start = time.perf_counter()
    dist = CosineSimilarity() if distance == "cosine" else LpDistance(normalize_embeddings=False)
    calc = AccuracyCalculator(include=tuple(METRICS), k="max_bin_count", device=torch.device("cpu"),
                              knn_func=CustomKNN(dist, batch_size=batch_size))
    with torch.no_grad():
        got = calc.get_accuracy(features.float().cpu(), labels)
    out = {METRICS[k]: float(v) for k, v in got.items()}
    out.update(images=int(labels.numel()), classes=int(counts.numel()), distance=distance,
               seconds=round(time.perf_counter() - start, 4))
    return out


def describe(r: dict) -> str:
    """One line: ``retrieval (N images, leave-one-out, cosine): P@1 x%, R-precision y%, MAP@R z%``."""
    return (f"retrieval ({r['images']} images, {r['classes']} classes, leave-one-out, {r['distance']}): "
            f"P@1 {100 * r['precision_at_1']:.2f}%, R-precision {100 * r['r_precision']:.2f}%, "
            f"MAP@R {100 * r['map_at_r']:.2f}%")
