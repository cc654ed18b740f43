"""Does an exponential moving average (EMA) of the weights beat the last weights? One training run
of a recipe with an EMA of every weight and buffer kept beside the live model (updated after each
optimizer step, decay ``min(--decay, (1 + n) / (10 + n))`` at update n), written as ``ema.pt`` next
to the run's ``best.pt`` / ``last.pt`` (same record, the EMA weights in place of the live ones), so
both score through ``fewshot eval`` on the same episodes.

    nice -n -10 python benchmarks/ema_lever.py --recipe omniglot \\
        --data omniglot:../shared/data/omniglot/images_background_small1.zip --decay 0.998 --out /tmp/omni-ema
    small2=../shared/data/omniglot/images_background_small2.zip
    fewshot eval --checkpoint /tmp/omni-ema/ema.pt \\
        --data "omniglot:$small2?groups=Japanese_(katakana),Sanskrit" \\
        --way 20 --shot 1 --query 5 --episodes 600 --within-group --heads proto   # and best.pt

The EMA checkpoint drops the run's base-class statistics (they are the live weights'), so heads
that need them (``proto-dc``) refuse it.
"""

from __future__ import annotations

import argparse

import torch

from fewshot.models.checkpoint import load_checkpoint, save_checkpoint, state_hash
from fewshot.training.config import TrainConfig
from fewshot.training.trainer import Trainer


class WeightAverage:
    """Trainer callback keeping an EMA of the trainer's model state (float tensors averaged,
    integer buffers copied)."""

    def __init__(self, decay: float):
        self.decay, self.trainer, self.state, self.updates = decay, None, None, 0

    def on_step_end(self, step: int, logs: dict) -> None:
        live = self.trainer.model.state_dict()
        if self.state is None:
            self.state = {k: v.detach().float().clone() if v.is_floating_point() else v.clone()
                          for k, v in live.items()}
            return
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for k, v in live.items():
                if v.is_floating_point():
                    self.state[k].mul_(d).add_(v.detach(), alpha=1 - d)
                else:
                    self.state[k].copy_(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="omniglot")
    ap.add_argument("--data", required=True)
    ap.add_argument("--decay", type=float, default=0.998)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    args = ap.parse_args()
    ema = WeightAverage(args.decay)
    overrides = {"epochs": args.epochs} if args.epochs else {}
    trainer = Trainer(TrainConfig.resolve(args.recipe, data=args.data, **overrides), callbacks=[ema])
    ema.trainer = trainer
    result = trainer.fit(None, None, args.out)
    ckpt = load_checkpoint(result.best_path)
    ckpt["model"] = {k: v.to(ckpt["model"][k].dtype) for k, v in ema.state.items()}
    ckpt["hash"] = state_hash(ckpt["model"])
    ckpt["base_mean"] = ckpt["base_class_means"] = None
    save_checkpoint(f"{args.out}/ema.pt", ckpt)
    print(f"validation of the live weights: {result.val_accuracy:.4f}; EMA weights: {args.out}/ema.pt "
          f"({ema.updates} updates, decay {args.decay})")


if __name__ == "__main__":
    main()
