"""The evaluation protocol: every head scored on the very same episodes of a novel split.

Embed the split once (cached), transform the features, draw the episodes once per shot (or load
them from manifests, or take fixed ones such as the Omniglot challenge runs), then process the
episodes in chunks: gather the support and query rows of a chunk once (``[E, S+Q, D]``), compute
their inner products with the support rows once (:class:`~fewshot.heads.batch.EpisodeBatch`, one
float32 matmul), and let every head score the whole chunk from them (heads with a
``score_batch`` method; any other head is fitted on the support and called on the query).
Per-episode accuracies feed the statistics (:mod:`fewshot.evaluation.stats`) and
the report (:mod:`fewshot.evaluation.report`).
"""

from __future__ import annotations

import copy
import itertools
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from episodes.imageset import ImageSet
from episodes.manifest import load_manifest
from episodes.protocols import EpisodeProtocol
from episodes.sampling import Episodes
from fewshot.device import pick_device
from fewshot.errors import FewShotError
from fewshot.evaluation import stats
from fewshot.evaluation.features import (
    _load_encoder,
    check_finite,
    checkpoint_transform,
    embed_cached,
)
from fewshot.evaluation.features import transform as apply_transform
from fewshot.evaluation.inference import threads as limit_threads
from fewshot.evaluation.tangents import ViewTangents, embed_with_tangents
from fewshot.evaluation.tta import resolve_tta
from fewshot.heads import Head, get_head
from fewshot.heads.base import check_distance
from fewshot.heads.batch import EpisodeBatch, centred_features

DEFAULT_HEADS = ("proto", "nn", "ls", "ls-mlp", "logreg")
DEFAULT_EPISODES = EpisodeProtocol()   # 5-way 1- and 5-shot, 15 queries, 2,000 episodes per shot, seed 0
# Gathered support+query features per chunk. Small enough that the chunk's rows stay in cache
# between the gather, the centring and the shared matmul; large enough to amortise the per-chunk
# Python overhead of the heads (see benchmarks/eval_throughput.py --tune-chunks).
CHUNK_BYTES = 1 << 26


