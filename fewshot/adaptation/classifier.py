"""`FewShotClassifier`: a trained encoder plus a head fitted on new classes, as one ``nn.Module``.

The head is one of :mod:`fewshot.heads` fitted on one task (``E = 1``) by ``partial_fit``, so it
keeps its *sufficient statistics* (class sums and counts for prototypes; ``XᵀX``, ``Xᵀ1``, ``XᵀY``
and counts for ridge; the support itself for nearest neighbour) and
:func:`fewshot.adaptation.adapt.update` can add classes or shots without re-embedding anything.

A classifier is saved as one file, written atomically, that ``torch.load(weights_only=True)``
reads (tensors, dicts, lists, strings and numbers only)::

    {"format": "fewshot-classifier", "version": 1, "sha256": <hash of payload>, "payload": {...}}

:func:`load_classifier` refuses a file of another format or version, and a file whose payload no
longer matches its hash (tampered or damaged), with a :class:`~fewshot.errors.FewShotError`
naming the file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from episodes.atomic import atomic_open
from episodes.files import read_image_files
from fewshot.adaptation.model_file import check_feature_size, check_payload
from fewshot.errors import FewShotError
from fewshot.evaluation.features import embed_tensor, transform
from fewshot.evaluation.inference import inference_model, prepare_input, threads
from fewshot.evaluation.tta import TTA
from fewshot.heads import HEADS, get_head
from fewshot.heads.base import Fitted, IncrementalHead
from fewshot.heads.ls import FittedLinear
from fewshot.heads.nn import FittedNN
from fewshot.heads.proto import FittedProto
from fewshot.models.preprocess import Preprocess

__all__ = ["FORMAT", "VERSION", "HEAD_KINDS", "FewShotClassifier", "Predictions", "load_classifier",
           "read_images", "head_kind", "head_for", "head_record", "head_from_record"]

FORMAT = "fewshot-classifier"
VERSION = 1
HEAD_KINDS = HEADS.names(adaptable=True)  # the heads with an incremental fit and an exact LOO estimate
FITTED: dict[str, type] = {"proto": FittedProto, "ls": FittedLinear, "nn": FittedNN}
SMALL_BATCH = 16  # predictions on fewer images run single-threaded (see predict_proba)


# ------------------------------------------------------------------ features
# ------------------------------------------------------------------ heads
def head_kind(fitted: Fitted) -> str:
    """``proto``, ``ls`` or ``nn``: the registry name of a fitted head a classifier can hold."""
    for kind, cls in FITTED.items():
        if isinstance(fitted, cls):
            return kind
    raise FewShotError(f"a classifier holds a fitted {', '.join(HEAD_KINDS)} head, "
                       f"got {type(fitted).__name__}")


def head_for(fitted: Fitted, lam: float | None = None) -> IncrementalHead:
    """The head (settings) that extends ``fitted`` by ``partial_fit``: its distance, k, scale;
    for ``ls`` a fixed ``lam``, else λ by generalised cross-validation from the statistics."""
    kind = head_kind(fitted)
    if kind == "proto":
        return get_head("proto", distance=fitted.distance, scale=fitted.scale)
    if kind == "nn":
        return get_head("nn", k=fitted.k, distance=fitted.distance, weighted=fitted.weighted)
    return get_head("ls") if lam is None else get_head("ls", lam=lam)


def head_record(fitted: Fitted) -> dict:
    """The model file's ``head`` table: the kind and the one-task state dict without its episode
    dimension (``[1, ...]`` tensors stored as ``[...]``, one-element ones as numbers)."""
    out: dict = {"kind": head_kind(fitted)}
    for key, value in fitted.state_dict().items():
        if isinstance(value, torch.Tensor):
            value = value[0].item() if value.dim() == 1 else value[0]
        out[key] = value
    return out


def head_from_record(record: dict) -> Fitted:
    """The fitted head of a (checked) model file ``head`` table: :func:`head_record` reversed."""
    state = {k: v.unsqueeze(0) if isinstance(v, torch.Tensor) else v
             for k, v in record.items() if k != "kind"}
    return FITTED[record["kind"]].from_state_dict(state)


# ---------------------------------------------------------------- prediction
@dataclass
class Predictions:
    """What :meth:`FewShotClassifier.predict` returns, one entry per image that could be read."""

    sources: list[str]              # file paths, or "#i" for tensors
    labels: list[str]               # predicted class, or "unknown" when rejected
    probabilities: torch.Tensor     # [N] probability of the top class
    indices: torch.Tensor           # [N] top class index (-1 when rejected)
    top_k: list[list[tuple[str, float]]]
    probs: torch.Tensor             # [N, K] full softmax
    skipped: list[str]              # "path: cause" of files that could not be read

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """CSV rows ``path, label, probability, top_k`` (top-k as ``label:p;label:p``)."""
        return [(src, lab, f"{float(p):.4f}", ";".join(f"{n}:{q:.4f}" for n, q in tk))
                for src, lab, p, tk in zip(self.sources, self.labels, self.probabilities, self.top_k)]


def read_images(paths: Sequence[str | os.PathLike], preprocess: Preprocess, *, strict: bool = False,
                progress: bool = False) -> tuple[torch.Tensor, list[str], list[str]]:
    """:func:`episodes.files.read_image_files` at the encoder's size and channel count."""
    wrap = None
    if progress:
        from fewshot.progress import progress as progress_bar

        def wrap(items):
            return progress_bar(items, desc="reading", unit="img")
    return read_image_files(paths, channels=preprocess.channels, size=preprocess.image_size, strict=strict,
                            wrap=wrap)


