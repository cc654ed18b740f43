"""Cost of test-time augmentation per view against the plain embedding pass, and of the retrieval
figures.

Embeds one image set plainly and with V views per image (``fewshot.evaluation.features.embed`` with a
``fewshot.evaluation.tta.TTA``: the views of ``batch_size // V`` images go through the encoder together, one
pass over views x images), alternating plain and TTA runs so that both see the same machine load,
and prints seconds, images/s, the ratio TTA / plain and that ratio per view (1.0 = a view costs
exactly one plain pass; below 1 the larger batches pay). Then the leave-one-out retrieval figures
(``fewshot.evaluation.retrieval``, PML's AccuracyCalculator) on the plain features, with their time.

Encoder: ``--checkpoint`` (its preprocessing and TTA augmentation), else the Omniglot recipe's
Conv-4 (widths 32-96-192-256, last pool off, 28x28) with seeded random weights: the cost does
not depend on the weights.

    nice python benchmarks/tta_cost.py                                  # Omniglot small2 dev alphabets
    nice python benchmarks/tta_cost.py --data miniimagenet:../shared/data/miniimagenet --split val \\
        --checkpoint runs/mini/best.pt --views 1,2,8
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

import episodes
from episodes.protocols import get_protocol
from fewshot.evaluation.features import embed
from fewshot.evaluation.retrieval import describe, retrieval_figures
from fewshot.evaluation.tta import TTA, checkpoint_tta, default_augment
from fewshot.models.checkpoint import load_encoder
from fewshot.models.encoders import build_encoder
from fewshot.models.preprocess import Preprocess

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
DEFAULT = get_protocol("omniglot-minimal").at(DATA).val.spec   # small2's katakana + Sanskrit (dev val)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DEFAULT)
    ap.add_argument("--split", default=None)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--views", default="8,32", help="comma-separated view counts (default 8,32)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of each (the best is kept)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="only the first N images (a quicker run)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        model, info = load_encoder(args.checkpoint)
        pre, distance, augment = info["preprocess"], info["distance"], checkpoint_tta(info).augment
    else:
        torch.manual_seed(0)
        model = build_encoder("conv4", in_channels=1, num_classes=1088, image_size=28,
                              width=[32, 96, 192, 256], last_pool=False).eval()
        pre, distance, augment = Preprocess(28, 1), "cosine", default_augment(1)
    data = episodes.load_data(args.data, args.split)
    if args.limit:
        data = data.subset(torch.arange(min(args.limit, len(data))))
    print(f"data: {data.describe()}; encoder {type(model).__name__} "
          f"({'checkpoint' if args.checkpoint else 'Omniglot recipe Conv-4, random weights'}); "
          f"batch {args.batch_size}; {torch.get_num_threads()} threads; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    views = [int(v) for v in args.views.split(",")]

    def timed(tta: TTA | None) -> tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        feats = embed(model, data, pre, device="cpu", batch_size=args.batch_size, progress=False, tta=tta)
        return time.perf_counter() - t0, feats

    timed(None)  # warm-up: the prepared inference copy, oneDNN kernels
    n = len(data)
    plain_best = float("inf")
    for v in views:
        tta = TTA(v, augment, normalize=distance == "cosine")
        plain_t, tta_t = [], []
        for _ in range(args.repeat):
            plain_t.append(timed(None)[0])
            tta_t.append(timed(tta)[0])
        p, t = min(plain_t), min(tta_t)
        plain_best = min(plain_best, p)
        print(f"plain  : {p:7.2f} s ({n / p:7.0f} img/s)   | {v:3d} views: {t:8.2f} s "
              f"({n * v / t:7.0f} view/s)"
              f"  ratio {t / p:6.2f}x = {t / p / v:.2f} plain passes per view")
    print(f"TTA: {tta.describe()}")
    _, feats = timed(None)
    r = retrieval_figures(torch.nn.functional.normalize(feats, dim=-1) if distance == "cosine" else feats,
                          data.labels, distance)
    print(f"{describe(r)}: {r['seconds']:.2f} s = {100 * r['seconds'] / plain_best:.1f}% of the plain pass")


if __name__ == "__main__":
    main()
