"""Small real data for the training tests: scikit-learn's bundled 8x8 digits, upscaled to 16x16."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from episodes import ImageSet


def digits_set(per_class: int = 20, size: int = 16) -> ImageSet:
    d = load_digits()
    keep = np.concatenate([np.flatnonzero(d.target == c)[:per_class] for c in range(10)])
    imgs = torch.from_numpy((d.images[keep] * 16).clip(0, 255).astype(np.uint8))[:, None]
    ds = ImageSet(imgs, torch.from_numpy(d.target[keep]), [f"digit{i}" for i in range(10)],
                  [f"digits#{i}" for i in keep], groups=["even" if i % 2 == 0 else "odd" for i in range(10)],
                  name="digits")
    return ds.resized(size)
