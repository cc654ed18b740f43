"""bf16 autocast against fp32 for a training step of a recipe's encoder, in one process.

The step is `fewshot train`'s (channels_last input, Circle loss on multi-similarity pairs + cross-entropy,
SGD with Nesterov momentum), on one pre-made batch of the recipe's image size, so the figure is the
model's own rate: the ceiling that `--precision bf16` raises. Prints images/s of each and the ratio.
On a CPU bf16 pays only with AMX or AVX512-BF16 (`fewshot.device.cpu_has_fast_bf16`); elsewhere it is
emulated and the ratio drops below 1.

  python benchmarks/precision_speed.py --recipe miniimagenet-conv4 --threads 2
  python benchmarks/precision_speed.py --recipe omniglot --channels 1 --threads 2
"""

from __future__ import annotations

import argparse

import torch
from train_throughput import make_step, timed

from fewshot.device import cpu_has_fast_bf16, pick_device
from fewshot.models.encoders import build_encoder
from fewshot.training.config import load_recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="miniimagenet-conv4")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3,
                   help="alternate fp32 / bf16 this many times, keep the best")
    p.add_argument("--channels", type=int, default=3, help="3 for photos, 1 for drawings")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    recipe = load_recipe(a.recipe)
    device = pick_device(a.device)
    size, b, channels = int(recipe.get("image_size", 84)), int(recipe.get("batch_size", 64)), a.channels
    print(f"recipe {a.recipe}: {recipe.get('encoder')} {recipe.get('encoder_args', {})}, "
          f"{channels}x{size}x{size}, batch {b}; device {device}; torch threads {torch.get_num_threads()}"
          + (f"; CPU has AMX/AVX512-BF16: {cpu_has_fast_bf16()}" if device.type == "cpu" else ""))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, channels, size, size, generator=g).to(device)
    y = torch.arange(b, device=device) // 4 % 64  # 16 classes x 4, as the M-per-class sampler gives
    rates: dict[str, float] = {"fp32": 0.0, "bf16": 0.0}
    for _ in range(a.repeat):
        for name in rates:
            torch.manual_seed(0)
            model = build_encoder(recipe.get("encoder", "conv4"), in_channels=channels, num_classes=64,
                                  image_size=size, **recipe.get("encoder_args", {}))
            model = model.to(device).to(memory_format=torch.channels_last)
            step = make_step(model, device, amp=name == "bf16")
            rate = timed(lambda step=step: step(x, y), a.steps, a.warmup, device, b)
            rates[name] = max(rates[name], rate)
    print(f"fp32 step:           {rates['fp32']:8.0f} img/s")
    print(f"bf16 autocast step:  {rates['bf16']:8.0f} img/s")
    print(f"ratio bf16 / fp32: {rates['bf16'] / rates['fp32']:.2f}x")


if __name__ == "__main__":
    main()
