"""Embedding a whole image set once (batched, best device, bf16 autocast on CUDA), feature
transforms (none / l2 / cl2n), and a disk cache of features keyed by checkpoint, data and
preprocessing.

Evaluation embeds each image once and then only indexes the feature matrix per episode, which
is what makes thousands of episodes cheap (see ``benchmarks/eval_throughput.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from episodes.atomic import atomic_open
from episodes.imageset import ImageSet
from fewshot.device import pick_device
from fewshot.errors import FewShotError
from fewshot.evaluation.tta import TTA, images_per_pass
from fewshot.registry import Registry

CACHE_VERSION = 1


def _default_preprocess(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255)


def _embedding_of(out: Any) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise FewShotError("the model must return (embedding [B, D], logits) or an embedding [B, D]")
    return out


def _probe(model: torch.nn.Module, fast: torch.nn.Module, x: torch.Tensor) -> None:
    """Refuse a model whose output is not ``(embedding [B, D], ...)`` / ``[B, D]``: one image
    through the model itself in eval mode (its prepared copy when it lives on another device)."""
    on_device = next(iter(model.parameters()), x).device == x.device
    if not on_device:
        _embedding_of(fast(x))
        return
    was_training = model.training
    model.eval()
    try:
        _embedding_of(model(x))
    finally:
        model.train(was_training)


def embed(model: torch.nn.Module, images: ImageSet | torch.Tensor, preprocess: Callable | None, *,
          device: str | torch.device | None = None, batch_size: int = 256,
          progress: bool = True, tta: TTA | None = None) -> torch.Tensor:
    """Embed every image: ``float32 [N, D]`` on the CPU. The one embedding path of the toolkit
    (evaluation, adaptation, prediction and training validation all come here).

    ``images``: an :class:`~episodes.ImageSet` or uint8 ``[N,C,H,W]``. ``preprocess`` maps a uint8
    batch (already on the device) to the model's normalised float input, converting channels and
    size (``fewshot.models.preprocess.Preprocess``); ``None`` scales to [0, 1]. Runs an eval-mode copy of
    the model prepared for inference on the device (:func:`fewshot.evaluation.inference.inference_model`:
    conv+BN folded, channels_last; the model itself is not modified) under
    ``torch.inference_mode`` and, on CUDA, bf16 autocast. Non-finite embeddings raise
    :class:`FewShotError`.

    ``tta``: test-time augmentation (:class:`fewshot.evaluation.tta.TTA`; ``None`` or one view: plain). Each
    pass embeds the views of ``batch_size // views`` images together (views x images in one batch,
    no loop over views) and averages each image's views.
    """
    x_all = image_tensor(images)
    feats = embed_tensor(model, x_all, preprocess, device=device, batch_size=batch_size,
                         progress=progress, tta=tta)
    check_finite(feats, getattr(images, "name", "") or None)
    return feats


def image_tensor(images: ImageSet | torch.Tensor) -> torch.Tensor:
    """The uint8 ``[N, C, H, W]`` images of an :class:`~episodes.ImageSet` or tensor; else one line."""
    x_all = images.images if isinstance(images, ImageSet) else images
    if not isinstance(x_all, torch.Tensor) or x_all.dtype != torch.uint8 or x_all.dim() != 4:
        raise FewShotError("embed needs an ImageSet or a uint8 tensor [N, C, H, W]")
    return x_all


def embed_tensor(model: torch.nn.Module, x_all: torch.Tensor, preprocess: Callable | None, *,
                 device: str | torch.device | None = None, batch_size: int = 256, progress: bool = False,
                 tta: TTA | None = None) -> torch.Tensor:
    """:func:`embed` of a uint8 or [0, 1] float tensor ``[N, C, H, W]``, without the checks."""
    passes = forward_passes(model, x_all, preprocess, device=device, batch_size=batch_size,
                            progress=progress, tta=tta)
    out = collect(passes, x_all.shape[0], lambda emb: (emb if tta is None else tta.reduce(emb),))
    return torch.empty(0, 0) if out is None else out[0]


def collect(passes: Iterator[torch.Tensor], n: int,
            parts: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...] | None:
    """The per-image results ``parts(emb)`` of every pass over ``n`` images, each ``[B, ...]``,
    written into CPU tensors of ``[n, ...]`` (their dtypes) allocated at the first pass; ``None``
    without passes. Small per-pass pieces kept between the large temporaries of every pass fragment
    the heap instead (an evaluation at 512 passes per image grew to 24 GB that way)."""
    out, done = None, 0
    for emb in passes:
        got = parts(emb)
        if out is None:
            out = tuple(torch.empty(n, *p.shape[1:], dtype=p.dtype) for p in got)
        stop = done + got[0].shape[0]
        for target, p in zip(out, got):
            target[done:stop] = p
        done = stop
    return out


def forward_passes(model: torch.nn.Module, x_all: torch.Tensor, preprocess: Callable | None, *,
                   device: str | torch.device | None = None, batch_size: int = 256, progress: bool = False,
                   tta: TTA | None = None) -> Iterator[torch.Tensor]:
    """The embedding passes of :func:`embed_tensor`: per chunk of images, the float32 embeddings (on
    the device) of its rows (plain: ``[B, D]``; TTA: :meth:`TTA.expand`'s ``[B * passes, D]``, about
    ``batch_size`` rows per pass)."""
    if batch_size < 1:
        raise FewShotError(f"batch size must be positive, got {batch_size}")
    dev = pick_device(device)
    from fewshot.evaluation.inference import inference_model, prepare_input

    fast = inference_model(model, dev)
    prep = preprocess or _default_preprocess
    plain = tta is None or tta.plain
    step = batch_size if plain else images_per_pass(tta.passes, batch_size)
    n = x_all.shape[0]
    from fewshot.progress import progress as progress_bar

    bar = progress_bar(total=n, desc="embed" if plain else f"embed x{tta.passes}", unit="img",
                       disable=not progress)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        for start in range(0, n, step):
            batch = x_all[start:start + step].to(dev, non_blocking=True)
            if plain:
                x = prepare_input(prep, batch, channels_last=fast.channels_last)
            else:
                x = _normalize(prep, tta.expand(_to_unit(prep, batch)))
            if start == 0:
                _probe(model, fast.module, x[:1])
            yield fast(x).float()
            bar.update(batch.shape[0])
    bar.close()


def _to_unit(preprocess: Callable, batch: torch.Tensor) -> torch.Tensor:
    if hasattr(preprocess, "to_unit"):
        return preprocess.to_unit(batch)
    return batch.float().div(255) if batch.dtype == torch.uint8 else batch.float()


def _normalize(preprocess: Callable, x: torch.Tensor) -> torch.Tensor:
    return preprocess.normalize(x) if hasattr(preprocess, "normalize") else x


def check_finite(features: torch.Tensor, source: str | None = None) -> None:
    """Refuse NaN / inf features with a one-line error (how many rows, the first one)."""
    bad = ~torch.isfinite(features).all(-1) if features.dim() > 1 else ~torch.isfinite(features)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise FewShotError(f"{int(bad.sum())} of {len(bad)} feature rows are NaN or infinite "
                           f"(first: row {first}); check the checkpoint and the input images", source)


def _unit(features: torch.Tensor, base_mean: torch.Tensor | None = None) -> torch.Tensor:
    return torch.nn.functional.normalize(features, dim=-1)


def _centred_unit(features: torch.Tensor, base_mean: torch.Tensor | None = None) -> torch.Tensor:
    if base_mean is None:
        raise FewShotError("transform cl2n needs the base-class mean embedding; "
                           "this checkpoint has none (use --transform l2)")
    base_mean = torch.as_tensor(base_mean, dtype=features.dtype, device=features.device)
    if base_mean.shape != features.shape[-1:]:
        raise FewShotError(f"base mean has shape {tuple(base_mean.shape)}, features have dim "
                           f"{features.shape[-1]}")
    return _unit(features - base_mean)


def _power_unit(features: torch.Tensor, base_mean: torch.Tensor | None = None) -> torch.Tensor:
    if bool((features < 0).any()):
        raise FewShotError("transform pt needs non-negative features (an encoder that ends in a ReLU, such "
                           "as conv4 or resnet18); these have negative values (use --transform l2)")
    return _unit(features.sqrt())


TRANSFORMS = Registry("feature transform", call=False)
TRANSFORMS.register("none", lambda features, base_mean=None: features, doc="the features as they are.")
TRANSFORMS.register("l2", _unit, doc="unit length.")
TRANSFORMS.register("cl2n", _centred_unit, doc="subtract the base-class mean embedding, then unit length "
                    "(SimpleShot, Wang et al. 2019).")
TRANSFORMS.register("pt", _power_unit, doc="square root of every feature, then unit length (Tukey's power "
                    "transform with beta 0.5, Hu et al. 2021): evens out heavy-tailed ReLU features; "
                    "non-negative features only.")


def transform(features: torch.Tensor, kind: str = "none",
              base_mean: torch.Tensor | None = None, blocks: int = 1) -> torch.Tensor:
    """Feature transform applied before every head (``TRANSFORMS``).

    ``none``: as is. ``l2``: unit length. ``cl2n`` (SimpleShot, Wang et al. 2019): subtract the mean
    embedding of the *base* training images (``base_mean [D]``, from the checkpoint), then unit
    length. ``pt`` (Hu et al. 2021): square root of every feature, then unit length; the features
    must be non-negative (a ReLU encoder's). Works on any ``[..., D]``.

    ``blocks``: features that concatenate ``blocks`` embeddings (TTA symmetries, ``[..., blocks *
    D]``) are transformed block by block; the unit-length transforms then scale by
    ``1 / sqrt(blocks)``, so the whole feature has unit length and its cosine similarity is the
    mean of the blocks' similarities.
    """
    fn = TRANSFORMS.create(kind)
    if blocks == 1:
        return fn(features, base_mean)
    if features.shape[-1] % blocks:
        raise FewShotError(f"features of dim {features.shape[-1]} do not split into {blocks} blocks")
    out = fn(features.unflatten(-1, (blocks, -1)), base_mean).flatten(-2)
    return out if kind == "none" else out / blocks ** 0.5


# the transforms whose base-class means a checkpoint records (cl2n's depend on the base mean too)
CLASS_MEAN_TRANSFORMS = ("none", "l2")


def class_means(features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean feature of every class ``[C, D]`` (float32) under each transform of
    ``CLASS_MEAN_TRANSFORMS``: what ``proto-dc`` calibrates toward. Classes are ``0..max(labels)``."""
    labels = torch.as_tensor(labels, device=features.device).long()
    c = int(labels.max()) + 1 if labels.numel() else 0
    counts = torch.bincount(labels, minlength=c).clamp_min(1).unsqueeze(1).to(torch.float64)
    out = {}
    for kind in CLASS_MEAN_TRANSFORMS:
        f = transform(features.float(), kind).to(torch.float64)
        sums = torch.zeros(c, f.shape[1], dtype=torch.float64, device=f.device).index_add_(0, labels, f)
        out[kind] = (sums / counts).float().cpu()
    return out


def default_transform(distance: str) -> str:
    """The transform that matches a checkpoint's training distance: cosine -> l2, euclidean -> none."""
    return "l2" if distance == "cosine" else "none"


def checkpoint_transform(info: dict, distance: str) -> str:
    """The transform a checkpoint's features get unless told otherwise: the one its recipe recorded
    (``info["transform"]``, a recipe's ``eval_transform``), else :func:`default_transform`."""
    return info.get("transform") or default_transform(distance)


def cache_dir_default() -> Path:
    return Path(os.environ.get("FEWSHOT_CACHE_DIR") or Path.home() / ".cache" / "fewshot")


def _preprocess_key(preprocess: Any) -> Any:
    if preprocess is None:
        return None
    if hasattr(preprocess, "to_dict"):
        return preprocess.to_dict()
    return repr(preprocess)


def feature_cache_key(checkpoint_hash: str, imageset: ImageSet, preprocess: Any,
                      tta: TTA | None = None) -> str:
    """Hash of checkpoint content hash + dataset fingerprint (which covers the pixels, so two
    folders with the same names but other images never share features) + preprocessing (+ the TTA
    setting)."""
    doc = {"v": CACHE_VERSION, "checkpoint": checkpoint_hash, "data": imageset.fingerprint,
           "preprocess": _preprocess_key(preprocess)}
    if tta is not None and not tta.plain:  # plain keys stay what they were
        doc["tta"] = tta.to_dict()
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _load_encoder(checkpoint: Any, device: torch.device) -> tuple[torch.nn.Module, dict]:
    if isinstance(checkpoint, tuple) and len(checkpoint) == 2:
        return checkpoint
    from fewshot.models.checkpoint import load_encoder

    return load_encoder(checkpoint, device=str(device))


def embed_cached(checkpoint: str | os.PathLike | tuple[torch.nn.Module, dict], imageset: ImageSet, *,
                 cache_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 batch_size: int = 256, progress: bool = True, tta: TTA | None = None) -> torch.Tensor:
    """:func:`embed` through a disk cache: ``float32 [N, D]``.

    ``checkpoint`` is a checkpoint path or an already loaded ``(model, info)`` pair (info as from
    ``fewshot.models.checkpoint.load_encoder``: ``hash``, ``preprocess``). The cache file
    ``<cache_dir>/features/<key>.pt`` is keyed by the checkpoint's content hash, the data set's
    fingerprint, the preprocessing and the TTA setting (``tta``); it is written atomically and read with
    ``weights_only=True``. A corrupt cache file is recomputed, and a cache folder that cannot be
    written is skipped, each with a warning.
    """
    dev = pick_device(device)
    model, info = _load_encoder(checkpoint, dev)
    preprocess = info.get("preprocess")
    key = feature_cache_key(str(info.get("hash", "")), imageset, preprocess, tta)
    root = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    path = root / "features" / f"{key}.pt"
    if path.exists() and info.get("hash"):
        try:
            doc = torch.load(path, map_location="cpu", weights_only=True)
            feats = doc["features"]
            if doc.get("key") == key and feats.shape[0] == len(imageset):
                return feats
        except Exception as exc:  # noqa: BLE001 - any unreadable cache is recomputed
            warnings.warn(f"{path}: unreadable feature cache ({exc}); recomputing", stacklevel=2)
    feats = embed(model, imageset, preprocess, device=dev, batch_size=batch_size, progress=progress, tta=tta)
    if info.get("hash"):  # an unhashed (in-memory) model cannot be cached safely
        try:
            with atomic_open(path, "wb") as fh:
                torch.save({"key": key, "features": feats, "fingerprint": imageset.fingerprint,
                            "checkpoint": str(info["hash"])}, fh)
        except OSError as exc:  # a read-only or full cache folder costs the cache, not the run
            warnings.warn(f"{path.parent}: cannot write the feature cache ({exc.strerror or exc})",
                          stacklevel=2)
    return feats
