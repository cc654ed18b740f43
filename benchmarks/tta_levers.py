"""Eval-time levers on one checkpoint, chosen on dev val only: number of TTA views, augmentation
strength, heads on TTA features, and inductive ways to use the views and the base classes.

Embeds every image of the dev val set as ``--views`` seeded views (``fewshot.evaluation.tta.TTA.expand``, the
views of ``fewshot eval``'s TTA) and keeps each view's unit embedding, then scores the same fixed
episodes (``fewshot eval``'s: ``--way 20 --shot 1 --query 5 --episodes 600 --within-group --seed 0``)
under the checkpoint's feature transform (``--transform`` overrides; applied to the views' mean as
``fewshot eval`` does) with:

- ``proto@k``: prototypes on the mean of the first k views (k = 1 is the plain figure; a prefix
  of k of the V seeded views is a draw of k views like ``--tta k``'s own);
- ``ls`` / ``nn`` / ``proto`` at all V views (the eval heads on TTA features);
- ``nn-views``: a query (its TTA mean) against every view of every support image, the best view
  per class;
- ``ls-views``: ridge (the ``ls`` head) fitted on every view of the support images as its own row
  (``--ls-views`` of them), the query's TTA mean scored.

``--symmetries`` adds the views x symmetries table (prototypes on ``fewshot eval``'s features with
``--tta-arg symmetries=S``: per-symmetry view means, transformed block by block) and the tangent
distance (``--subspace``'s, k = 16) summed over the symmetries.

    nice python benchmarks/tta_levers.py --checkpoint /tmp/omni-run/best.pt --views 64
    nice python benchmarks/tta_levers.py --checkpoint /tmp/omni-run/best.pt --views 32 --tta-arg degrees=20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import episodes
from episodes.protocols import get_protocol
from episodes.sampling import EpisodeSpec, sample_episodes
from fewshot.evaluation.evaluate import build_heads, score_episodes
from fewshot.evaluation.features import checkpoint_transform, embed, transform
from fewshot.evaluation.inference import inference_model
from fewshot.evaluation.stats import mean_ci
from fewshot.evaluation.tta import SYMMETRIES, dihedral, override_tta, parse_tta_args, resolve_tta
from fewshot.models.checkpoint import load_encoder
from fewshot.training.objectives import episode_accuracy

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
DEFAULT = get_protocol("omniglot-minimal").at(DATA).val.spec   # small2's katakana + Sanskrit (dev val)


def view_features(model, images: torch.Tensor, pre, tta, batch_size: int) -> torch.Tensor:
    """Unit embeddings of every view of uint8 ``images [N, C, H, W]``: ``float16 [N, V, D]``."""
    fast = inference_model(model, "cpu")
    per = max(1, batch_size // tta.views)
    out = []
    with torch.inference_mode():
        for s in range(0, len(images), per):
            x = pre.normalize(tta.expand(pre.to_unit(images[s:s + per])))
            emb = F.normalize(fast(x).float(), dim=-1)
            out.append(emb.view(-1, tta.views, emb.shape[-1]).half())
    return torch.cat(out)


def subspace_distances(views: torch.Tensor, eps, k: int, chunk: int = 25) -> torch.Tensor:
    """Tangent distance ``[E, Q, S]``: each query (unit mean of its views) to each support image's
    k-dim view subspace (through the mean of its views)."""
    q_all = F.normalize(views.mean(1), dim=-1)
    centre = views.mean(1)
    basis = torch.linalg.svd(views - centre.unsqueeze(1), full_matrices=False).Vh[:, :k]   # [N, k, D]
    s_idx, q_idx = eps.support.reshape(len(eps), -1), eps.query.reshape(len(eps), -1)
    out = []
    for start in range(0, len(eps), chunk):
        si, qi = s_idx[start:start + chunk], q_idx[start:start + chunk]
        diff = q_all[qi].unsqueeze(2) - centre[si].unsqueeze(1)                       # [e, Q, S, D]
        along = torch.einsum("eqsd,eskd->eqsk", diff, basis[si])
        out.append(diff.pow(2).sum(-1) - along.pow(2).sum(-1))
    return torch.cat(out)


def nearest_accuracy(dist: torch.Tensor, eps) -> torch.Tensor:
    """Per-episode accuracy of 1-shot distances ``[E, Q, S]`` (the support image is its class)."""
    sy, qy = eps.labels()
    return (sy.gather(1, dist.argmin(-1)) == qy).double().mean(1)


def subspace_accuracy(views: torch.Tensor, eps, k: int) -> torch.Tensor:
    return nearest_accuracy(subspace_distances(views, eps, k), eps)


def whitened(feats: torch.Tensor, base: torch.Tensor, base_labels: torch.Tensor,
             shrink: float) -> torch.Tensor:
    """``feats`` whitened by the base classes' within-class covariance (shrunk toward its mean
    eigenvalue by ``shrink``), unit length."""
    onehot = F.one_hot(base_labels).to(base.dtype)
    means = onehot.T @ base / onehot.sum(0).unsqueeze(1)
    within = base - means[base_labels]
    evals, evecs = torch.linalg.eigh(within.T @ within / (len(base) - means.shape[0]))
    scale = (shrink * evals.mean() + (1 - shrink) * evals.clamp_min(0)).rsqrt()
    return F.normalize(feats @ evecs * scale, dim=-1)


def transductive_accuracy(feats: torch.Tensor, eps, temperature: float, balanced: bool,
                          iterations: int = 3) -> torch.Tensor:
    """Prototypes refined with the episode's queries (soft k-means; ``balanced``: Sinkhorn-balanced
    assignments, every class Q / way queries). Reference only: not an inductive figure."""
    s, sy, q, qy = eps.gather(feats)
    onehot = F.one_hot(sy, eps.spec.way).to(s.dtype)
    sums, counts = onehot.transpose(1, 2) @ s, onehot.sum(1).unsqueeze(-1)
    protos = F.normalize(sums / counts, dim=-1)
    for _ in range(iterations):
        w = torch.softmax(temperature * q @ protos.transpose(1, 2), -1)                # [E, Q, way]
        if balanced:
            for _ in range(50):
                w = w / w.sum(1, keepdim=True) * (q.shape[1] / eps.spec.way)
                w = w / w.sum(2, keepdim=True)
        protos = F.normalize((sums + w.transpose(1, 2) @ q) / (counts + w.sum(1).unsqueeze(-1)), dim=-1)
    return ((q @ protos.transpose(1, 2)).argmax(-1) == qy).double().mean(1)


def show(name: str, acc) -> None:
    m, ci = mean_ci(acc)
    print(f"  {name:<22} {100 * m:6.2f} ± {100 * ci:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default=DEFAULT)
    ap.add_argument("--views", type=int, default=64)
    ap.add_argument("--tta-arg", action="append", default=[])
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--ls-views", type=int, default=8, help="views per support image for ls-views (0: skip)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--transform", default=None, help="feature transform (default: the checkpoint's)")
    ap.add_argument("--subspace", action="store_true", help="tangent distance to the support views' subspace")
    ap.add_argument("--base", default=None, help="base data (the training set) for the whitening lever")
    ap.add_argument("--dihedral", action="store_true", help="ensemble of the 8 symmetries (7 more passes)")
    ap.add_argument("--symmetries", action="store_true",
                    help="views x symmetries (TTA symmetries 1/2/4/8, scored through fewshot eval's block "
                         "transform) and tangent distance summed over the symmetries (7 more passes)")
    ap.add_argument("--transductive", action="store_true", help="query-refined prototypes (reference only)")
    ap.add_argument("--with", dest="others", action="append", default=[], metavar="CKPT",
                    help="another checkpoint whose features are concatenated (ensemble)")
    args = ap.parse_args()
    model, info = load_encoder(args.checkpoint)
    pre = info["preprocess"]
    kind = args.transform or checkpoint_transform(info, "cosine")
    # one symmetry: the views of the image itself (--symmetries turns the images here, not in the TTA)
    tta = override_tta(resolve_tta(info), args.views, {**parse_tta_args(args.tta_arg), "symmetries": 1})
    size = None if pre.frame is not None else pre.image_size[0]   # framing reads full-size drawings
    data = episodes.load_data(args.data, None, image_size=size, channels=pre.channels)
    eps = sample_episodes(data, EpisodeSpec(20, 1, 5), args.episodes, seed=0, within_group=True)
    print(f"{data.describe()}\n{args.episodes} episodes 20-way 1-shot within-alphabet, 5 queries; "
          f"TTA {tta.describe()}; transform {kind}", flush=True)
    t0 = time.perf_counter()
    views = view_features(model, data.images, pre, tta, args.batch_size)
    print(f"  embedded {views.shape[0]} x {views.shape[1]} views in {time.perf_counter() - t0:.0f} s",
          flush=True)
    proto = build_heads("proto", "cosine")
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= tta.views} | {tta.views})
    for k in ks:
        feats = transform(views[:, :k].float().mean(1), kind)
        show(f"proto@{k}", score_episodes(feats, eps, proto)["proto"])
    feats = transform(views.float().mean(1), kind)
    heads = build_heads("nn,ls", "cosine")
    for name, acc in score_episodes(feats, eps, heads).items():
        show(f"{name}@{tta.views}", acc)
    # nn over every view of the support images
    s_idx, sy = eps.support.reshape(len(eps), -1), eps.labels()[0]
    q, qy = feats[eps.query.reshape(len(eps), -1)], eps.labels()[1]
    accs = []
    for e in range(len(eps)):
        sv = views[s_idx[e]].float()                                    # [S, V, D]
        sim = torch.einsum("qd,svd->qsv", q[e], sv).amax(-1)           # [Q, S]
        cls = torch.full((q.shape[1], 20), -2.0).scatter_reduce(1, sy[e].expand(q.shape[1], -1), sim, "amax")
        accs.append(float((cls.argmax(1) == qy[e]).float().mean()))
    show("nn-views", torch.tensor(accs).numpy())
    if args.ls_views:
        k = min(args.ls_views, tta.views)
        ls = build_heads("ls", "cosine")[0]
        accs = []
        for start in range(0, len(eps), 25):
            idx = s_idx[start:start + 25]
            sv = views[idx, :k].float()                                 # [E, S, k, D]
            e_, s_ = idx.shape
            support = sv.reshape(e_, s_ * k, -1)
            labels = sy[start:start + 25].to(torch.int64).repeat_interleave(k, 1)
            logits = ls.fit(support, labels, 20)(q[start:start + 25])
            accs += (logits.argmax(-1) == qy[start:start + 25]).float().mean(1).tolist()
        show(f"ls-views ({k} per image)", torch.tensor(accs).numpy())
    if args.subspace:
        per_view = transform(views.float(), kind)
        show("per-view (k = 0)", episode_accuracy(per_view.mean(1), eps).numpy())
        for k in (1, 2, 4, 8, 16):
            show(f"subspace-{k}", subspace_accuracy(per_view, eps, k).numpy())
    if args.base:
        base = episodes.load_data(args.base, None, image_size=size, channels=pre.channels)
        t0 = time.perf_counter()
        base_feats = transform(embed(model, base, pre, progress=False, tta=tta), kind)
        print(f"  base: {base.describe()} embedded in {time.perf_counter() - t0:.0f} s", flush=True)
        for shrink in (0.1, 0.5, 0.9):
            show(f"whiten (shrink {shrink})",
                 episode_accuracy(whitened(feats, base_feats, base.labels, shrink), eps).numpy())
    if args.dihedral:
        parts = [feats]   # symmetry 0: the image itself, embedded above
        for g in range(1, 8):
            turned = embed(model, dihedral(data.images, g).contiguous(), pre, progress=False, tta=tta)
            parts.append(transform(turned, kind))
            show(f"symmetry {g} alone", episode_accuracy(parts[-1], eps).numpy())
        show("dihedral (8 concatenated)", episode_accuracy(torch.cat(parts, 1), eps).numpy())
    if args.symmetries:   # every symmetry's views, kept: [8][N, V, D] float16
        turned = [views] + [view_features(model, dihedral(data.images, g).contiguous(), pre, tta,
                                          args.batch_size) for g in range(1, 8)]
        for k in ks:
            means = [v[:, :k].float().mean(1) for v in turned]
            row = []
            for count, group in SYMMETRIES.items():   # fewshot eval's features: blocks transformed one by one
                feats_s = transform(torch.cat([means[g] for g in group], 1), kind, blocks=count)
                row.append(100 * float(score_episodes(feats_s, eps, proto)["proto"].mean()))
            print(f"  {k:3d} views x symmetries 1/2/4/8: " + "  ".join(f"{a:6.2f}" for a in row), flush=True)
        dist = [subspace_distances(transform(v.float(), kind), eps, 16) for v in turned]
        for count, group in SYMMETRIES.items():
            show(f"subspace-16, {count} sym", nearest_accuracy(sum(dist[g] for g in group), eps).numpy())
    if args.others:
        parts = [feats]
        for path in args.others:
            other, other_info = load_encoder(path)
            parts.append(transform(embed(other, data, other_info["preprocess"], progress=False, tta=tta),
                                   checkpoint_transform(other_info, "cosine")))
            name = f"{Path(path).parent.name}/{Path(path).name}"
            show(f"{name} alone", episode_accuracy(parts[-1], eps).numpy())
        show(f"ensemble of {len(parts)}", episode_accuracy(torch.cat(parts, 1), eps).numpy())
    if args.transductive:
        for temperature, balanced in ((20.0, False), (40.0, True)):
            name = f"transductive {'sinkhorn' if balanced else 'soft k-means'} T={temperature:g}"
            show(name + " [reference]", transductive_accuracy(feats, eps, temperature, balanced).numpy())


if __name__ == "__main__":
    main()
