"""Image cache speed: first decode vs second load of 12,000 84x84 JPEGs (miniImageNet-sized).

Writes a class-folder miniImageNet tree (``train/``, ``val/``, ``test/`` with 12, 4 and 4 classes
of 600 JPEGs) in a temporary folder, then times ``load_data("miniimagenet:ROOT")`` with an empty
cache (decode every JPEG) and again (read the cached uint8 arrays). Usage:
``python benchmarks/cache_speed.py [--per-class 600]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from episodes.specs import load_data


def write_tree(root: Path, per_class: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:84, 0:84].astype(np.float32) / 84
    n = 0
    for split, n_classes in (("train", 12), ("val", 4), ("test", 4)):
        for c in range(n_classes):
            folder = root / split / f"n{split[:2]}{c:06d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                a, b, ph = rng.uniform(1, 6, 3)
                base = np.stack([np.sin(a * xx * 6 + ph), np.cos(b * yy * 6), np.sin((xx + yy) * a * 3)], -1)
                img = (base * 0.5 + 0.5) * 200 + rng.normal(0, 20, (84, 84, 3))
                img = img.clip(0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=90)
                n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "mini", Path(tmp) / "cache"
        t = time.perf_counter()
        n = write_tree(root, args.per_class)
        print(f"wrote {n} 84x84 JPEGs in {time.perf_counter() - t:.1f} s")
        warnings.simplefilter("ignore")  # the tree is not the standard 64/16/20 x 600 split
        t, c = time.perf_counter(), time.process_time()
        first = load_data(f"miniimagenet:{root}", cache_dir=cache)
        t_first, c_first = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        second = load_data(f"miniimagenet:{root}", cache_dir=cache)
        t_second, c_second = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        total = int(second.images.numpy().sum(dtype=np.int64))  # page every cached pixel in
        t_touch, c_touch = time.perf_counter() - t, time.process_time() - c
        assert total == int(first.images.numpy().sum(dtype=np.int64))
        assert torch.equal(first.images, second.images) and first.fingerprint == second.fingerprint
        size = sum(f.stat().st_size for f in cache.iterdir()) / 2**20
        print(f"{first.describe()}; cache {size:.0f} MiB")
        print(f"  first load (decode {n} JPEGs): {t_first:7.2f} s wall, {c_first:7.2f} s cpu")
        print(f"  second load (from the cache):  {t_second:7.2f} s wall, {c_second:7.2f} s cpu "
              "(memory-mapped)")
        print(f"  then one pass over every cached pixel: {t_touch:.2f} s wall, {c_touch:.2f} s cpu "
              f"(load + pass: {(t_first / (t_second + t_touch)):.1f}x faster than decoding)")
        ratio = t_first / t_second
        print(f"  speed-up: {ratio:.1f}x wall, {c_first / max(c_second, 1e-9):.1f}x cpu "
              f"(target >= 20x: {'met' if ratio >= 20 else 'NOT met'})")


if __name__ == "__main__":
    main()
