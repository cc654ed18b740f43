"""Metric losses, miners and distances by name, all from pytorch-metric-learning.

Nothing here re-implements a loss: the registries only map a command-line name and
``--loss-arg k=v`` keyword arguments to the PML object, with the chosen distance passed to both
loss and miner. The Python API takes any PML loss or miner object as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from pytorch_metric_learning import distances, losses, miners
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.miners import BaseMiner

from fewshot.errors import FewShotError

__all__ = ["LOSSES", "MINERS", "DISTANCES", "PROXY_LOSSES", "build_loss", "build_miner",
           "build_distance", "parse_loss_args", "distance_name"]

DISTANCES: dict[str, Callable[[], distances.BaseDistance]] = {
    "cosine": distances.CosineSimilarity,
    "euclidean": lambda: distances.LpDistance(p=2, power=1, normalize_embeddings=True),
}

# Losses with learned class proxies / weights: they need num_classes and embedding_size, their
# parameters go in the optimizer, and they take no miner output.
PROXY_LOSSES = ("arcface", "proxyanchor")

LOSSES: dict[str, Callable[..., BaseMetricLossFunction]] = {
    "circle": losses.CircleLoss,
    "contrastive": losses.ContrastiveLoss,
    "triplet": losses.TripletMarginLoss,
    "multisimilarity": losses.MultiSimilarityLoss,
    "ntxent": losses.NTXentLoss,
    "supcon": losses.SupConLoss,
    "arcface": losses.ArcFaceLoss,
    "proxyanchor": losses.ProxyAnchorLoss,
}

MINERS: dict[str, Callable[..., BaseMiner] | None] = {
    "multisimilarity": miners.MultiSimilarityMiner,
    "triplet-semihard": lambda **kw: miners.TripletMarginMiner(**{"type_of_triplets": "semihard", **kw}),
    "triplet-hard": lambda **kw: miners.TripletMarginMiner(**{"type_of_triplets": "hard", **kw}),
    "batch-hard": miners.BatchHardMiner,
    "none": None,
}


def _number(text: str) -> int | float | bool | str | list:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"64,96"`` -> [64, 96]; else the text."""
    if "," in text:
        parts = [_number(part) for part in text.split(",")]
        return text if any(isinstance(p, str) for p in parts) else parts
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_loss_args(items: Iterable[str] | dict | None) -> dict:
    """``["m=0.25", "gamma=80"]`` -> ``{"m": 0.25, "gamma": 80}`` (numbers, booleans and
    comma-separated lists parsed)."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise FewShotError(f"--loss-arg wants key=value, got {item!r}")
        out[key.strip()] = _number(value)
    return out


def build_distance(name: str | distances.BaseDistance) -> distances.BaseDistance:
    if isinstance(name, distances.BaseDistance):
        return name
    if name not in DISTANCES:
        raise FewShotError(f"unknown distance {name!r}; choose one of {', '.join(DISTANCES)}")
    return DISTANCES[name]()


def distance_name(distance: str | distances.BaseDistance) -> str:
    """``"cosine"`` or ``"euclidean"``: how episodes should be scored for this distance."""
    if isinstance(distance, str):
        return distance
    return "cosine" if isinstance(distance, distances.CosineSimilarity) else "euclidean"


def build_loss(name_or_loss: str | BaseMetricLossFunction, *,
               distance: str | distances.BaseDistance = "cosine", num_classes: int | None = None,
               embedding_dim: int | None = None, **kwargs) -> torch.nn.Module:
    """A PML loss by name (``LOSSES``) with ``kwargs``; a loss object is returned unchanged.

    Proxy losses (arcface, proxyanchor) get ``num_classes`` and ``embedding_size``; their
    parameters must be optimised with the encoder (``train`` does that).
    """
    if isinstance(name_or_loss, torch.nn.Module):
        return name_or_loss
    name = str(name_or_loss).lower()
    if name not in LOSSES:
        raise FewShotError(f"unknown loss {name_or_loss!r}; choose one of {', '.join(LOSSES)}")
    kw = dict(kwargs)
    if name in PROXY_LOSSES:
        if num_classes is None or embedding_dim is None:
            raise FewShotError(f"loss {name} needs num_classes and embedding_dim")
        kw = {"num_classes": num_classes, "embedding_size": embedding_dim, **kw}
    if name != "arcface":  # ArcFace fixes its own (cosine) similarity
        kw.setdefault("distance", build_distance(distance))
    elif distance_name(distance) != "cosine":
        raise FewShotError("loss arcface is defined on cosine similarity; use --distance cosine")
    try:
        return LOSSES[name](**kw)
    except (TypeError, ValueError, AssertionError) as exc:
        raise FewShotError(f"bad arguments for loss {name} {kwargs}: {exc}") from None


def build_miner(name_or_miner: str | BaseMiner | None, *, distance: str | distances.BaseDistance = "cosine",
                **kwargs) -> BaseMiner | None:
    """A PML miner by name (``MINERS``), ``None`` for ``"none"``; a miner object is returned unchanged."""
    if name_or_miner is None or isinstance(name_or_miner, torch.nn.Module):
        return name_or_miner
    name = str(name_or_miner).lower()
    if name not in MINERS:
        raise FewShotError(f"unknown miner {name_or_miner!r}; choose one of {', '.join(MINERS)}")
    factory = MINERS[name]
    if factory is None:
        return None
    try:
        return factory(distance=build_distance(distance), **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise FewShotError(f"bad arguments for miner {name} {kwargs}: {exc}") from None
