"""Adaptation to new classes: a folder (or tensors) of a few images per class in, a classifier out.

``adapt`` embeds the support set once and fits one head of :mod:`fewshot.heads` on it by
``partial_fit`` (``ls``: ridge with λ by exact leave-one-out, the default; ``proto``; ``nn``), so the
head keeps the sufficient statistics that ``update`` extends: new classes or shots are embedded
and added (``head.partial_fit(fitted, ...)``) without re-embedding the images already seen. ``ls``
re-chooses λ there by generalised cross-validation from the statistics
(:mod:`fewshot.heads.ridge_stats`) unless ``lam`` is given. Both estimate the head's accuracy by
exact leave-one-out on the support set and fit a softmax temperature on the leave-one-out logits
(:mod:`fewshot.adaptation.loo`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from episodes.atomic import read_json
from episodes.errors import DatasetError
from episodes.files import list_class_folders
from episodes.imageset import ImageSet
from fewshot.adaptation.classifier import HEAD_KINDS, FewShotClassifier, head_for, read_images
from fewshot.adaptation.loo import class_counts, estimate
from fewshot.errors import FewShotError
from fewshot.evaluation.features import checkpoint_transform
from fewshot.evaluation.inference import threads
from fewshot.evaluation.tta import resolve_tta
from fewshot.heads import get_head
from fewshot.heads.nn import FittedNN
from fewshot.models.preprocess import Preprocess

__all__ = ["adapt", "update", "AdaptReport", "head_from_results"]

# Checkpoint keys the classifier file keeps (what ``load_encoder`` reads; optimizer state is dropped).
_CHECKPOINT_KEYS = ("format", "model", "encoder", "preprocess", "distance", "hash", "base_classes",
                    "base_mean", "config", "epoch", "val_accuracy", "tta")


# ------------------------------------------------------------------ report
@dataclass
class AdaptReport:
    """What ``adapt``/``update`` used and how well the head classifies its own support set by LOO."""

    head: str
    class_names: list[str]
    images: list[int]                 # images per class held by the classifier
    added: list[int]                  # images per class read in this call
    loo_correct: list[int]            # per class, LOO-correct among the images estimated
    loo_total: list[int]              # per class, images with a LOO estimate (0 for 1-image classes)
    temperature: float
    lam: float | None = None
    transform: str = "none"
    skipped: list[str] = field(default_factory=list)
    scope: str = "all support images"
    tta: str = "plain (1 view)"

    @property
    def loo_accuracy(self) -> float:
        total = sum(self.loo_total)
        return sum(self.loo_correct) / total if total else math.nan

    def table(self) -> str:
        width = max([len("class")] + [len(c) for c in self.class_names])
        lines = [f"{'class':<{width}}  images  added  LOO accuracy"]
        rows = zip(self.class_names, self.images, self.added, self.loo_correct, self.loo_total)
        for name, n, a, c, t in rows:
            est = f"{c / t:.3f} ({c}/{t})" if t else "n/a (1 image)" if n == 1 else "n/a"
            lines.append(f"{name:<{width}}  {n:>6}  {a:>5}  {est}")
        total = sum(self.loo_total)
        acc = f"{self.loo_accuracy:.3f} ({sum(self.loo_correct)}/{total})" if total else "n/a"
        lam = f", lambda {self.lam:.3g}" if self.lam is not None else ""
        tta = "" if self.tta.startswith("plain") else f", TTA {self.tta}"
        lines.append(f"head {self.head} ({self.transform} features{lam}{tta}), "
                     f"temperature {self.temperature:.4g}; "
                     f"{sum(self.images)} images, {len(self.class_names)} classes; "
                     f"leave-one-out accuracy {acc} over {self.scope}")
        return "\n".join(lines)


# ----------------------------------------------------------------- support
def _support_tensors(support, preprocess: Preprocess, *, labels=None, class_names=None, strict: bool = False,
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """``(images uint8 [N,C,H,W], labels [N], class_names, skipped)`` from any accepted support."""
    skipped: list[str] = []
    if isinstance(support, (str, os.PathLike)):
        paths, class_names, labels = list_class_folders(support, strict=strict)
        images, kept, skipped = read_images(paths, preprocess, strict=strict, progress=progress)
        keep = set(kept)
        labels = torch.tensor([lab for p, lab in zip(paths, labels) if p in keep], dtype=torch.int64)
        counts = torch.bincount(labels, minlength=len(class_names))
        empty = [class_names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
        if empty:
            raise DatasetError(f"class folder {empty[0]!r} has no readable images", Path(support) / empty[0])
        return images, labels, list(class_names), skipped
    if isinstance(support, ImageSet):
        return support.images, support.labels, list(support.class_names), skipped
    if isinstance(support, (tuple, list)) and support and isinstance(support[0], torch.Tensor):
        images, *rest = support
        if rest:
            labels = rest[0]
        if len(rest) > 1:
            class_names = rest[1]
    elif isinstance(support, torch.Tensor):
        images = support
    else:
        raise FewShotError(f"support must be a folder, an ImageSet or (images, labels, class_names) tensors, "
                           f"got {type(support).__name__}")
    if labels is None:
        raise FewShotError("support images given as a tensor need labels")
    labels = torch.as_tensor(labels, dtype=torch.int64).flatten()
    if images.dim() != 4 or images.shape[0] != labels.shape[0]:
        raise FewShotError(f"support images must be [N, C, H, W] with one label each, got "
                           f"{tuple(images.shape)} and {tuple(labels.shape)} labels")
    if images.shape[1] not in (1, 3):
        raise FewShotError(f"expected support images with 1 or 3 channels (the encoder takes "
                           f"{preprocess.channels}), got {images.shape[1]} channels")
    k = int(labels.max()) + 1 if labels.numel() else 0
    class_names = [str(i) for i in range(k)] if class_names is None else [str(c) for c in class_names]
    if labels.numel() and (int(labels.min()) < 0 or k > len(class_names)):
        raise FewShotError(f"support labels must lie in [0, {len(class_names)})")
    return images, labels, class_names, skipped


# ------------------------------------------------------------------ encoder
def _load_encoder(encoder_or_checkpoint, preprocess: Preprocess | None, reference: bool, device: str
                  ) -> tuple[nn.Module, Preprocess, dict, dict]:
    """``(encoder, preprocess, info, source)``; ``source`` is what the classifier file stores."""
    from fewshot.models.checkpoint import load_checkpoint, load_encoder

    if isinstance(encoder_or_checkpoint, nn.Module):
        if preprocess is None:
            raise FewShotError("an encoder module needs preprocess=Preprocess(...) "
                               "(a checkpoint carries its own)")
        return encoder_or_checkpoint.eval(), preprocess, {"distance": "euclidean", "base_mean": None}, {}
    if isinstance(encoder_or_checkpoint, dict):
        ckpt, path = encoder_or_checkpoint, encoder_or_checkpoint.get("path")
    else:
        path = os.fspath(encoder_or_checkpoint)
        ckpt = load_checkpoint(path)
    model, info = load_encoder(ckpt, device=device)
    if reference:
        if path is None:
            raise FewShotError("reference=True needs a checkpoint file, not an in-memory checkpoint")
        source = {"reference": {"path": os.path.abspath(path), "hash": info["hash"]}}
    else:
        kept = {k: ckpt[k] for k in _CHECKPOINT_KEYS if k in ckpt and ckpt[k] is not None}
        kept["hash"] = info["hash"]
        source = {"checkpoint": kept}
    return model, preprocess or info["preprocess"], info, source


# -------------------------------------------------------------- head choice
def head_from_results(path: str | os.PathLike) -> tuple[str, str | None]:
    """``(head, transform)`` of the best adaptable head in a ``fewshot eval`` results.json.

    The winner is the head with the highest mean accuracy at the largest shot count evaluated,
    among the heads adaptation supports (proto, nn, ls); ``transform`` is the feature transform
    the evaluation used (or None).
    """
    path = Path(path)
    doc = read_json(path, missing="no such results file", unreadable="not a readable results.json",
                    error=FewShotError)
    rows = _result_rows(doc)
    rows = [r for r in rows if r[0].split(":")[0] in HEAD_KINDS]
    if not rows:
        raise FewShotError(f"results name none of the adaptable heads ({', '.join(HEAD_KINDS)})", path)
    top_shot = max(r[1] for r in rows)
    head = max((r for r in rows if r[1] == top_shot), key=lambda r: r[2])[0].split(":")[0]
    transform = doc.get("transform") if isinstance(doc, dict) else None
    if isinstance(doc, dict) and isinstance(doc.get("config"), dict):
        transform = doc["config"].get("transform", transform)
    return head, transform if isinstance(transform, str) else None


def _result_rows(doc) -> list[tuple[str, int, float]]:
    """``(head, shot, mean accuracy)`` rows from the results document, whatever its nesting."""
    rows: list[tuple[str, int, float]] = []

    def visit(obj) -> None:
        if isinstance(obj, dict):
            head, shot = obj.get("head"), obj.get("shot", obj.get("shots"))
            mean = obj.get("mean", obj.get("accuracy", obj.get("mean_accuracy")))
            if isinstance(head, str) and isinstance(shot, int) and isinstance(mean, (int, float)):
                rows.append((head, shot, float(mean)))
            for v in obj.values():
                visit(v)
        elif isinstance(obj, list):
            for v in obj:
                visit(v)

    visit(doc)
    return rows


# -------------------------------------------------------------------- API
def adapt(encoder_or_checkpoint: str | os.PathLike | dict | nn.Module, support, *, head: str | None = None,
          results: str | os.PathLike | None = None, transform: str | None = None, lam: float | None = None,
          labels=None, class_names: Sequence[str] | None = None, preprocess: Preprocess | None = None,
          reference: bool = False, strict: bool = False, batch_size: int = 256, device: str = "cpu",
          progress: bool = False, int8: bool = False, tta_views: int | None = None,
          tta_args: dict | None = None) -> FewShotClassifier:
    """A classifier for the classes of ``support``, from a trained encoder, without training.

    Args:
        encoder_or_checkpoint: a checkpoint path (or its dict), or an encoder module (then pass
            ``preprocess``; such a classifier works in memory but cannot be saved).
        support: a folder ``<class>/<images>``, an ``ImageSet``, or tensors ``(images, labels[,
            class_names])`` (uint8 ``[N, C, H, W]``, any size, 1 or 3 channels).
        head: ``"ls"`` (ridge, λ by leave-one-out; the default), ``"proto"`` or ``"nn"``; default
            the winner in ``results`` (a ``fewshot eval`` results.json) when given.
        transform: feature transform ``none``/``l2``/``cl2n``/``pt``; default from ``results``, else
            the one the checkpoint records, else ``l2`` for a cosine-trained encoder and ``none`` for
            a euclidean one.
        lam: fixed ridge λ instead of the leave-one-out choice.
        reference: store the checkpoint's path and hash instead of its weights.
        strict: unreadable files are errors instead of warnings.
        int8: predict with a static int8 encoder calibrated on the support images (CPU; opt-in,
            see :meth:`FewShotClassifier.quantize`). The head is fitted on float32 features.
        tta_views, tta_args: test-time augmentation of the support and of every later prediction;
            default the checkpoint's recipe setting
            (:func:`fewshot.evaluation.tta.resolve_tta`). The model file records it.

    The result's ``.report`` (:class:`AdaptReport`) holds per-class counts and the LOO estimate.
    """
    res_transform = None
    if head is None:
        head, res_transform = head_from_results(results) if results is not None else ("ls", None)
    head = head.split(":")[0]
    if head not in HEAD_KINDS:
        raise FewShotError(f"head {head!r} cannot be adapted; choose one of {', '.join(HEAD_KINDS)}")
    if batch_size < 1:
        raise FewShotError(f"batch size must be positive, got {batch_size}")
    encoder, preprocess, info, source = _load_encoder(encoder_or_checkpoint, preprocess, reference, device)
    distance = info.get("distance") or "euclidean"
    transform = transform or res_transform or checkpoint_transform(info, distance)
    images, y, names, skipped = _support_tensors(support, preprocess, labels=labels, class_names=class_names,
                                                 strict=strict, progress=progress)
    counts = torch.bincount(y, minlength=len(names))
    if bool((counts == 0).any()):
        empty = [names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
        raise FewShotError(f"class {empty[0]!r} has no support images")
    if len(names) < 2:
        raise FewShotError(f"the support set has a single class ({names[0]!r}); "
                           "a classifier needs at least two")
    if len(set(names)) != len(names):
        raise FewShotError("class names must be unique")
    tta = resolve_tta({**info, "preprocess": preprocess}, tta_views, tta_args)
    clf = FewShotClassifier(encoder, preprocess, None, names, transform=transform,
                            base_mean=info.get("base_mean"), source=source, tta=tta)
    z = clf.embed(images, batch_size=batch_size, progress=progress)
    if head == "ls":
        options = {} if lam is None else {"lam": lam}
    else:
        options = {"distance": distance}
    with threads(1):  # small dense linear algebra: see fewshot.evaluation.inference.threads
        clf.head = get_head(head, **options).partial_fit(None, z.unsqueeze(0), y.unsqueeze(0), len(names))
        loo_correct, loo_total, temperature = estimate(clf.head, z, y)
    clf.temperature = temperature if temperature is not None else 1.0
    clf.report = AdaptReport(head, names, counts.tolist(), counts.tolist(), loo_correct, loo_total,
                             clf.temperature, _lam(clf.head), transform, skipped, tta=tta.describe())
    if int8:
        clf.quantize(images)
    return clf


def update(classifier: FewShotClassifier, more_support, *, lam: float | None = None, labels=None,
           class_names: Sequence[str] | None = None, strict: bool = False, batch_size: int = 256,
           progress: bool = False) -> FewShotClassifier:
    """A classifier with the classes or shots of ``more_support`` added, without re-embedding the old ones.

    Classes whose name the classifier knows get more shots; other names become new classes. The
    head grows by ``partial_fit`` from the sufficient statistics it keeps (so the result equals
    adapting on the union from scratch, at the same λ). ``ls``: λ is re-chosen by generalised
    cross-validation from the statistics (:mod:`fewshot.heads.ridge_stats`) unless ``lam`` is
    given. The LOO estimate and temperature are recomputed over the new images (``nn``: over all
    images); with fewer than 10 estimable new images the previous temperature is kept.
    """
    images, y_local, names, skipped = _support_tensors(
        more_support, classifier.preprocess, labels=labels, class_names=class_names, strict=strict,
        progress=progress)
    all_names = list(classifier.class_names)
    index = {n: i for i, n in enumerate(all_names)}
    for n in names:
        if n not in index:
            index[n] = len(all_names)
            all_names.append(n)
    remap = torch.tensor([index[n] for n in names], dtype=torch.int64)
    y = remap[y_local] if y_local.numel() else y_local
    if y.numel() == 0:
        raise FewShotError("no new support images to add")
    k = len(all_names)
    z = classifier.embed(images, batch_size=batch_size, progress=progress)
    with threads(1):  # small dense linear algebra: see fewshot.evaluation.inference.threads
        old = classifier.head
        merged = head_for(old, lam).partial_fit(old, z.unsqueeze(0), y.unsqueeze(0), k)
        if isinstance(merged, FittedNN):  # its LOO covers every support image, old and new
            old_n = old.support.shape[1]
            rows, labels = merged.support[0], merged.support_labels[0]
            loo_correct, loo_total, temperature = estimate(merged, rows, labels)
            scope = "all support images"
        else:
            old_n = 0
            loo_correct, loo_total, temperature = estimate(merged, z, y)
            scope = "the images added by this update"
    if temperature is None or (sum(loo_total) < 10 and old_n == 0):
        temperature = classifier.temperature
    clf = FewShotClassifier(classifier.encoder, classifier.preprocess, merged, all_names,
                            transform=classifier.transform, base_mean=classifier.base_mean,
                            temperature=temperature,
                            source=classifier.source, tta=classifier.tta)
    added = torch.bincount(y, minlength=k).tolist()
    clf.report = AdaptReport(clf.head_kind, all_names, class_counts(merged).tolist(), added, loo_correct,
                             loo_total, temperature, _lam(merged), classifier.transform, skipped, scope,
                             "plain (1 view)" if classifier.tta is None else classifier.tta.describe())
    return clf


def _lam(fitted) -> float | None:
    """The ridge λ of a fitted ``ls`` head (None for the others)."""
    lam = getattr(fitted, "lam", None)
    return None if lam is None else float(lam[0])
