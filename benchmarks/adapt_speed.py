"""Adaptation and prediction speed on CPU: Conv-4 at 84x84, 100 classes x 5 shots.

Untimed: a Conv-4 checkpoint (3 channels, 84x84) and 500 images (half PNG, half JPEG) written to a
temporary folder. Timed: ``fewshot.adapt`` end to end (listing, decoding, embedding, head fit,
leave-one-out estimate, temperature) per head; prediction throughput batched from decoded tensors,
batched from files (with decoding), and one image at a time (the usual alternative), with ratios.

    nice python benchmarks/adapt_speed.py [--classes 100] [--shots 5] [--predict 2000] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewshot.adapt import adapt
from fewshot.checkpoint import save_checkpoint
from fewshot.encoders import build_encoder
from fewshot.preprocess import Preprocess


def write_images(root: Path, classes: int, shots: int, size: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for c in range(classes):
        base = rng.integers(0, 256, (size, size, 3))
        d = root / f"class{c:03d}"
        d.mkdir(parents=True)
        for k in range(shots):
            img = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
            p = d / (f"{k}.png" if k % 2 == 0 else f"{k}.jpg")
            Image.fromarray(img).save(p)
            paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--predict", type=int, default=2000, help="images for the throughput test")
    ap.add_argument("--size", type=int, default=84)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        enc = build_encoder("conv4", in_channels=3, num_classes=64, image_size=args.size)
        state = {k: v.detach().clone() for k, v in enc.state_dict().items()}
        ckpt = save_checkpoint(tmp / "conv4.pt", {
            "model": state, "encoder": enc.spec, "preprocess": Preprocess(args.size, 3).to_dict(),
            "distance": "euclidean", "hash": "benchmark0000000"})
        paths = write_images(tmp / "support", args.classes, args.shots, args.size)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
              f"Conv-4 {args.size}x{args.size}, "
              f"embedding {enc.embedding_dim}-d; {args.classes} classes x {args.shots} shots "
              f"({len(paths)} images, PNG+JPEG)")
        adapt(ckpt, tmp / "support", head="proto")  # warm-up (allocator, thread pool)
        for head in ("ls", "proto", "nn"):
            t0 = time.perf_counter()
            clf = adapt(ckpt, tmp / "support", head=head)
            dt = time.perf_counter() - t0
            print(f"adapt {head:>5}: {dt:.2f} s end to end (goal < 5 s); LOO accuracy "
                  f"{clf.report.loo_accuracy:.3f}")

        x = torch.randint(0, 256, (args.predict, 3, args.size, args.size), dtype=torch.uint8)
        clf.predict_proba(x[:256])
        t0 = time.perf_counter()
        clf.predict(x, batch_size=256)
        batched = args.predict / (time.perf_counter() - t0)
        n1 = min(200, args.predict)
        t0 = time.perf_counter()
        for i in range(n1):
            clf.predict(x[i:i + 1])
        single = n1 / (time.perf_counter() - t0)
        file_list = paths * max(1, args.predict // len(paths))
        t0 = time.perf_counter()
        clf.predict(file_list, batch_size=256)
        files = len(file_list) / (time.perf_counter() - t0)
        print(f"predict batched (256) from tensors: {batched:,.0f} images/s (goal >= 1,000)")
        print(f"predict one at a time from tensors: {single:,.0f} images/s  "
              f"(batched is {batched / single:.1f}x)")
        print(f"predict batched from files (decoding included): {files:,.0f} images/s")


if __name__ == "__main__":
    main()
