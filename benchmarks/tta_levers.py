"""Eval-time levers on one checkpoint, chosen on dev val only: number of TTA views, augmentation
strength, and heads on TTA features.

Embeds every image of the dev val set as ``--views`` seeded views (``fewshot.evaluation.tta.TTA.expand``, the
views of ``fewshot eval``'s TTA) and keeps each view's unit embedding, then scores the same fixed
episodes (``fewshot eval``'s: ``--way 20 --shot 1 --query 5 --episodes 600 --within-group --seed 0``)
with:

- ``proto@k``: prototypes on the mean of the first k views (k = 1 is the plain figure; a prefix
  of k of the V seeded views is a draw of k views like ``--tta k``'s own);
- ``ls`` / ``nn`` / ``proto`` at all V views (the eval heads on TTA features);
- ``nn-views``: a query (its TTA mean) against every view of every support image, the best view
  per class;
- ``ls-views``: ridge (the ``ls`` head) fitted on every view of the support images as its own row
  (``--ls-views`` of them), the query's TTA mean scored.

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
from fewshot.evaluation.inference import inference_model
from fewshot.evaluation.stats import mean_ci
from fewshot.evaluation.tta import override_tta, parse_tta_args, resolve_tta
from fewshot.models.checkpoint import load_encoder

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
DEFAULT = get_protocol("omniglot-minimal").at(DATA).val.spec   # small2's katakana + Sanskrit (dev val)


def view_features(model, data, pre, tta, batch_size: int) -> torch.Tensor:
    """Unit embeddings of every view: ``float16 [N, V, D]``."""
    fast = inference_model(model, "cpu")
    per = max(1, batch_size // tta.views)
    out = []
    with torch.inference_mode():
        for s in range(0, len(data), per):
            x = pre.normalize(tta.expand(pre.to_unit(data.images[s:s + per])))
            emb = F.normalize(fast(x).float(), dim=-1)
            out.append(emb.view(-1, tta.views, emb.shape[-1]).half())
    return torch.cat(out)


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
    args = ap.parse_args()
    model, info = load_encoder(args.checkpoint)
    pre = info["preprocess"]
    tta = override_tta(resolve_tta(info), args.views, parse_tta_args(args.tta_arg))
    data = episodes.load_data(args.data, None, image_size=pre.image_size[0], channels=pre.channels)
    eps = sample_episodes(data, EpisodeSpec(20, 1, 5), args.episodes, seed=0, within_group=True)
    print(f"{data.describe()}\n{args.episodes} episodes 20-way 1-shot within-alphabet, 5 queries; "
          f"TTA {tta.describe()}", flush=True)
    t0 = time.perf_counter()
    views = view_features(model, data, pre, tta, args.batch_size)
    print(f"  embedded {views.shape[0]} x {views.shape[1]} views in {time.perf_counter() - t0:.0f} s",
          flush=True)
    proto = build_heads("proto", "cosine")
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= tta.views} | {tta.views})
    for k in ks:
        feats = F.normalize(views[:, :k].float().mean(1), dim=-1)
        show(f"proto@{k}", score_episodes(feats, eps, proto)["proto"])
    feats = F.normalize(views.float().mean(1), dim=-1)
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


if __name__ == "__main__":
    main()
