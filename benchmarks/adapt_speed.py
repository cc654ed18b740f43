"""Adaptation and prediction speed on CPU: Conv-4 at 84x84, 100 classes x 5 shots.

Untimed: a Conv-4 checkpoint (3 channels, 84x84) and 500 images (half PNG, half JPEG) written to a
temporary folder. Timed: ``fewshot.adaptation.adapt`` end to end (listing, decoding, embedding, head fit,
leave-one-out estimate, temperature) per head, and with ``int8=True`` (quantisation included);
the encoder's images/s as a plain ``nn.Module`` vs the prepared float32 copy
(``fewshot.evaluation.inference``: conv+BN folded, channels_last) vs the int8 copy, interleaved in rounds
(median); prediction throughput batched from decoded tensors (float32 and int8), batched from
files (with decoding), and one image at a time (the usual alternative), with ratios. Then int8 vs
float32 agreement on real data: a classifier over 20 Omniglot characters (small1, 5 drawings
each) predicting the other 15 drawings of each (if ../shared/data/omniglot is there).

    nice python benchmarks/adapt_speed.py [--classes 100] [--shots 5] [--predict 2000] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewshot.adaptation.adapt import adapt
from fewshot.evaluation.inference import inference_model
from fewshot.models.checkpoint import save_checkpoint
from fewshot.models.encoders import build_encoder
from fewshot.models.preprocess import Preprocess

OMNIGLOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def encoder_rates(clf, clf8, x: torch.Tensor, rounds: int = 3) -> dict[str, float]:
    """Images/s of the encoder: plain module, prepared float32 copy, int8 copy; interleaved rounds."""
    prep = clf.preprocess
    fast = inference_model(clf.encoder)
    runs = {"plain nn.Module": lambda b: clf.encoder(b), "prepared fp32": fast, "int8": clf8._int8}
    rates: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        xs = [prep(x[i:i + 256]) for i in range(0, len(x), 256)]
        for f in runs.values():
            f(xs[0][:8])
        for _ in range(rounds):
            for name, f in runs.items():
                t0 = time.perf_counter()
                for b in xs:
                    f(b)
                rates[name].append(len(x) / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in rates.items()}


def omniglot_agreement(ckpt: Path, tmp: Path) -> str | None:
    zip_path = OMNIGLOT / "images_background_small1.zip"
    if not zip_path.exists():
        return None
    from episodes import load_data

    data = load_data(f"omniglot:{zip_path}")
    labels = data.labels
    chars = torch.unique(labels)[:20]
    sup, qry = [], []
    for c in chars.tolist():
        idx = torch.nonzero(labels == c).flatten()
        sup.append(idx[:5])
        qry.append(idx[5:])
    sup, qry = torch.cat(sup), torch.cat(qry)
    remap = {c: i for i, c in enumerate(chars.tolist())}
    ys = torch.tensor([remap[int(v)] for v in labels[sup]])
    yq = torch.tensor([remap[int(v)] for v in labels[qry]])
    names = [data.class_names[c] for c in chars.tolist()]
    out = []
    for head in ("ls", "proto"):
        f32 = adapt(ckpt, (data.images[sup], ys, names), head=head)
        i8 = adapt(ckpt, (data.images[sup], ys, names), head=head, int8=True)
        p32 = f32.predict(data.images[qry]).indices
        p8 = i8.predict(data.images[qry]).indices
        out.append(f"{head}: fp32 accuracy {100 * float((p32 == yq).float().mean()):.1f}%, int8 "
                   f"{100 * float((p8 == yq).float().mean()):.1f}%, same prediction for "
                   f"{100 * float((p8 == p32).float().mean()):.1f}% of {len(yq)} images")
    return "; ".join(out)


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
        print(load())
        for head in ("ls", "proto", "nn"):
            t0 = time.perf_counter()
            clf = adapt(ckpt, tmp / "support", head=head)
            dt = time.perf_counter() - t0
            print(f"adapt {head:>5}: {dt:.2f} s end to end (goal < 5 s); LOO accuracy "
                  f"{clf.report.loo_accuracy:.3f}")
        t0 = time.perf_counter()
        clf8 = adapt(ckpt, tmp / "support", head="nn", int8=True)
        print(f"adapt    nn --int8: {time.perf_counter() - t0:.2f} s end to end (quantisation calibrated on "
              f"{len(clf8.int8_calibration)} support images included); {load()}")

        x = torch.randint(0, 256, (args.predict, 3, args.size, args.size), dtype=torch.uint8)
        rates = encoder_rates(clf, clf8, x)
        base = rates["plain nn.Module"]
        print("encoder only, batches of 256, median of 3 interleaved rounds: " + ", ".join(
            f"{k} {v:,.0f} images/s ({v / base:.2f}x)" for k, v in rates.items()))
        clf.predict_proba(x[:256])
        clf8.predict_proba(x[:256])
        t0 = time.perf_counter()
        clf.predict(x, batch_size=256)
        batched = args.predict / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        clf8.predict(x, batch_size=256)
        batched8 = args.predict / (time.perf_counter() - t0)
        n1 = min(200, args.predict)
        t0 = time.perf_counter()
        for i in range(n1):
            clf.predict(x[i:i + 1])
        single = n1 / (time.perf_counter() - t0)
        file_list = paths * max(1, args.predict // len(paths))
        t0 = time.perf_counter()
        clf.predict(file_list, batch_size=256)
        files = len(file_list) / (time.perf_counter() - t0)
        print(f"predict batched (256) from tensors, fp32: {batched:,.0f} images/s (goal >= 1,000)")
        print(f"predict batched (256) from tensors, int8: {batched8:,.0f} images/s (goal >= 1,000)")
        print(f"predict one at a time from tensors, fp32: {single:,.0f} images/s  "
              f"(batched is {batched / single:.1f}x)")
        print(f"predict batched from files (decoding included), fp32: {files:,.0f} images/s; {load()}")
        agreement = omniglot_agreement(ckpt, tmp)
        if agreement:
            print(f"int8 vs fp32 on Omniglot small1 (random Conv-4; 20 characters x 5 support, 15 query): "
                  f"{agreement}")

if __name__ == "__main__":
    main()
