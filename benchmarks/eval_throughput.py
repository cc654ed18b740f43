"""Evaluation throughput: embed once + batched heads vs the usual per-episode loop.

One Conv-4 (random weights), one miniImageNet-test-sized split (20 classes x 600 procedurally
generated 84x84 RGB images = 12,000), the same 5-way 5-shot 15-query episodes scored two ways in
one run:

- fast: embed the split once (``fewshot.features.embed``), then ``score_episodes`` (gather +
  batched proto and ls heads over chunks of episodes);
- loop: as easyfsl / learn2learn evaluate: for each episode, embed its 100 images, fit and score
  the same heads on that one episode.

Both must give the same per-episode accuracies. Also times sampling plus every batched head
(proto, nn, ls, ls-mlp) over 10,000 episodes, against the single embedding pass.

    nice python benchmarks/eval_throughput.py                  # the full protocol
    nice python benchmarks/eval_throughput.py --loop-episodes 200   # loop timed on the first 200
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from episodes.sampling import EpisodeSpec, sample_episodes
from fewshot.encoders import build_encoder
from fewshot.evaluate import build_heads, score_episodes
from fewshot.features import embed
from fewshot.preprocess import Preprocess


def make_images(classes: int, per_class: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class = a random low-frequency colour pattern; image = pattern + shift + noise (uint8)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(classes, 3, 6, 6, generator=g) * 255, size=size,
                                           mode="bilinear", align_corners=False)
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = torch.empty(len(labels), 3, size, size, dtype=torch.uint8)
    for start in range(0, len(labels), 1000):
        lab = labels[start:start + 1000]
        x = 0.4 * base[lab] + 80 + 90 * torch.randn(len(lab), 3, size, size, generator=g)
        images[start:start + 1000] = x.clamp(0, 255).to(torch.uint8)
    return images, labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--per-class", type=int, default=600)
    p.add_argument("--episodes", type=int, default=2000)
    p.add_argument("--loop-episodes", type=int, default=None,
                   help="time the loop on the first N episodes only (default: all) and extrapolate")
    p.add_argument("--many", type=int, default=10000, help="episodes for the sampling+heads cost check")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, labels = make_images(args.classes, args.per_class, 84, args.seed)
    model = build_encoder("conv4", in_channels=3, num_classes=64, image_size=84).eval()
    prep = Preprocess(84, 3, 0.5, 0.25)
    spec = EpisodeSpec(5, 5, 15)
    eps = sample_episodes(labels, spec, args.episodes, seed=args.seed)
    heads = build_heads("proto,ls")
    print(f"{len(images)} images 3x84x84, conv4 (D={model.embedding_dim}), {args.episodes} episodes {spec}, "
          f"heads {[h.name for h in heads]}, torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    feats = embed(model, images, prep, device="cpu", batch_size=256, progress=False)
    t_embed = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = score_episodes(feats, eps, heads)
    t_heads = time.perf_counter() - t0
    t_fast = t_embed + t_heads
    print(f"fast: embed {t_embed:.1f} s ({len(images) / t_embed:.0f} img/s) + heads {t_heads:.2f} s "
          f"= {t_fast:.1f} s")

    n_loop = min(args.loop_episodes or args.episodes, args.episodes)
    loop = {h.name: np.empty(n_loop) for h in heads}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for e in range(n_loop):
            ep = eps[e]
            idx = torch.cat([ep.support.reshape(-1), ep.query.reshape(-1)])
            emb = model(prep(images[idx]))[0].float()
            s, q = emb[:spec.way * spec.shot].unsqueeze(0), emb[spec.way * spec.shot:].unsqueeze(0)
            sy, qy = ep.labels()
            for h in heads:
                loop[h.name][e] = float((h.fit(s, sy, spec.way)(q).argmax(-1) == qy).double().mean())
    t_loop_measured = time.perf_counter() - t0
    t_loop = t_loop_measured * args.episodes / n_loop
    for h in heads:
        diff = np.abs(loop[h.name] - fast[h.name][:n_loop])
        a_fast, a_loop = 100 * fast[h.name][:n_loop].mean(), 100 * loop[h.name].mean()
        print(f"  {h.name}: fast {a_fast:.2f}% loop {a_loop:.2f}% "
              f"on the same {n_loop} episodes; episodes that differ: {int((diff > 0).sum())}")
        assert (diff > 0).mean() <= 0.002, f"{h.name}: accuracies differ in {int((diff > 0).sum())} eps"
    note = "" if n_loop == args.episodes else (
        f" (measured {t_loop_measured:.1f} s on {n_loop} episodes, scaled)")
    print(f"loop: {t_loop:.1f} s for {args.episodes} episodes{note}")
    print(f"speed-up (loop / fast): {t_loop / t_fast:.1f}x")

    all_heads = build_heads("proto,nn,ls,ls-mlp")
    t0 = time.perf_counter()
    many = sample_episodes(labels, spec, args.many, seed=args.seed + 1)
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    score_episodes(feats, many, all_heads)
    t_all = time.perf_counter() - t0
    names = [h.name for h in all_heads]
    print(f"{args.many} episodes: sampling {t_sample:.2f} s + heads {names} {t_all:.1f} s "
          f"= {100 * (t_sample + t_all) / t_embed:.1f}% of the embedding pass ({t_embed:.1f} s)")


if __name__ == "__main__":
    main()
