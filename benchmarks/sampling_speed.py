"""Episode sampling speed: 10,000 5-way 5-shot 15-query episodes from a 20-class x 600-image set.

Compares ``episodes.sample_episodes`` (all episodes at once, vectorised numpy) with the usual
per-episode Python loop (``random.sample`` of classes, then of images per class, as easyfsl's
``TaskSampler`` does). Usage: ``python benchmarks/sampling_speed.py [--episodes 10000]``.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np

from episodes.sampling import EpisodeSpec, sample_episodes


def python_loop(labels: np.ndarray, spec: EpisodeSpec, count: int, seed: int) -> list[list[int]]:
    """The per-episode loop: one list of support+query indices per episode."""
    rng = random.Random(seed)
    items: dict[int, list[int]] = {}
    for i, lab in enumerate(labels.tolist()):
        items.setdefault(lab, []).append(i)
    classes = list(items)
    out = []
    for _ in range(count):
        episode = []
        for c in rng.sample(classes, spec.way):
            episode += rng.sample(items[c], spec.per_class)
        out.append(episode)
    return out


def best_of(fn, repeats: int) -> tuple[float, float]:
    """Best wall-clock and best CPU (process) time of ``repeats`` runs; on a shared machine the CPU
    time is the work done, the wall time includes waiting for a core."""
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    labels = np.repeat(np.arange(20), 600)
    spec = EpisodeSpec(5, 5, 15)
    sample_episodes(labels, spec, 10, seed=0)  # warm-up
    fast = best_of(lambda: sample_episodes(labels, spec, args.episodes, seed=0), args.repeats)
    slow = best_of(lambda: python_loop(labels, spec, args.episodes, seed=0), max(1, args.repeats // 2))
    eps = sample_episodes(labels, spec, args.episodes, seed=0)
    assert eps.support.shape == (args.episodes, 5, 5) and eps.query.shape == (args.episodes, 5, 15)
    print(f"{args.episodes} episodes of {spec} from 20 classes x 600 images (best of {args.repeats}):")
    print(f"  sample_episodes (vectorised):   wall {fast[0] * 1000:7.1f} ms, cpu {fast[1] * 1000:7.1f} ms "
          f"(target < 50 ms: {'met' if fast[0] < 0.05 else 'NOT met'})")
    print(f"  per-episode random.sample loop: wall {slow[0] * 1000:7.1f} ms, cpu {slow[1] * 1000:7.1f} ms")
    print(f"  speed-up: {slow[0] / fast[0]:.1f}x wall, {slow[1] / max(fast[1], 1e-9):.1f}x cpu")


if __name__ == "__main__":
    main()
