"""The real run: train on Omniglot small1, adapt on 1 and 5 drawings per character of the small2
alphabets small1 lacks (Japanese_(katakana), Sanskrit, Tagalog: 106 characters), predict the rest.

All 106 characters form ONE classifier (106-way), as a user adapting to a new set of classes would
have it; every head is fitted on the same seeded support drawings and scored on the same queries,
and the size of its model file (`fewshot adapt`'s output) is printed.

    nice python benchmarks/adapt_omniglot.py [--checkpoint runs/x/best.pt] [--epochs 10] [--recipe omniglot]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from episodes.protocols import get_protocol
from fewshot.adaptation.adapt import adapt

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"


def train_checkpoint(args: argparse.Namespace, out: Path) -> Path:
    from fewshot.training.config import TrainConfig, load_recipe
    from fewshot.training.data import read_size
    from fewshot.training.trainer import train
    base = get_protocol("omniglot-minimal").at(args.data).base   # small1
    try:
        load_recipe(args.recipe)
        recipe = args.recipe
    except Exception:  # noqa: BLE001 - recipe not shipped (yet): the defaults with a conv4
        recipe = None
    cfg = TrainConfig.resolve(recipe, data=base.spec, epochs=args.epochs, device="cpu", seed=0, image_size=28)
    data = base.load(image_size=read_size(28, cfg.frame))
    print(f"training on {data.describe()} (recipe {recipe or 'defaults'}, {cfg.epochs} epochs, "
          f"{cfg.encoder}, loss {cfg.loss})", flush=True)
    t0 = time.perf_counter()
    result = train(cfg, data, None, out, progress=False)
    print(f"trained in {time.perf_counter() - t0:.0f} s; val accuracy {result.val_accuracy}", flush=True)
    return Path(result.best_path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="use this encoder instead of training one")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--recipe", default="omniglot")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--heads", nargs="+", default=["ls", "proto", "nn"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or train_checkpoint(args, Path(tmp) / "run")
        novel = get_protocol("omniglot-minimal").at(args.data).novel.load()   # small2's new alphabets
        print(f"novel: {novel.describe()}")
        rng = np.random.default_rng(args.seed)
        labels = novel.labels.numpy()
        order = [rng.permutation(np.flatnonzero(labels == c)) for c in range(novel.num_classes)]
        for shot in args.shots:
            s_idx = np.concatenate([o[:shot] for o in order])
            q_idx = np.concatenate([o[shot:] for o in order])
            support, query = novel.subset(s_idx), novel.subset(q_idx)
            truth = [query.class_names[i] for i in query.labels.tolist()]
            for head in args.heads:
                t0 = time.perf_counter()
                clf = adapt(ckpt, support, head=head)
                t_adapt = time.perf_counter() - t0
                size = clf.save(Path(tmp) / f"{head}-{shot}.fewshot").stat().st_size / 1e6
                t0 = time.perf_counter()
                pred = clf.predict(query.images)
                t_pred = time.perf_counter() - t0
                acc = float(np.mean([p == t for p, t in zip(pred.labels, truth)]))
                loo = clf.report.loo_accuracy
                conf = float(pred.probabilities.mean())
                print(f"{novel.num_classes}-way {shot}-shot {head:>5}: accuracy {acc:.4f} on {len(truth)} "
                      f"query drawings; LOO estimate {'n/a' if loo != loo else f'{loo:.4f}'}; "
                      f"mean top probability {conf:.3f}; adapt {t_adapt:.2f} s, predict {t_pred:.2f} s; "
                      f"model file {size:.1f} MB",
                      flush=True)


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
