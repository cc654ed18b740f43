"""Small real data for the training tests: scikit-learn's bundled 8x8 digits, upscaled to 16x16."""

from __future__ import annotations

import numpy as np
import pytest
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


@pytest.fixture(autouse=True)
def one_thread():
    """Training tests run on one thread: same numbers, and fair to the other jobs on the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**kw):
    """A 2-epoch TrainConfig sized for tests (batch 16 of 4 per class, 3-way 1-shot validation)."""
    from fewshot.training.config import TrainConfig
    base = dict(epochs=2, batch_size=16, m=4, val_way=3, val_shots=[1], val_episodes=20, val_query=5,
                val_fraction=0.3, lr=0.05)
    return TrainConfig(**{**base, **kw})
