"""Evaluation throughput: embed once + batched heads vs the usual per-episode loop.

Data: the procedural glyph set (``episodes.readers.glyphs.make_glyphs``, 20 classes x 600
drawings = 12,000 images, the size of miniImageNet's test split), drawn at 28x28 and resized to
84x84 RGB. Encoder: a seeded random Conv-4 (1600-d at 84x84), so accuracies are well above chance
and below 100%, and "same accuracies" is a real check. The same 5-way 5-shot 15-query episodes
are scored two ways in one process:

- fast: embed the split once (``fewshot.evaluation.features.embed``: the prepared inference copy of the
  encoder, ``fewshot.evaluation.inference``), then ``score_episodes`` (one gather per chunk, shared inner
  products, every head batched);
- loop: as easyfsl / learn2learn evaluate: for each episode, embed its 100 images with the
  encoder module as it is, fit and score every head on that one episode.

The loop is timed on ``--loop-episodes`` episodes (default 200 of 2,000), in two halves run before
and after the fast path (so both see the same machine load), and scaled to all episodes; the
output says so. Accuracies are compared episode by episode on those episodes.

Second figure: sampling plus all batched heads (proto, nn, ls, ls-mlp) over 10,000 episodes, as
a fraction of the single embedding pass (goal < 10%).

    nice python benchmarks/eval_throughput.py                      # defaults as above
    nice python benchmarks/eval_throughput.py --loop-episodes 2000  # the whole loop (~25 min here)
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from episodes.readers.glyphs import make_glyphs
from episodes.sampling import EpisodeSpec, sample_episodes
from fewshot.evaluation.evaluate import build_heads, score_episodes
from fewshot.evaluation.features import embed
from fewshot.models.encoders import build_encoder
from fewshot.models.preprocess import Preprocess


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def loop_scores(model, prep, images, eps, heads, spec, rng: range, out: dict) -> None:
    """The per-episode loop: embed the episode's images, fit and score each head on it alone."""
    with torch.inference_mode():
        for e in rng:
            ep = eps[e]
            idx = torch.cat([ep.support.reshape(-1), ep.query.reshape(-1)])
            emb = model(prep(images[idx]))[0].float()
            n_s = spec.way * spec.shot
            s, q = emb[:n_s].unsqueeze(0), emb[n_s:].unsqueeze(0)
            sy, qy = ep.labels()
            for h in heads:
                out[h.name][e] = float((h.fit(s, sy, spec.way)(q).argmax(-1) == qy).double().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--per-class", type=int, default=600)
    p.add_argument("--episodes", type=int, default=2000)
    p.add_argument("--loop-episodes", type=int, default=200,
                   help="time the loop on this many episodes and scale to --episodes (default 200)")
    p.add_argument("--heads", default="proto,nn,ls,ls-mlp")
    p.add_argument("--many", type=int, default=10000, help="episodes for the sampling+heads cost check")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the embedding and the loop")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    data = make_glyphs(args.classes, per_class=args.per_class, size=28, seed=args.seed)
    data = data.resized(84).with_channels(3)
    images = data.images
    model = build_encoder("conv4", in_channels=3, num_classes=64, image_size=84).eval()
    prep = Preprocess.fit(images, channels=3)
    spec = EpisodeSpec(5, 5, 15)
    eps = sample_episodes(data, spec, args.episodes, seed=args.seed)
    heads = build_heads(args.heads)
    n_loop = min(args.loop_episodes, args.episodes)
    made = time.perf_counter() - t0
    print(f"glyphs {len(images)} images 3x84x84 ({args.classes} classes, made in {made:.0f} s), "
          f"random conv4 (D={model.embedding_dim}), {args.episodes} episodes {spec}, heads "
          f"{[h.name for h in heads]}, torch threads {torch.get_num_threads()}; {load()}")

    loop = {h.name: np.full(args.episodes, np.nan) for h in heads}
    half = n_loop // 2
    t0 = time.perf_counter()
    loop_scores(model, prep, images, eps, heads, spec, range(0, half), loop)
    t_loop_a = time.perf_counter() - t0

    t0 = time.perf_counter()
    feats = embed(model, images, prep, device="cpu", batch_size=256, progress=False)
    t_embed = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = score_episodes(feats, eps, heads)
    t_heads = time.perf_counter() - t0
    t_fast = t_embed + t_heads

    all_heads = build_heads("proto,nn,ls,ls-mlp")
    t0 = time.perf_counter()
    many = sample_episodes(data, spec, args.many, seed=args.seed + 1)
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    score_episodes(feats, many, all_heads)
    t_all = time.perf_counter() - t0
    names = [h.name for h in all_heads]
    many_line = (f"{args.many} episodes: sampling {t_sample:.2f} s + heads {names} {t_all:.2f} s "
                 f"({1e3 * t_all / args.many:.2f} ms/episode) = {100 * (t_sample + t_all) / t_embed:.1f}% "
                 f"of the embedding pass ({t_embed:.1f} s; goal < 10%); {load()}")

    t0 = time.perf_counter()
    loop_scores(model, prep, images, eps, heads, spec, range(half, n_loop), loop)
    t_loop_measured = t_loop_a + time.perf_counter() - t0
    t_loop = t_loop_measured * args.episodes / n_loop
    print(f"fast: embed {t_embed:.1f} s ({len(images) / t_embed:.0f} img/s) + heads {t_heads:.2f} s "
          f"= {t_fast:.1f} s for {args.episodes} episodes")
    worst = 0.0
    for h in heads:
        a_fast = fast[h.name][:n_loop]
        diff = np.abs(loop[h.name][:n_loop] - a_fast)
        worst = max(worst, float((diff > 0).mean()))
        a_loop = loop[h.name][:n_loop]
        print(f"  {h.name:>6}: fast {100 * a_fast.mean():.2f}% loop {100 * a_loop.mean():.2f}% "
              f"on the same {n_loop} episodes (all {args.episodes}: {100 * fast[h.name].mean():.2f}%); "
              f"episodes whose accuracy differs: {int((diff > 0).sum())}")
    scaled = "" if n_loop == args.episodes else (
        f" (SCALED: measured {t_loop_measured:.1f} s on {n_loop} of {args.episodes} episodes, half "
        f"before and half after the fast path, x{args.episodes / n_loop:g})")
    print(f"loop: {t_loop:.1f} s for {args.episodes} episodes{scaled}")
    print(f"speed-up (loop / fast): {t_loop / t_fast:.1f}x (goal >= 15x); {load()}")
    assert worst <= 0.005, f"accuracies differ in {100 * worst:.2f}% of episodes"
    print(many_line)


if __name__ == "__main__":
    main()
