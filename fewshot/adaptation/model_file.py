"""Every field of a classifier (model) file checked before anything is built from it.

The file's SHA-256 proves integrity, not sense: anyone can edit a model file and re-hash it. So
:func:`check_payload` checks each field's type, shape, dtype and range against the others (the
class list has as many names as the head has classes, the head's feature size is the encoder's,
the temperature is finite and > 0, the image size is bounded, tensors are finite) and builds the
encoder on PyTorch's ``meta`` device first, so a spec that asks for a huge network is refused
before any memory is spent. The encoder spec's ``weights`` and ``download`` (where the *starting*
weights came from) are dropped: a model file holds its weights and never makes the toolkit read
another file or the network. Every refusal is one :class:`~fewshot.errors.FewShotError` line
naming the file and the field.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from fewshot.errors import FewShotError
from fewshot.evaluation.features import TRANSFORMS
from fewshot.models.losses import DISTANCES

__all__ = ["MAX_IMAGE_SIDE", "MAX_CALIBRATION", "check_payload", "check_feature_size"]

MAX_IMAGE_SIDE = 1024      # pixels per side of the encoder input (84 and 224 are the usual sizes)
MAX_CALIBRATION = 64       # int8 calibration images stored in a file (FewShotClassifier.quantize)
INIT_ONLY = ("weights", "download")
FIELDS = ("encoder", "preprocess", "transform", "base_mean", "head", "class_names", "temperature",
          "int8_calibration", "tta")
OPTIONAL = ("int8_calibration", "tta")
MAX_TTA_VIEWS = 1024


class _Checker:
    def __init__(self, path: str | os.PathLike):
        self.path = path

    def fail(self, field: str, cause: str) -> None:
        raise FewShotError(f"model file field {field!r}: {cause}", self.path)

    def number(self, field: str, value: Any, *, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(field, f"must be a finite number, got {value!r}")
        if positive and not value > 0:
            self.fail(field, f"must be > 0, got {value!r}")
        return float(value)

    def integer(self, field: str, value: Any, low: int, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (
                high is not None and value > high):
            self.fail(field, f"must be an integer in [{low}, {high if high is not None else 'inf'}], "
                             f"got {value!r}")
        return value

    def tensor(self, field: str, value: Any, dims: int, *, floating: bool = True,
               shape: tuple | None = None) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or value.dim() != dims:
            desc = f"{tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            self.fail(field, f"must be a {dims}-d tensor, got {desc}")
        if floating != value.is_floating_point() or value.is_complex():
            kind = "floating-point" if floating else "integer"
            self.fail(field, f"must be a {kind} tensor, got {value.dtype}")
        if shape is not None and any(w is not None and w != s for w, s in zip(shape, value.shape)):
            self.fail(field, f"has shape {tuple(value.shape)}, expected "
                             f"{tuple('*' if w is None else w for w in shape)}")
        if floating and not bool(torch.isfinite(value).all()):
            self.fail(field, "holds NaN or infinite values")
        return value


def check_payload(payload: Any, path: str | os.PathLike) -> dict:
    """The payload of a model file, every field checked; returns it with the encoder spec's
    ``weights``/``download`` removed. Raises a one-line ``FewShotError`` naming ``path``."""
    c = _Checker(path)
    if not isinstance(payload, dict):
        c.fail("payload", f"must be a table, got {type(payload).__name__}")
    unknown = sorted(set(map(str, payload)) - set(FIELDS))
    missing = [f for f in FIELDS if f not in payload and f not in OPTIONAL]
    if unknown or missing:
        c.fail("payload", f"unknown field(s) {unknown}, missing {missing}; a model file holds "
                          f"{', '.join(FIELDS)}")
    channels, size = _check_preprocess(c, payload["preprocess"])
    if payload["transform"] not in TRANSFORMS:
        c.fail("transform", f"must be one of {', '.join(TRANSFORMS)}, got {payload['transform']!r}")
    c.number("temperature", payload["temperature"], positive=True)
    k, d = _check_head(c, payload["head"])
    names = payload["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        c.fail("class_names", "must be a list of names")
    if len(names) != k:
        c.fail("class_names", f"lists {len(names)} classes but the head has {k}")
    if len(set(names)) != len(names):
        c.fail("class_names", "names a class twice")
    blocks = 1 if payload.get("tta") is None else _check_tta(c, payload["tta"]).symmetries
    if d % blocks:
        c.fail("head", f"works on {d}-d features, which do not split into the TTA's {blocks} symmetries")
    d //= blocks   # the encoder's embedding size: a feature concatenates one per symmetry
    if payload["base_mean"] is not None:
        c.tensor("base_mean", payload["base_mean"], 1, shape=(d,))
    if payload.get("int8_calibration") is not None:
        cal = c.tensor("int8_calibration", payload["int8_calibration"], 4, floating=False,
                       shape=(None, channels, *size))
        if cal.dtype != torch.uint8 or not 1 <= cal.shape[0] <= MAX_CALIBRATION:
            c.fail("int8_calibration", f"must be 1 to {MAX_CALIBRATION} uint8 images, got "
                                       f"{cal.shape[0]} {cal.dtype}")
    return {**payload, "encoder": _check_encoder(c, payload["encoder"], channels, d)}


def _check_tta(c: _Checker, record: Any):
    """A test-time augmentation record: a valid :class:`fewshot.evaluation.tta.TTA` of at most
    MAX_TTA_VIEWS views; returns it."""
    from fewshot.evaluation.tta import TTA

    try:
        tta = TTA.from_dict(record)
    except (FewShotError, TypeError, ValueError) as exc:
        c.fail("tta", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if not 1 <= tta.views <= MAX_TTA_VIEWS:
        c.fail("tta", f"views must be 1 to {MAX_TTA_VIEWS}, got {tta.views}")
    return tta


def _check_preprocess(c: _Checker, pre: Any) -> tuple[int, tuple[int, int]]:
    if not isinstance(pre, dict) or not {"image_size", "channels", "mean", "std"} <= set(pre) <= {
            "image_size", "channels", "mean", "std", "frame"}:
        c.fail("preprocess", "must hold image_size, channels, mean and std (and optionally frame)")
    if "frame" in pre and not 0 < c.number("preprocess.frame", pre["frame"]) <= 1:
        c.fail("preprocess.frame", f"must be in (0, 1], got {pre['frame']!r}")
    channels = pre["channels"]
    if channels not in (1, 3) or isinstance(channels, bool):
        c.fail("preprocess.channels", f"must be 1 or 3, got {channels!r}")
    size = pre["image_size"]
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        c.fail("preprocess.image_size", f"must be [height, width], got {size!r}")
    hw = tuple(c.integer("preprocess.image_size", s, 1, MAX_IMAGE_SIDE) for s in size)
    for key in ("mean", "std"):
        values = pre[key]
        if not isinstance(values, list) or len(values) != channels:
            c.fail(f"preprocess.{key}", f"must list {channels} numbers, got {values!r}")
        for v in values:
            c.number(f"preprocess.{key}", v, positive=key == "std")
    return channels, hw  # type: ignore[return-value]


def _check_head(c: _Checker, head: Any) -> tuple[int, int]:
    """``(classes, feature size)`` of a head record, after checking its tensors against each other."""
    if not isinstance(head, dict) or head.get("kind") not in ("proto", "ls", "nn"):
        found = head.get("kind") if isinstance(head, dict) else head
        c.fail("head.kind", f"must be proto, ls or nn, got {found!r}")
    kind = head["kind"]
    rows_form = kind == "ls" and "rows" in head   # an ls fit with fewer rows than features keeps them
    stats = {"rows", "labels"} if rows_form else {"xtx", "xsum", "xty"}
    want = {"proto": {"sums", "counts", "distance"},
            "ls": stats | {"counts", "lam", "weight", "bias"},
            "nn": {"features", "labels", "num_classes", "distance"}}[kind]
    optional = {"proto": {"scale"}, "ls": set(), "nn": {"k", "weighted"}}[kind]  # absent: the defaults
    got = set(map(str, head)) - {"kind"}
    if not want <= got <= want | optional:
        c.fail("head", f"a {kind} head holds {', '.join(sorted(want))} (optional: "
                       f"{', '.join(sorted(optional)) or 'none'}); got {', '.join(sorted(got))}")
    if kind in ("proto", "nn") and head["distance"] not in DISTANCES:
        c.fail("head.distance", f"must be one of {', '.join(DISTANCES)}, got {head['distance']!r}")
    if "scale" in head:
        c.number("head.scale", head["scale"], positive=True)
    if "k" in head:
        c.integer("head.k", head["k"], 1)
    if "weighted" in head and not isinstance(head["weighted"], bool):
        c.fail("head.weighted", f"must be true or false, got {head['weighted']!r}")
    if kind == "proto":
        sums = c.tensor("head.sums", head["sums"], 2)
        k, d = sums.shape
        counts = c.tensor("head.counts", head["counts"], 1, floating=False, shape=(k,))
        if counts.numel() and int(counts.min()) < 1:
            c.fail("head.counts", "every class needs at least one image")
    elif kind == "ls":
        weight = c.tensor("head.weight", head["weight"], 2)
        d, k = weight.shape
        c.tensor("head.bias", head["bias"], 1, shape=(k,))
        counts = c.tensor("head.counts", head["counts"], 1, floating=False, shape=(k,))
        if counts.numel() and int(counts.min()) < 0:
            c.fail("head.counts", "counts must be >= 0")
        if rows_form:
            rows = c.tensor("head.rows", head["rows"], 2)
            if not 1 <= rows.shape[0] < d or rows.shape[1] != d:
                c.fail("head.rows", f"must be [n, {d}] with 1 <= n < {d}, got {tuple(rows.shape)}")
            labels = c.tensor("head.labels", head["labels"], 1, floating=False, shape=(rows.shape[0],))
            if int(labels.min()) < 0 or int(labels.max()) >= k:
                c.fail("head.labels", f"must lie in [0, {k})")
            if not torch.equal(torch.bincount(labels.long(), minlength=k), counts.long()):
                c.fail("head.counts", "do not match the labels of the rows")
        else:
            c.tensor("head.xtx", head["xtx"], 2, shape=(d, d))
            c.tensor("head.xsum", head["xsum"], 1, shape=(d,))
            c.tensor("head.xty", head["xty"], 2, shape=(d, k))
        c.number("head.lam", head["lam"], positive=True)
    else:
        feats = c.tensor("head.features", head["features"], 2)
        n, d = feats.shape
        k = c.integer("head.num_classes", head["num_classes"], 1)
        labels = c.tensor("head.labels", head["labels"], 1, floating=False, shape=(n,))
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
            c.fail("head.labels", f"must lie in [0, {k})")
    if k < 1:
        c.fail("head", "has no classes")
    return int(k), int(d)


def _check_encoder(c: _Checker, source: Any, channels: int, dim: int) -> dict:
    if not isinstance(source, dict) or len(source) != 1 or next(iter(source)) not in (
            "checkpoint", "reference"):
        c.fail("encoder", "must hold either 'checkpoint' (the weights) or 'reference' (a path and hash)")
    if "reference" in source:
        ref = source["reference"]
        if not (isinstance(ref, dict) and all(isinstance(ref.get(k), str) for k in ("path", "hash"))):
            c.fail("encoder.reference", "must hold a checkpoint path and hash (text)")
        return source
    ckpt = source["checkpoint"]
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("encoder"), dict) or not isinstance(
            ckpt.get("model"), dict) or not isinstance(ckpt.get("preprocess"), dict):
        c.fail("encoder.checkpoint", "must hold the encoder spec, its weights ('model') and preprocess")
    spec = dict(ckpt["encoder"])
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, dict):
        c.fail("encoder.checkpoint.encoder.kwargs", "must be a table of options")
    spec["kwargs"] = {k: v for k, v in kwargs.items() if k not in INIT_ONLY}
    if spec.get("in_channels") != channels:
        c.fail("encoder.checkpoint.encoder.in_channels",
               f"is {spec.get('in_channels')!r} but preprocess gives {channels} channel(s)")
    state = ckpt["model"]
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            c.fail(f"encoder weight {name}", f"must be a tensor, got {type(value).__name__}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            c.fail(f"encoder weight {name}", "holds NaN or infinite values")
    _check_architecture(c, spec, state, dim)
    return {"checkpoint": {**ckpt, "encoder": spec}}


def _check_architecture(c: _Checker, spec: dict, state: dict, dim: int) -> None:
    """Build the spec on the meta device (no memory) and compare it with the stored weights: a spec
    that asks for more than the file holds never allocates, and a head of another feature size is
    refused before the first image."""
    from fewshot.models.encoders import build_encoder

    if spec.get("custom"):
        return  # refused by load_encoder with its own message
    try:
        with torch.device("meta"):
            meta = build_encoder(spec["name"], in_channels=spec["in_channels"],
                                 num_classes=spec["num_classes"], embedding_dim=spec.get("embedding_dim"),
                                 **spec["kwargs"])
    except FewShotError as exc:
        c.fail("encoder.checkpoint.encoder", exc.cause)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        c.fail("encoder.checkpoint.encoder", f"cannot be built ({type(exc).__name__}: {exc})")
    want = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    if want != have:
        diff = sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]]
        c.fail("encoder.checkpoint", f"weights do not fit the encoder spec (first difference: {diff[0]})")
    if meta.embedding_dim != dim:
        c.fail("head", f"works on {dim}-d features but the encoder gives {meta.embedding_dim}-d")


def check_feature_size(encoder: torch.nn.Module, head: dict, path: str | os.PathLike,
                       blocks: int = 1) -> None:
    """Refuse a head fitted on features of another size than ``encoder`` gives (``blocks``
    embeddings concatenated: the TTA's symmetries; a referenced checkpoint is only known once
    loaded)."""
    d = {"proto": lambda: head["sums"].shape[1], "ls": lambda: head["weight"].shape[0],
         "nn": lambda: head["features"].shape[1]}[head["kind"]]()
    have = getattr(encoder, "embedding_dim", None)
    have = None if have is None else have * blocks
    if have is not None and have != d:
        raise FewShotError(f"model file field 'head': works on {d}-d features but the encoder gives "
                           f"{have}-d", path)
