"""Glyph generation speed (600 classes x 20 drawings on one core) and raw-pixel 1-NN accuracy.

The raw-pixel nearest neighbour on the novel glyph classes is the floor a trained encoder must
beat clearly. Usage: ``python benchmarks/glyph_speed.py [--episodes 2000]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from episodes.readers.glyphs import load_glyphs, make_glyphs
from episodes.sampling import EpisodeSpec, sample_episodes


def nn_accuracy(data, way: int, shot: int, episodes: int, within_group: bool = False) -> tuple[float, float]:
    """Mean and 95% half-width of raw-pixel (cosine) 1-NN accuracy over seeded episodes."""
    eps = sample_episodes(data, EpisodeSpec(way, shot, 15), episodes, seed=0, within_group=within_group)
    x = data.images.float().flatten(1)
    x = x / x.norm(dim=1, keepdim=True)
    s, sy, q, qy = eps.gather(x)
    acc = (torch.gather(sy, 1, torch.cdist(q, s).argmin(-1)) == qy).float().mean(1)
    return acc.mean().item(), 1.96 * acc.std().item() / episodes ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    make_glyphs(20, 2)  # warm-up
    wall, cpu = [], []
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        data = make_glyphs(600, 20)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    print(f"{data.describe()}")
    print(f"  generated in {min(wall):.2f} s wall, {min(cpu):.2f} s cpu (best of {args.repeats}, 1 thread; "
          f"target < 5 s on one core: {'met' if min(cpu) < 5 else 'NOT met'})")
    novel = load_glyphs("novel")
    print(f"raw-pixel 1-NN on {novel.describe()}, {args.episodes} episodes, 15 queries per class:")
    for way, shot, within in ((5, 1, False), (5, 1, True), (5, 5, False), (20, 1, False), (20, 1, True)):
        mean, ci = nn_accuracy(novel, way, shot, args.episodes, within)
        print(f"  {way:2d}-way {shot}-shot{' within-alphabet' if within else ' mixed          '}: "
              f"{mean * 100:5.1f}% +- {ci * 100:.1f}")


if __name__ == "__main__":
    main()
