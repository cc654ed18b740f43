"""Checkpoints: atomic writes, safe reads, and rebuilding an encoder from one.

A checkpoint is a plain dict of tensors, numbers, strings and containers, so it loads with
``torch.load(weights_only=True)`` (no pickle code runs). It is written to a temporary file in the
target folder, fsynced and renamed over the old one: a kill at any moment leaves either the
previous checkpoint or the new one, whole.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from episodes.atomic import atomic_open
from fewshot.errors import FewShotError
from fewshot.finite import all_finite, nonfinite_names
from fewshot.models.encoders import INIT_ONLY, build_encoder
from fewshot.models.preprocess import Preprocess

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "load_encoder", "state_hash",
           "check_finite_checkpoint"]

FORMAT = "fewshot-checkpoint/1"


def save_checkpoint(path: str | os.PathLike, obj: dict) -> Path:
    """Write ``obj`` to ``path`` atomically (temporary file, fsync, rename, fsync of the folder).

    A state with NaN / inf weights is never written (FewShotError; the old file stays)."""
    check_finite_checkpoint(obj, path, "not written; the previous file, if any, is intact")
    with atomic_open(path, "wb") as fh:
        torch.save({"format": FORMAT, **obj}, fh)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a fewshot checkpoint with ``weights_only=True``; FewShotError if missing, corrupt or foreign."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FewShotError("no such checkpoint", path)
    if os.path.isdir(path):
        raise FewShotError("is a folder, not a checkpoint (give best.pt or last.pt)", path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - anything unreadable is a bad file
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            cause = "holds Python objects that weights_only loading refuses to run"
        raise FewShotError(f"not a readable checkpoint ({cause[:200]})", path) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise FewShotError("not a fewshot checkpoint (no fewshot-checkpoint format tag)", path)
    for key in ("model", "encoder"):
        if key not in obj:
            raise FewShotError(f"fewshot checkpoint lacks {key!r}", path)
    check_finite_checkpoint(obj, path)
    return obj


def check_finite_checkpoint(ckpt: dict, path: str | os.PathLike | None = None,
                            consequence: str = "it cannot be used: train again (with a lower learning "
                                               "rate) or use an earlier checkpoint") -> None:
    """Refuse a checkpoint whose weights, buffers or base mean hold NaN or inf, in one line: every
    figure computed from it would be silently wrong (features at chance, NaN probabilities)."""
    named = dict(ckpt["model"]) if isinstance(ckpt.get("model"), dict) else {}
    if isinstance(ckpt.get("base_mean"), torch.Tensor):
        named["base_mean"] = ckpt["base_mean"]
    if isinstance(ckpt.get("base_class_means"), dict):
        named.update({f"base_class_means.{k}": v for k, v in ckpt["base_class_means"].items()})
    tensors = [t for t in named.values() if isinstance(t, torch.Tensor)]
    if bool(all_finite(tensors)):  # one fused check; the names only when it fails
        return
    bad = nonfinite_names(named)
    if bad:
        raise FewShotError(f"checkpoint holds non-finite values ({len(bad)} tensor(s), e.g. {bad[0]}); "
                           f"{consequence}", path)


def _class_means_of(ckpt: dict, path: str | None) -> dict | None:
    """The checkpoint's ``base_class_means`` (``{transform: [C, D]}``), checked; None if absent."""
    means = ckpt.get("base_class_means")
    if means is None:
        return None
    if not isinstance(means, dict) or not all(isinstance(v, torch.Tensor) and v.ndim == 2
                                              for v in means.values()):
        raise FewShotError("checkpoint's base_class_means is not a {transform: [classes, dim]} table", path)
    return {str(k): v.float() for k, v in means.items()}


def _transform_of(ckpt: dict, path: str | None) -> str | None:
    """The checkpoint's recorded evaluation transform (a name of ``TRANSFORMS``), checked; None if absent."""
    from fewshot.evaluation.features import TRANSFORMS

    kind = ckpt.get("transform")
    if kind is not None and (not isinstance(kind, str) or kind not in TRANSFORMS):
        raise FewShotError(f"checkpoint records an unknown feature transform {kind!r} "
                           f"(known: {', '.join(TRANSFORMS)})", path)
    return kind


def state_hash(state_dict: dict) -> str:
    """16-hex content hash of a model state (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        h.update(key.encode())
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(t).encode())
    return h.hexdigest()[:16]


def load_encoder(path_or_dict: str | os.PathLike | dict, device: str | torch.device = "cpu"
                 ) -> tuple[torch.nn.Module, dict]:
    """Rebuild the trained encoder (in eval mode) and its info from a checkpoint.

    ``info``: ``preprocess`` (:class:`Preprocess`), ``distance`` (``"cosine"``/``"euclidean"``),
    ``hash`` (16 hex of the weights), ``path``, ``base_classes`` (names), ``base_mean``
    (``[D]`` mean embedding of the base training images), ``base_class_means`` (``{transform:
    [C, D]}`` per-class means of the same images, or None), ``config`` (the training config),
    ``tta`` (the recorded test-time augmentation, or None) and ``transform`` (the recorded feature
    transform of evaluation, or None: by the distance).
    """
    if isinstance(path_or_dict, dict):
        ckpt, path = path_or_dict, path_or_dict.get("path")
        check_finite_checkpoint(ckpt, path)
    else:
        path = os.fspath(path_or_dict)
        ckpt = load_checkpoint(path)
    spec = ckpt["encoder"]
    if spec.get("custom"):
        raise FewShotError(f"checkpoint of a custom encoder module ({spec.get('name')}) cannot be rebuilt "
                           "by name; build the module and load ckpt['model'] into it", path)
    model = build_encoder(spec["name"], in_channels=spec["in_channels"], num_classes=spec["num_classes"],
                          embedding_dim=spec.get("embedding_dim"),
                          **{k: v for k, v in spec.get("kwargs", {}).items() if k not in INIT_ONLY})
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise FewShotError(f"weights do not fit encoder {spec['name']} ({str(exc).splitlines()[0]})",
                           path) from None
    model = model.to(device).eval()
    base_mean = ckpt.get("base_mean")
    info = {
        "preprocess": Preprocess.from_dict(ckpt["preprocess"]),
        "distance": ckpt.get("distance", "cosine"),
        "hash": ckpt.get("hash") or state_hash(ckpt["model"]),
        "path": path,
        "base_classes": list(ckpt.get("base_classes", [])),
        "base_mean": None if base_mean is None else base_mean.float().to(device),
        # per feature transform, [C, D] (fewshot.evaluation.features.class_means); None when not recorded
        "base_class_means": _class_means_of(ckpt, path),
        "config": dict(ckpt.get("config", {})),
        "epoch": ckpt.get("epoch"),
        "val_accuracy": ckpt.get("val_accuracy"),
        "tta": ckpt.get("tta"),  # the recipe's test-time augmentation (fewshot.evaluation.tta.checkpoint_tta)
        "transform": _transform_of(ckpt, path),  # the recipe's feature transform for evaluation, or None
    }
    return model, info