# ---------------------------------------------------------------- classifier
class FewShotClassifier(nn.Module):
    """Encoder + preprocessing + feature transform + a fitted head over ``class_names``.

    ``forward(images)`` takes uint8 ``[B, C, H, W]`` (0..255) or float in [0, 1], any size, 1 or 3
    channels (converted to what the encoder was trained on), and returns logits
    ``[B, num_classes]``; ``softmax(logits / temperature)`` are calibrated probabilities
    (the temperature is fitted on the support set by leave-one-out).

    ``head``: a fitted ``proto``, ``ls`` or ``nn`` head of one task over ``class_names``, or None
    until one is fitted (:meth:`embed` needs none; :func:`~fewshot.adaptation.adapt.adapt` fits it
    on the embedded support).
    """

    def __init__(self, encoder: nn.Module, preprocess: Preprocess, head: Fitted | None,
                 class_names: Sequence[str],
                 *, transform: str = "none", base_mean: torch.Tensor | None = None, temperature: float = 1.0,
                 source: dict | None = None, report: object | None = None, tta: TTA | None = None):
        super().__init__()
        if head is not None:
            head_kind(head)
        self.encoder = encoder.eval()
        self.preprocess = preprocess
        self.head = head
        self.class_names = list(class_names)
        self.transform = transform
        self.register_buffer("base_mean", None if base_mean is None else base_mean.float())
        self.temperature = float(temperature)
        # how the encoder is stored: {"checkpoint": dict} or {"reference": {"path", "hash"}}
        self.source = dict(source or {})
        self.report = report
        self.tta = tta  # test-time augmentation of embed/predict (None or 1 view: plain)
        self.int8_calibration: torch.Tensor | None = None   # uint8 images the int8 encoder was calibrated on
        self._int8: nn.Module | None = None

    # ------------------------------------------------------------- int8
    def quantize(self, calibration: torch.Tensor, max_images: int = 64, *,
                 prepared: bool = False) -> FewShotClassifier:
        """Use a static int8 encoder (CPU, :func:`fewshot.evaluation.inference.quantize_int8`) for prediction,
        calibrated on up to ``max_images`` uint8 images (``adapt(..., int8=True)`` uses the support
        set). Opt-in: predictions can differ from float32 on borderline images; ``save`` keeps the
        calibration images so a loaded classifier is quantised the same way (``prepared``: images that
        file stores, already at the encoder's size and framed). Returns ``self``."""
        from fewshot.evaluation.inference import quantize_int8

        if self._device().type != "cpu":
            raise FewShotError("int8 inference runs on the CPU only")
        calibration = self.check_images(calibration)
        if calibration.dtype != torch.uint8:
            raise FewShotError("int8 calibration images must be uint8 [N, C, H, W]")
        step = max(1, calibration.shape[0] // max_images)
        calibration = calibration[::step][:max_images].cpu()
        # kept at the encoder's size and channels, framed (what the file stores, ``prepared``), as uint8
        if not prepared:
            calibration = self.preprocess.prepare(calibration).contiguous()
        self._int8 = quantize_int8(self.encoder, self.preprocess.prepared()(calibration))
        self.int8_calibration = calibration
        return self

    @property
    def int8(self) -> bool:
        return self._int8 is not None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def head_kind(self) -> str:
        return head_kind(self.head)

    def _apply(self, fn, recurse: bool = True):  # .to(device) / .double() reach the head's tensors too
        super()._apply(fn, recurse)
        if self.head is not None:
            state = self.head.state_dict()
            self.head = type(self.head).from_state_dict(
                {k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in state.items()})
        return self

    def _device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise FewShotError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
        if images.shape[1] not in (1, 3):
            raise FewShotError(f"expected images with 1 or 3 channels (the encoder takes "
                               f"{self.preprocess.channels}), got {images.shape[1]} channels")
        return images

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Transformed embeddings ``[B, D]`` (what the head sees). Without gradients (``embed``,
        ``predict``, ``torch.no_grad()``) the encoder runs through
        :func:`fewshot.evaluation.inference.inference_model`."""
        images = self.check_images(images).to(self._device())
        n, blocks = images.shape[0], self.blocks
        if torch.is_grad_enabled():  # differentiable: the encoder itself
            run, x = self.encoder, self.preprocess(images)
        elif self._int8 is not None:  # opt-in static int8 encoder (see quantize)
            run, x = self._int8, prepare_input(self.preprocess, images.cpu())
        else:  # the inference fast path (conv+BN folded, channels_last), shared with features.embed
            run = inference_model(self.encoder, self._device())
            x = prepare_input(self.preprocess, images, channels_last=run.channels_last)
        if blocks > 1:  # the classifier's symmetries (one view each), of the prepared input as in embed
            x = TTA(symmetries=blocks).expand(x)
        z = run(x)
        z = (z[0] if isinstance(z, (tuple, list)) else z).to(images.device)
        return transform(z.flatten(1).reshape(n, -1), self.transform, base_mean=self.base_mean,
                         blocks=blocks)

    @property
    def blocks(self) -> int:
        """Embeddings concatenated in a feature: the TTA symmetries (1 without)."""
        return 1 if self.tta is None else self.tta.symmetries

    def embed(self, images: torch.Tensor, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """:meth:`features` in batches, without gradients, on CPU: ``float32 [N, D]``, through the
        toolkit's one embedding path (:func:`fewshot.evaluation.features.embed_tensor`) with the
        classifier's test-time augmentation (``self.tta``) and its int8 encoder when it has one."""
        images = self.check_images(images)
        if images.shape[0] == 0:
            return torch.empty(0, 0)
        z = embed_tensor(self._int8 or self.encoder, images, self.preprocess, device=self._device(),
                         batch_size=batch_size, progress=progress, tta=self.tta)
        return transform(z.flatten(1), self.transform, base_mean=self.base_mean,
                         blocks=self.blocks).float().cpu()

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """The head's logits ``[N, K]`` of transformed embeddings ``z [N, D]``."""
        if self.head is None:
            raise FewShotError("this classifier has no fitted head yet")
        return self.head(z.unsqueeze(0))[0].float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(images))

    def predict_proba(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Softmax of the logits at the fitted temperature, ``[N, K]``.

        Fewer than ``SMALL_BATCH`` images run on one intra-op thread: for a few images, thread
        synchronisation costs more than the work."""
        n = images.shape[0] if images.dim() == 4 else 1
        with threads(1 if n < SMALL_BATCH else None):
            z = self.embed(images, batch_size)
            with torch.inference_mode():
                return torch.softmax(self.logits(z) / self.temperature, dim=1)

    def predict(self, paths_or_images: Sequence[str | os.PathLike] | torch.Tensor, *, top_k: int = 3,
                reject: float | None = None, batch_size: int = 256, strict: bool = False,
                progress: bool = False) -> Predictions:
        """Labels, probabilities and the top-k classes of image files or an image tensor.

        ``reject``: images whose top probability is below it are labelled ``unknown``.
        """
        if top_k < 1:
            raise FewShotError(f"top_k must be positive, got {top_k}")
        if reject is not None and not 0 <= reject <= 1:
            raise FewShotError(f"reject must be a probability in [0, 1], got {reject}")
        skipped: list[str] = []
        if isinstance(paths_or_images, torch.Tensor):
            images = self.check_images(paths_or_images)
            sources = [f"#{i}" for i in range(images.shape[0])]
        else:
            images, sources, skipped = read_images(list(paths_or_images), self.preprocess, strict=strict,
                                                   progress=progress)
        probs = self.predict_proba(images, batch_size) if len(sources) else torch.empty(0, self.num_classes)
        k = min(top_k, self.num_classes)
        top_p, top_i = probs.topk(k, dim=1)
        best_p, best_i = top_p[:, 0], top_i[:, 0].clone()
        if reject is not None:
            best_i[best_p < reject] = -1
        labels = [self.class_names[i] if i >= 0 else "unknown" for i in best_i.tolist()]
        tk = [[(self.class_names[i], p) for i, p in zip(ri, rp)]
              for ri, rp in zip(top_i.tolist(), top_p.tolist())]
        return Predictions(sources, labels, best_p, best_i, tk, probs, skipped)

    # ------------------------------------------------------------- saving
    def payload(self) -> dict:
        return {
            "encoder": self.source,
            "preprocess": self.preprocess.to_dict(),
            "transform": self.transform,
            "base_mean": self.base_mean,
            "head": head_record(self.head),
            "class_names": list(self.class_names),
            "temperature": self.temperature,
            **({"int8_calibration": self.int8_calibration} if self.int8_calibration is not None else {}),
            **({"tta": self.tta.to_dict()} if self.tta is not None else {}),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the classifier as one file, atomically (temporary file, fsync, rename)."""
        if not self.source:
            raise FewShotError("this classifier was built from an in-memory encoder; adapt from a checkpoint "
                               "file (or pass checkpoint=...) to save it")
        payload = self.payload()
        doc = {"format": FORMAT, "version": VERSION, "sha256": payload_digest(payload), "payload": payload}
        path = Path(path)
        if path.is_dir():
            raise FewShotError("is a directory; give a file name for the model", path)
        with atomic_open(path, "wb") as fh:
            torch.save(doc, fh)
        return path

    def extra_repr(self) -> str:
        return (f"head={self.head_kind}, classes={self.num_classes}, transform={self.transform}, "
                f"temperature={self.temperature:.4g}, int8={self.int8}"
                + ("" if self.tta is None or self.tta.plain else f", tta={self.tta.views}")
                + ("" if self.blocks == 1 else f", symmetries={self.blocks}"))


# ------------------------------------------------------------------ hashing
def _digest(obj: object, h: hashlib._Hash) -> None:
    """Feed a canonical encoding of ``obj`` (tensors, dicts, lists, str, numbers, None) into ``h``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=str):
            _digest(str(key), h)
            _digest(obj[key], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            _digest(item, h)
    elif isinstance(obj, str):
        b = obj.encode()
        h.update(f"S{len(b)}:".encode() + b)
    elif obj is None or isinstance(obj, (bool, int, float)):
        h.update(f"V{obj!r};".encode())
    else:
        raise FewShotError(f"cannot store a {type(obj).__name__} in a classifier file")


def payload_digest(payload: dict) -> str:
    """SHA-256 of the canonical encoding of a classifier payload."""
    h = hashlib.sha256()
    _digest(payload, h)
    return h.hexdigest()


# ------------------------------------------------------------------ loading
def _encoder_from_source(source: dict, path: Path, device: str) -> tuple[nn.Module, dict]:
    from fewshot.models.checkpoint import load_encoder
    if "checkpoint" in source:
        model, info = load_encoder(source["checkpoint"], device=device)
        return model, info
    ref = source.get("reference")
    if not isinstance(ref, dict) or "path" not in ref:
        raise FewShotError("the model file holds neither encoder weights nor a checkpoint reference", path)
    ckpt = Path(ref["path"])
    if not ckpt.is_absolute():
        ckpt = (path.parent / ckpt).resolve()
    if not ckpt.exists():
        raise FewShotError(f"the referenced checkpoint {ckpt} does not exist", path)
    model, info = load_encoder(ckpt, device=device)
    if info.get("hash") != ref.get("hash"):
        raise FewShotError(f"the referenced checkpoint {ckpt} changed since the classifier was made "
                           f"(hash {info.get('hash')}, expected {ref.get('hash')})", path)
    return model, info


def load_classifier(path: str | os.PathLike, *, device: str = "cpu") -> FewShotClassifier:
    """Load a classifier saved by :meth:`FewShotClassifier.save` (``weights_only``; no code runs).

    Raises ``FewShotError`` naming the file when it is missing, not a classifier, of another format
    version, or tampered with (its content no longer matches the stored hash).
    """
    path = Path(path)
    if not path.exists():
        raise FewShotError("no such model file", path)
    if path.is_dir():
        raise FewShotError("is a directory, not a model file", path)
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means: not a readable model file
        raise FewShotError(f"not a readable fewshot classifier file ({type(exc).__name__})", path) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise FewShotError(f"not a fewshot classifier file (expected format {FORMAT!r})", path)
    if doc.get("version") != VERSION:
        raise FewShotError(f"classifier file format version {doc.get('version')!r} is not supported "
                           f"(this fewshot reads version {VERSION}); re-run fewshot adapt", path)
    payload = doc.get("payload")
    try:
        ok = isinstance(payload, dict) and payload_digest(payload) == doc.get("sha256")
    except FewShotError:
        ok = False
    if not ok:
        raise FewShotError("model file is damaged or was modified (content hash mismatch)", path)
    payload = check_payload(payload, path)  # every field, before anything is built from it
    try:
        head = head_from_record(payload["head"])
        preprocess = Preprocess.from_dict(payload["preprocess"])
        encoder, _ = _encoder_from_source(payload["encoder"], path, device)
        tta = None if payload.get("tta") is None else TTA.from_dict(payload["tta"])
        check_feature_size(encoder, payload["head"], path,   # also for a referenced checkpoint
                           blocks=1 if tta is None else tta.symmetries)
        clf = FewShotClassifier(encoder, preprocess, head, payload["class_names"],
                                transform=payload["transform"],
                                base_mean=payload["base_mean"], temperature=payload["temperature"],
                                source=payload["encoder"], tta=tta)
        if payload.get("int8_calibration") is not None:
            clf.quantize(payload["int8_calibration"], prepared=True)
    except FewShotError as exc:
        if exc.path is None:
            raise FewShotError(exc.cause, path) from None
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise FewShotError(f"model file is incomplete ({type(exc).__name__}: {exc})", path) from None
    return clf.to(device)
