"""Batched least-squares head vs scikit-learn ``RidgeClassifier`` fitted per episode.

Same episodes, same lambda, same intercept handling: the predictions must be identical; prints
both times and the ratio (goal: at least 50x). Two batched figures: ``LSHead.fit(support)(query)``
on gathered tensors, and the evaluation path (``fewshot.evaluation.evaluate.score_episodes``: gather from the
feature matrix + shared inner products + ``LSHead.score_batch``), which includes the gather.
Timings are interleaved (batched, half of the sklearn loop, batched, other half, batched; the
batched figure is the median of its runs). Both sides get the same threads: by default all the
machine's cores, as ``fewshot eval`` and a plain sklearn loop run (and as
``benchmarks/eval_throughput.py`` compares); ``--threads 1`` is the per-core comparison.

    nice python benchmarks/ls_vs_sklearn.py [--episodes 2000 --dim 640 --lam 1.0 --threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from sklearn.linear_model import RidgeClassifier
from threadpoolctl import threadpool_limits

from episodes.sampling import EpisodeSpec, sample_episodes
from fewshot.evaluation.evaluate import score_episodes
from fewshot.evaluation.inference import threads
from fewshot.heads import LSHead


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=2000)
    p.add_argument("--dim", type=int, default=640)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--per-class", type=int, default=600)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both sides (default: torch's default, all cores)")
    args = p.parse_args()
    args.threads = args.threads or torch.get_num_threads()
    g = torch.Generator().manual_seed(args.seed)
    labels = torch.arange(args.classes).repeat_interleave(args.per_class)
    centres = torch.randn(args.classes, args.dim, generator=g)
    feats = (centres[labels] + 2.0 * torch.randn(len(labels), args.dim, generator=g)).relu()
    spec = EpisodeSpec(5, 5, 15)
    eps = sample_episodes(labels, spec, args.episodes, seed=args.seed)
    s, sy, q, qy = eps.gather(feats)
    head = LSHead(lam=args.lam)
    print(f"{args.episodes} episodes {spec}, D={args.dim}, lambda={args.lam}, {args.threads} thread(s) each "
          f"side; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")

    s_np, sy_np, q_np = s.double().numpy(), sy.numpy(), q.double().numpy()
    slow = np.empty((args.episodes, q.shape[1]), dtype=np.int64)
    t_fit, t_eval, t_slow = [], [], 0.0
    halves = (range(0, args.episodes // 2), range(args.episodes // 2, args.episodes))
    with threads(args.threads), threadpool_limits(limits=args.threads), torch.no_grad():
        head.fit(s, sy, spec.way)(q)                               # warm-up: allocator, page faults
        score_episodes(feats, eps, [head], threads=args.threads)
        for e in range(10):
            RidgeClassifier(alpha=args.lam).fit(s_np[e], sy_np[e]).predict(q_np[e])
        for part in (*halves, None):
            t0 = time.perf_counter()
            fast = head.fit(s, sy, spec.way)(q).argmax(-1).numpy()
            t_fit.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            acc_eval = score_episodes(feats, eps, [head], threads=args.threads)["ls"]
            t_eval.append(time.perf_counter() - t0)
            if part is None:
                break
            t0 = time.perf_counter()
            for e in part:
                slow[e] = RidgeClassifier(alpha=args.lam).fit(s_np[e], sy_np[e]).predict(q_np[e])
            t_slow += time.perf_counter() - t0
    same = (fast == slow).all(axis=1)
    acc = (fast == qy.numpy()).mean()
    acc_slow = (slow == qy.numpy()).mean(1)
    t_f, t_e = statistics.median(t_fit), statistics.median(t_eval)
    print(f"sklearn RidgeClassifier per episode: {t_slow:.2f} s")
    print(f"batched LSHead.fit/call: {t_f:.3f} s (runs {', '.join(f'{t:.3f}' for t in t_fit)}): "
          f"speed-up {t_slow / t_f:.0f}x (goal >= 50x)")
    print(f"evaluation path score_episodes (incl. gather): {t_e:.3f} s: speed-up {t_slow / t_e:.0f}x")
    print(f"identical predictions in {int(same.sum())}/{args.episodes} episodes; accuracy {100 * acc:.2f}%; "
          f"evaluation-path accuracies equal sklearn's in "
          f"{int((np.abs(acc_eval - acc_slow) < 1e-12).sum())}/{args.episodes} episodes; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    assert same.all(), "predictions differ"


if __name__ == "__main__":
    main()
