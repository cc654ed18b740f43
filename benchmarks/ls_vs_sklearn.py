"""Batched least-squares head vs scikit-learn ``RidgeClassifier`` fitted per episode.

Same episodes, same lambda, same intercept handling: the predictions must be identical; prints
both times and the ratio (goal: at least 50x).

    nice python benchmarks/ls_vs_sklearn.py [--episodes 2000 --dim 640 --lam 1.0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import RidgeClassifier

from episodes.sampling import EpisodeSpec, sample_episodes
from fewshot.heads import LSHead


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=2000)
    p.add_argument("--dim", type=int, default=640)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--per-class", type=int, default=600)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    g = torch.Generator().manual_seed(args.seed)
    labels = torch.arange(args.classes).repeat_interleave(args.per_class)
    centres = torch.randn(args.classes, args.dim, generator=g)
    feats = (centres[labels] + 2.0 * torch.randn(len(labels), args.dim, generator=g)).relu()
    spec = EpisodeSpec(5, 5, 15)
    eps = sample_episodes(labels, spec, args.episodes, seed=args.seed)
    s, sy, q, qy = eps.gather(feats)
    print(f"{args.episodes} episodes {spec}, D={args.dim}, lambda={args.lam}, torch threads "
          f"{torch.get_num_threads()}")

    t0 = time.perf_counter()
    with torch.no_grad():
        fast = LSHead(lam=args.lam).fit(s, sy, spec.way)(q).argmax(-1).numpy()
    t_fast = time.perf_counter() - t0

    s_np, sy_np, q_np = s.double().numpy(), sy.numpy(), q.double().numpy()
    slow = np.empty_like(fast)
    t0 = time.perf_counter()
    for e in range(args.episodes):
        slow[e] = RidgeClassifier(alpha=args.lam).fit(s_np[e], sy_np[e]).predict(q_np[e])
    t_slow = time.perf_counter() - t0
    same = (fast == slow).all(axis=1)
    acc = (fast == qy.numpy()).mean()
    print(f"batched ls: {t_fast:.3f} s; sklearn RidgeClassifier per episode: {t_slow:.2f} s; "
          f"speed-up {t_slow / t_fast:.0f}x")
    print(f"identical predictions in {int(same.sum())}/{args.episodes} episodes; accuracy {100 * acc:.2f}%")
    assert same.all(), "predictions differ"


if __name__ == "__main__":
    main()
