"""scikit-learn's bundled handwritten digits (``load_digits``) as a small cross-domain novel set.

1,797 images of 8x8 pixels, 10 classes (``"0"`` .. ``"9"``), one group ``"digits"``. Pixel values
0..16 are scaled to 0..255 (ink is high, as in Omniglot and the glyphs).
"""

from __future__ import annotations

import numpy as np
import torch

from ..imageset import ImageSet


def load_digits_set(image_size: int | tuple[int, int] | None = None) -> ImageSet:
    """The digits as an ``ImageSet`` (uint8 ``[1797, 1, 8, 8]``), optionally resized."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    data = ImageSet(torch.from_numpy(images), labels, [str(d) for d in range(10)],
                    [f"digits#{i}" for i in range(len(images))], ["digits"] * 10, name="digits")
    return data.resized(image_size)
