"""The optimizer's weight update, fused against foreach, on a recipe's encoder (one process).

The trainer updates the weights with torch's fused kernel where every parameter is on the CPU or
CUDA (``fewshot.training.trainer.update_kernel``), with ``foreach`` elsewhere. This times both
updates (the recipe's optimizer and hyper-parameters, gradients held fixed) and checks that they
agree: the largest weight difference after the timed steps. ``--train-epochs N --data DATA``
also runs the recipe's whole training loop (``fewshot.training.trainer.train``, no validation) for
N epochs with each kernel, alternating, ``--rounds`` times, and prints the images per second of
every epoch: what the update's share of a step is worth end to end.

    nice -n -10 python benchmarks/optimizer_speed.py --recipe omniglot --channels 1 --classes 1088 \\
        --train-epochs 3 --data omniglot:../shared/data/omniglot/images_background_small1.zip
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch

from fewshot.models.encoders import build_encoder
from fewshot.training import trainer
from fewshot.training.config import TrainConfig
from fewshot.training.trainer import _optimizer


def time_updates(model: torch.nn.Module, cfg: TrainConfig, kernel: str, steps: int) -> tuple[float, dict]:
    """Seconds per update with ``kernel`` (the trainer's optimizer, forced to that kernel)."""
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():   # the same fixed gradients for both kernels
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    params = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    opt = _optimizer(cfg, params)
    for group in opt.param_groups:
        group["fused"], group["foreach"] = kernel == "fused", kernel == "foreach"
    for _ in range(5):
        opt.step()
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - start) / steps, model.state_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="omniglot")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--classes", type=int, default=1088, help="base classes (the classifier's size)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-epochs", type=int, default=0, help="also time the training loop (0: skip)")
    ap.add_argument("--data", default=None, help="training data for --train-epochs")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainConfig.resolve(args.recipe)
    torch.manual_seed(0)
    model = build_encoder(cfg.encoder, in_channels=args.channels, num_classes=args.classes,
                          image_size=cfg.image_size, **cfg.encoder_args)
    n = sum(p.numel() for p in model.parameters())
    print(f"recipe {args.recipe}: {cfg.encoder} {cfg.encoder_args}, {args.classes} classes, "
          f"{n:,} parameters; {cfg.optimizer} lr {cfg.lr} wd {cfg.weight_decay}; threads {args.threads}")
    times, states = {}, {}
    for kernel in ("foreach", "fused"):
        times[kernel], states[kernel] = time_updates(copy.deepcopy(model), cfg, kernel, args.steps)
        print(f"{kernel:>8} update: {times[kernel] * 1e3:7.2f} ms")
    diff = max(float((states["fused"][k] - states["foreach"][k]).abs().max())
               for k in states["fused"] if states["fused"][k].is_floating_point())
    print(f"ratio foreach / fused: {times['foreach'] / times['fused']:.2f}x; "
          f"largest weight difference after {args.steps + 5} updates: {diff:.2e}")
    if args.train_epochs:
        train_loop(args)


def train_loop(args: argparse.Namespace) -> None:
    """The recipe's training loop with each kernel in turn (``trainer.update_kernel`` swapped)."""
    fused = trainer.update_kernel
    kernels = {"foreach": lambda params: {"foreach": True}, "fused": fused}
    rates: dict[str, list[float]] = {k: [] for k in kernels}
    try:
        for _ in range(args.rounds):
            for name, kernel in kernels.items():
                trainer.update_kernel = kernel
                cfg = TrainConfig.resolve(args.recipe, data=args.data, val=None, val_fraction=0.0,
                                          epochs=args.train_epochs)
                out = tempfile.mkdtemp(prefix="optimizer-speed-")
                result = trainer.train(cfg, out_dir=out, progress=False)
                epoch_rates = [row["img_per_s"] for row in result.metrics]
                rates[name] += epoch_rates
                print(f"{name:>8} training loop: " + " ".join(f"{r:.0f}" for r in epoch_rates) + " img/s",
                      flush=True)
    finally:
        trainer.update_kernel = fused
    median = {k: statistics.median(v) for k, v in rates.items()}
    print(f"median img/s: foreach {median['foreach']:.0f}, fused {median['fused']:.0f}: "
          f"ratio {median['fused'] / median['foreach']:.3f}x")


if __name__ == "__main__":
    main()
