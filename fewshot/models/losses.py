"""Metric losses, miners and distances by name, all from pytorch-metric-learning.

Nothing here re-implements a loss: the registries (:class:`fewshot.registry.Registry`) only map a
name and ``--loss-arg k=v`` keyword arguments (typed by the PML signature) to the PML object, with
the chosen distance passed to both loss and miner. The Python API takes any PML loss or miner
object as it is.
"""

from __future__ import annotations

from functools import partial

import torch
from pytorch_metric_learning import distances, losses, miners
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.miners import BaseMiner

from fewshot.errors import FewShotError
from fewshot.registry import Registry

__all__ = ["LOSSES", "MINERS", "DISTANCES", "build_loss", "build_miner", "build_distance", "distance_name",
           "is_proxy_loss"]

DISTANCES = Registry("distance", passthrough=distances.BaseDistance)
DISTANCES.register("cosine", distances.CosineSimilarity, options={},
                   doc="cosine similarity of the embeddings (PML CosineSimilarity).")
DISTANCES.register("euclidean", partial(distances.LpDistance, p=2, power=1, normalize_embeddings=True),
                   options={}, doc="Euclidean distance of unit-length embeddings (PML LpDistance).")

# Losses with learned class proxies / weights (proxy=True): they need num_classes and
# embedding_size, their parameters go in the optimizer, and they take no miner output.
LOSSES = Registry("loss", passthrough=torch.nn.Module, ignore_case=True)
_SUPPLIED = ("num_classes", "embedding_size")  # given by build_loss, not by the user
for _name, _cls, _proxy in (
        ("circle", losses.CircleLoss, False), ("contrastive", losses.ContrastiveLoss, False),
        ("triplet", losses.TripletMarginLoss, False), ("multisimilarity", losses.MultiSimilarityLoss, False),
        ("ntxent", losses.NTXentLoss, False), ("supcon", losses.SupConLoss, False),
        ("arcface", losses.ArcFaceLoss, True), ("proxyanchor", losses.ProxyAnchorLoss, True)):
    LOSSES.register(_name, _cls, skip=_SUPPLIED if _proxy else (), proxy=_proxy, doc=f"PML {_cls.__name__}.")

MINERS = Registry("miner", passthrough=torch.nn.Module, ignore_case=True)
MINERS.register("multisimilarity", miners.MultiSimilarityMiner, doc="PML MultiSimilarityMiner.")
MINERS.register("triplet-semihard", partial(miners.TripletMarginMiner, type_of_triplets="semihard"),
                doc="PML TripletMarginMiner, semi-hard triplets.")
MINERS.register("triplet-hard", partial(miners.TripletMarginMiner, type_of_triplets="hard"),
                doc="PML TripletMarginMiner, hard triplets.")
MINERS.register("batch-hard", miners.BatchHardMiner, doc="PML BatchHardMiner.")
MINERS.register("none", lambda: None, options={}, doc="no mining: the loss sees every pair / triplet.")


def build_distance(name: str | distances.BaseDistance) -> distances.BaseDistance:
    """A PML distance by name (``DISTANCES``); a distance object is returned unchanged."""
    return DISTANCES.create(name)


def distance_name(distance: str | distances.BaseDistance) -> str:
    """``"cosine"`` or ``"euclidean"``: how episodes should be scored for this distance."""
    if isinstance(distance, str):
        return distance
    return "cosine" if isinstance(distance, distances.CosineSimilarity) else "euclidean"


def is_proxy_loss(loss: str | torch.nn.Module) -> bool:
    """Whether ``loss`` names a loss with learned class proxies (arcface, proxyanchor)."""
    return isinstance(loss, str) and bool(LOSSES.get(loss).meta.get("proxy"))


def build_loss(name_or_loss: str | BaseMetricLossFunction, *,
               distance: str | distances.BaseDistance = "cosine", num_classes: int | None = None,
               embedding_dim: int | None = None, **kwargs) -> torch.nn.Module:
    """A PML loss by name (``LOSSES``, options in the name or as keywords, typed by the loss's
    signature); a loss object is returned unchanged.

    Proxy losses (arcface, proxyanchor) get ``num_classes`` and ``embedding_size``; their
    parameters must be optimised with the encoder (``train`` does that).
    """
    if not isinstance(name_or_loss, str):
        return LOSSES.create(name_or_loss)
    name = LOSSES.parse(name_or_loss)[0].name
    kw = dict(kwargs)
    if is_proxy_loss(name):
        if num_classes is None or embedding_dim is None:
            raise FewShotError(f"loss {name} needs num_classes and embedding_dim")
        kw = {"num_classes": num_classes, "embedding_size": embedding_dim, **kw}
    if name != "arcface":  # ArcFace fixes its own (cosine) similarity
        kw.setdefault("distance", build_distance(distance))
    elif distance_name(distance) != "cosine":
        raise FewShotError("loss arcface is defined on cosine similarity; use --distance cosine")
    return LOSSES.create(name_or_loss, **kw)


def build_miner(name_or_miner: str | BaseMiner | None, *, distance: str | distances.BaseDistance = "cosine",
                **kwargs) -> BaseMiner | None:
    """A PML miner by name (``MINERS``), ``None`` for ``"none"``; a miner object is returned unchanged."""
    if name_or_miner is None or not isinstance(name_or_miner, str):
        return MINERS.create(name_or_miner) if name_or_miner is not None else None
    if MINERS.parse(name_or_miner)[0].name == "none":
        return MINERS.create(name_or_miner, **kwargs)
    return MINERS.create(name_or_miner, distance=build_distance(distance), **kwargs)