def build_heads(heads: Sequence[str | Any] | str, distance: str | None = None) -> list[Head]:
    """Head objects from names (``"proto,nn:k=5"`` or a list), objects or callables; names unique."""
    if isinstance(heads, str):
        heads = split_heads(heads)
    kw = {} if distance is None else {"distance": distance}
    out = [get_head(h, **kw) if isinstance(h, str) else get_head(h) for h in heads]
    if not out:
        raise FewShotError("no heads to evaluate")
    names = [h.name for h in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FewShotError(f"head names must be unique, got {dup} twice")
    return out


def split_heads(text: str) -> list[str]:
    """Head names of ``"proto,nn:k=5,weighted=False,ls"``, split at commas that start a new head
    (an option of the previous head stays with it); blanks dropped."""
    parts: list[str] = []
    for piece in text.split(","):
        if parts and "=" in piece and ":" not in piece and ":" in parts[-1]:
            parts[-1] += "," + piece  # another option of the previous head
        else:
            parts.append(piece)
    return [p.strip() for p in parts if p.strip()]


def _chunk_size(e: int, per_episode_rows: int, dim: int) -> int:
    return max(1, min(e, CHUNK_BYTES // max(1, per_episode_rows * dim * 4)))


def batched(head: Head) -> bool:
    """Whether a head scores from the shared inner products (``score_batch``)."""
    return callable(getattr(head, "score_batch", None)) and bool(getattr(head, "batched", True))


def tangent_count(head: Head) -> int:
    """View directions per image a head needs (``tangents``, e.g. the ``tangent`` head's ``k``); 0: none."""
    k = getattr(head, "tangents", 0)
    return k if isinstance(k, int) and not isinstance(k, bool) and k > 0 else 0


def score_chunk(rows: torch.Tensor, n_support: int, support_labels: torch.Tensor, way: int,
                heads: Sequence[Head], *, origin: torch.Tensor | None = None,
                origin_proj: torch.Tensor | None = None, raw: torch.Tensor | None = None,
                row_sq: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Logits ``[E,Q,way]`` of every head on one chunk of gathered episodes ``rows [E, S+Q, D]``
    (support rows first): heads with ``score_batch`` share one :class:`EpisodeBatch`; the others
    are fitted on the support and called on the query (of ``raw`` when the rows are given relative
    to ``origin``, see :class:`EpisodeBatch`). Without ``origin`` the rows are raw features and
    are centred per episode here."""
    if origin is None:
        batch = EpisodeBatch.centred(rows, n_support)
    else:
        batch = EpisodeBatch(rows, n_support, origin=origin, origin_proj=origin_proj, raw=raw, row_sq=row_sq)
    out = {}
    for head in heads:
        if batched(head):
            out[head.name] = head.score_batch(batch, support_labels, way)
        else:
            out[head.name] = head.fit(batch.support, support_labels, way)(batch.query)
    return out


def score_episodes(features: torch.Tensor, episodes: Episodes, heads: Sequence[Head], *,
                   chunk_size: int | None = None, progress: bool = False,
                   threads: int | None = 1, tangents: ViewTangents | None = None) -> dict[str, np.ndarray]:
    """Accuracy of every head on every episode: ``{head name: float64 [E]}``.

    Episodes are processed ``chunk_size`` at a time (default: as many as fit ``CHUNK_BYTES`` of
    gathered features); the support and query rows of a chunk are gathered once and every head
    scores the whole chunk in one batched call (:func:`score_chunk`). ``threads``: intra-op
    threads for the heads (default 1: their work is many small batched ops, where thread
    synchronisation costs more than it saves, up to 10x more on a busy machine; None keeps
    torch's setting). The embedding pass is not affected. ``tangents``: every image's view features
    and directions (:class:`fewshot.evaluation.tangents.ViewTangents`), which the heads that need
    them (``tangent``, :func:`tangent_count`) are fitted and scored on instead of ``features``.
    """
    from fewshot.progress import progress as progress_bar

    e = len(episodes)
    way, shot, q = episodes.spec.way, episodes.support.shape[2], episodes.query.shape[2]
    n_support = way * shot
    on_views = [h for h in heads if tangent_count(h)]
    heads_plain = [h for h in heads if not tangent_count(h)]
    if on_views and tangents is None:
        raise FewShotError(f"head {', '.join(h.name for h in on_views)} needs every image's view directions, "
                           "which evaluation computes from TTA views (--tta N with N >= 2)")
    if on_views and len(tangents) != features.shape[0]:
        raise FewShotError(f"view directions for {len(tangents)} images, features for {features.shape[0]}")
    # rows of D floats gathered per episode: the features, and for tangent heads the view features
    # and the support rows' directions
    gathered = way * (shot + q) * (2 if on_views else 1) + (n_support * tangents.k if on_views else 0)
    chunk = chunk_size or _chunk_size(e, gathered, features.shape[-1])
    out = {h.name: np.empty(e, dtype=np.float64) for h in heads}
    bar = progress_bar(total=e * len(heads), desc=f"{way}-way {shot}-shot", unit="ep", disable=not progress)
    index = torch.cat([episodes.support.reshape(e, -1), episodes.query.reshape(e, -1)], 1).to(features.device)
    rows_per_ep = index.shape[1]
    sy_all, qy_all = episodes.labels()
    if not features.is_floating_point():
        features = features.float()
    d = features.shape[-1]
    centred, mu, proj, row_sq = centred_features(features)
    # reused by every chunk (allocating tens of MB per chunk costs more in page faults than the work)
    buf = torch.empty(min(chunk, e) * rows_per_ep, d, dtype=features.dtype, device=features.device)
    raw_buf = None if all(batched(h) for h in heads_plain) else torch.empty_like(buf)
    with torch.no_grad(), limit_threads(threads):
        for start in range(0, e, chunk):
            stop = min(e, start + chunk)
            n = stop - start
            idx = index[start:stop].reshape(-1)
            rows = torch.index_select(centred, 0, idx, out=buf[:n * rows_per_ep]).view(n, rows_per_ep, d)
            raw = None if raw_buf is None else torch.index_select(
                features, 0, idx, out=raw_buf[:n * rows_per_ep]).view(n, rows_per_ep, d)
            sy, qy = sy_all[start:stop].to(features.device), qy_all[start:stop].to(features.device)
            logits = score_chunk(rows, n_support, sy, way, heads_plain, origin=mu,
                                 origin_proj=proj[idx].view(n, rows_per_ep), raw=raw,
                                 row_sq=row_sq[idx].view(n, rows_per_ep)) if heads_plain else {}
            if on_views:
                support, directions, query = tangents.gather(index[start:stop], n_support)
                for head in on_views:
                    logits[head.name] = head.fit(support, sy, way, tangents=directions)(query)
            for head in heads:
                lg = logits[head.name]
                if lg.shape != (*qy.shape, way):
                    raise FewShotError(f"head {head.name} returned logits {tuple(lg.shape)}, "
                                       f"expected {(*qy.shape, way)}")
                acc = (lg.argmax(-1) == qy.to(lg.device)).double().mean(-1)
                out[head.name][start:stop] = acc.cpu().numpy()
                bar.update(stop - start)
    bar.close()
    return out


@dataclass
class EvalResult:
    """Per-episode accuracies of every head at every shot, with the run's configuration."""

    heads: list[str]
    shots: list[int]
    way: int
    query: int
    accuracy: dict[tuple[str, int], np.ndarray]
    config: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    checkpoint: dict = field(default_factory=dict)
    challenge: bool = False
    tsne: dict | None = None
    retrieval: dict | None = None

    # ------------------------------------------------------------------ statistics
    def results(self) -> list[dict]:
        rows = []
        for shot in self.shots:
            for head in self.heads:
                acc = self.accuracy[(head, shot)]
                mean, ci = stats.mean_ci(acc)
                row = {"head": head, "way": self.way, "shot": shot, "query": self.query,
                       "episodes": int(acc.size), "accuracy": mean, "ci95": ci}
                if self.challenge:
                    row["error_rate"] = 1.0 - mean
                rows.append(row)
        return rows

    def paired(self) -> list[dict]:
        """Every pair of heads at every shot; Holm adjustment over the whole family."""
        rows = []
        for shot in self.shots:
            for a, b in itertools.combinations(self.heads, 2):
                p = stats.paired(self.accuracy[(a, shot)], self.accuracy[(b, shot)])
                rows.append({"head_a": a, "head_b": b, "shot": shot, **p.to_dict(), "_p": p})
        adjusted = stats.holm([r["p_value"] for r in rows])
        for r, padj in zip(rows, adjusted):
            p = r.pop("_p")
            r["p_holm"] = float(padj)
            r["verdict"] = stats.verdict(r["head_a"], r["head_b"], p, p_adjusted=float(padj))
        return rows

    def best(self, shot: int) -> str:
        return max(self.heads, key=lambda h: self.accuracy[(h, shot)].mean())

    # ------------------------------------------------------------------ presentation
    def table(self) -> str:
        """The printed result: accuracy (challenge: error rate) ± 95% CI per head and shot; verdicts."""
        metric = "error rate %" if self.challenge else "accuracy %"
        cols = [f"{s}-shot" for s in self.shots]
        n_eps = sorted({int(a.size) for a in self.accuracy.values()})
        head = (f"{self.dataset.get('name') or 'data'}: {self.way}-way, {self.query} queries/class, "
                f"{'/'.join(map(str, n_eps))} episodes, {metric} ± 95% CI "
                f"(transform {self.config.get('transform')}, distance {self.config.get('distance')}"
                f"{_tta_note(self.config.get('tta'))})")
        width = max(8, *(len(h) for h in self.heads))
        lines = [head, f"{'head':<{width}}  " + "  ".join(f"{c:>14}" for c in cols)]
        for h in self.heads:
            cells = []
            for s in self.shots:
                mean, ci = stats.mean_ci(self.accuracy[(h, s)])
                value = (1 - mean) if self.challenge else mean
                cells.append(f"{100 * value:6.2f} ± {100 * ci:4.2f}")
            lines.append(f"{h:<{width}}  " + "  ".join(f"{c:>14}" for c in cells))
        pairs = self.paired()
        if pairs:
            lines.append("best head against each other (paired, Holm-adjusted over all pairs and shots; "
                         "all pairs in results.md):")
            for s in self.shots:
                best = self.best(s)
                for r in pairs:
                    if r["shot"] == s and best in (r["head_a"], r["head_b"]):
                        lines.append(f"  {s}-shot: {r['verdict']}")
        if self.retrieval is not None:
            from fewshot.evaluation.retrieval import describe

            lines.append(describe(self.retrieval))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The ``results.json`` document."""
        return {
            "format": "fewshot-eval/1",
            "config": self.config,
            "versions": versions(),
            "dataset": self.dataset,
            "checkpoint": self.checkpoint,
            "challenge": self.challenge,
            "results": self.results(),
            "paired": self.paired(),
            "retrieval": self.retrieval,
        }


def _tta_note(record: dict | None) -> str:
    if not record or int(record.get("views", 1)) == 1:
        return ""
    from fewshot.evaluation.tta import TTA

    return f", TTA {TTA.from_dict(record).describe()}"


def versions() -> dict:
    import scipy
    import sklearn

    from fewshot.version import __version__

    return {"fewshot": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__}


EpisodeSource = EpisodeProtocol | Episodes | str | os.PathLike | Sequence[Episodes | str | os.PathLike]


def _episode_sets(data: ImageSet, episodes: EpisodeSource) -> list[Episodes]:
    """The episodes to score: drawn by a protocol (one draw per shot), given, or read from manifests."""
    if isinstance(episodes, EpisodeProtocol):
        return episodes.sample(data)
    items = [episodes] if isinstance(episodes, (Episodes, str, os.PathLike)) else list(episodes)
    if not items:
        raise FewShotError("no episodes to score")
    sets = [e if isinstance(e, Episodes) else load_manifest(e, data) for e in items]
    seen = [int(e.support.shape[2]) for e in sets]
    if len(set(seen)) != len(seen):
        raise FewShotError(f"two episode sets have the same shot ({seen})")
    return sets


def _episode_record(episodes: EpisodeSource, sets: list[Episodes]) -> dict:
    """How the episodes were chosen, for ``results.json``: the drawing seed or the manifest files."""
    files = None
    if isinstance(episodes, (str, os.PathLike)):
        files = os.fspath(episodes)
    elif not isinstance(episodes, (EpisodeProtocol, Episodes)):
        paths = [os.fspath(e) for e in episodes if isinstance(e, (str, os.PathLike))]
        files = paths or None
    seed = episodes.seed if isinstance(episodes, EpisodeProtocol) else None if files else sets[0].seed
    within = bool(getattr(episodes, "within_group", False) or any(e.within_group for e in sets))
    return {"seed": seed, "episodes_file": files, "within_group": within}


def tsne_embedding(features: torch.Tensor, data: ImageSet, seed: int = 0, max_classes: int = 10,
                   per_class: int = 30) -> dict:
    """2-D t-SNE (scikit-learn) of up to ``max_classes`` x ``per_class`` images, for the report."""
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    labels = data.labels.numpy()
    classes = rng.permutation(data.num_classes)[:max_classes]
    idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes])
    x = features[torch.from_numpy(idx)].numpy()
    perplexity = float(min(30, max(2, (len(idx) - 1) // 3)))
    from threadpoolctl import threadpool_limits

    # One OpenMP thread: t-SNE of a few hundred points gains nothing from more, and spinning
    # OpenMP workers slow it down by orders of magnitude on a busy machine.
    with threadpool_limits(limits=1, user_api="openmp"):
        pts = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(x)
    return {"points": pts.tolist(), "labels": labels[idx].tolist(),
            "class_names": {int(c): data.class_names[c] for c in classes}}


def evaluate(checkpoint: str | os.PathLike | tuple[torch.nn.Module, dict], data: ImageSet, *,
             heads: Sequence[str | Any] | str = DEFAULT_HEADS, episodes: EpisodeSource = DEFAULT_EPISODES,
             transform: str | None = None, distance: str | None = None, tta_views: int | None = None,
             tta_args: dict | None = None, challenge: bool = False, retrieval: bool = True,
             tsne: bool = False,
             progress: bool = True, device: str | None = None, batch_size: int = 256,
             cache_dir: str | os.PathLike | None = None, chunk_size: int | None = None) -> EvalResult:
    """Score every head on the same episodes of ``data`` (novel classes) with the encoder of ``checkpoint``.

    ``checkpoint``: a path (``fewshot.models.checkpoint.load_encoder``) or a loaded ``(model, info)`` pair.
    ``episodes``: an :class:`~episodes.protocols.EpisodeProtocol` (way, shots, query, number of
    episodes, within-group, seed: one seeded draw per shot; default 5-way 1- and 5-shot, 15 queries,
    2,000 episodes), fixed :class:`~episodes.Episodes` (e.g. the Omniglot challenge runs, with
    ``challenge=True``: error rates), or manifest files (one per shot).
    ``distance`` defaults to the checkpoint's training distance; ``transform`` to the transform the
    checkpoint records (a recipe's ``eval_transform``), else by the distance (cosine -> l2 features,
    euclidean -> raw). Images are converted to the encoder's channels and size by the checkpoint's
    preprocessing, so cross-domain data just works. The report files are written by
    :func:`fewshot.evaluation.report.write_report`.

    Test-time augmentation: the checkpoint's (:func:`fewshot.evaluation.tta.resolve_tta`; the
    recipe's views and augmentation, plain for a checkpoint without one), ``tta_views`` /
    ``tta_args`` override it.
    ``retrieval``: also precision@1, R-precision and MAP@R of leave-one-out retrieval over all images
    (:mod:`fewshot.evaluation.retrieval`, under the checkpoint's training distance) when every class has >= 2.
    ``tsne``: also a 2-D t-SNE of up to 10 classes for the report.
    """
    dev = pick_device(device)
    model, info = _load_encoder(checkpoint, dev)
    distance = check_distance(distance or info.get("distance") or "euclidean")
    kind = transform or checkpoint_transform(info, distance)
    head_objs = build_heads(heads, distance)
    ep_sets = _episode_sets(data, episodes)
    tta = resolve_tta(info, tta_views, tta_args)
    calibrating = [h.name for h in head_objs if callable(getattr(h, "with_base_means", None))]
    if tta.symmetries > 1 and calibrating:   # their base statistics are of single embeddings
        raise FewShotError(f"head {', '.join(calibrating)} calibrates toward base-class means of single "
                           f"embeddings, and with TTA symmetries a feature concatenates {tta.symmetries} "
                           "of them (use --tta-arg symmetries=1)")

    base_mean = info.get("base_mean")
    base_mean = None if base_mean is None else torch.as_tensor(base_mean).cpu()
    k = max(tangent_count(h) for h in head_objs)
    tangents = None
    if k:   # the features and every image's view directions from one pass (not cached)
        feats, tangents = embed_with_tangents(model, data, info.get("preprocess"), tta=tta, k=k, kind=kind,
                                              base_mean=base_mean, device=dev, batch_size=batch_size,
                                              progress=progress)
    else:
        feats = embed_cached((model, info), data, cache_dir=cache_dir, device=dev, batch_size=batch_size,
                             progress=progress, tta=tta)
    check_finite(feats, data.name or None)
    feats = apply_transform(feats, kind, base_mean, blocks=tta.symmetries)
    check_finite(feats, data.name or None)

    head_objs = bind_base_means(head_objs, info, kind)

    accuracy: dict[tuple[str, int], np.ndarray] = {}
    for eps in ep_sets:
        shot = int(eps.support.shape[2])
        scores = score_episodes(feats, eps, head_objs, chunk_size=chunk_size, progress=progress,
                                tangents=tangents)
        for name, acc in scores.items():
            accuracy[(name, shot)] = acc
    way_used = int(ep_sets[0].support.shape[1])
    query_used = int(ep_sets[0].query.shape[2])
    record = _episode_record(episodes, ep_sets)
    config = {"heads": [h.name for h in head_objs], "head_repr": {h.name: repr(h) for h in head_objs},
              "way": way_used, "shots": [int(e.support.shape[2]) for e in ep_sets], "query": query_used,
              "episodes": [len(e) for e in ep_sets], "seed": record["seed"],
              "episodes_file": record["episodes_file"], "within_group": record["within_group"],
              "transform": kind, "distance": distance, "device": str(dev), "challenge": challenge,
              "tta": tta.to_dict()}
    result = EvalResult(
        heads=[h.name for h in head_objs], shots=config["shots"], way=way_used, query=query_used,
        accuracy=accuracy, config=config,
        dataset={"name": data.name, "fingerprint": data.fingerprint, "images": len(data),
                 "classes": data.num_classes, "description": data.describe()},
        checkpoint={"path": None if info.get("path") is None else os.fspath(info["path"]),
                    "hash": info.get("hash"), "distance": info.get("distance")},
        challenge=challenge,
    )
    if retrieval and _retrievable(data):
        from fewshot.evaluation.retrieval import retrieval_figures

        result.retrieval = retrieval_figures(feats, data.labels, info.get("distance") or distance)
    if tsne:
        seed = record["seed"] if record["seed"] is not None else next(
            (e.seed for e in ep_sets if e.seed is not None), 0)    # manifests: the seed they were drawn with
        result.tsne = tsne_embedding(feats, data, seed)
    return result


def bind_base_means(heads: Sequence[Head], info: dict, transform: str) -> list[Head]:
    """``heads`` with the checkpoint's base-class means (under the features' ``transform``) handed
    to every head that calibrates toward them (``with_base_means``, e.g. ``proto-dc``) and has none
    yet: a copy of each such head, so a head object given by the caller is left as it was."""
    needing = [h for h in heads if callable(getattr(h, "with_base_means", None))
               and getattr(h, "base_means", None) is None]
    if not needing:
        return list(heads)
    names = ", ".join(h.name for h in needing)
    where = f"checkpoint {info['path']}" if info.get("path") else "the checkpoint"
    means = info.get("base_class_means")
    if not means:
        raise FewShotError(f"head {names} needs the base-class means, which {where} does not record "
                           "(trained before they were; `fewshot train --resume` on its finished run folder "
                           "adds them)")
    if transform not in means:
        raise FewShotError(f"head {names} needs the base-class means under transform {transform!r}; "
                           f"{where} records them for {', '.join(sorted(means))} "
                           f"(use --transform {'l2' if 'l2' in means else sorted(means)[0]})")
    return [copy.copy(h).with_base_means(means[transform]) if any(h is n for n in needing) else h
            for h in heads]


def _retrievable(data: ImageSet) -> bool:
    """Leave-one-out retrieval needs two classes of at least two images each."""
    counts = torch.bincount(data.labels)
    counts = counts[counts > 0]
    return counts.numel() >= 2 and int(counts.min()) >= 2
