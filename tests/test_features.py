"""Embedding (batched, equal to a plain forward pass), transforms, and the feature cache."""

from __future__ import annotations

import pytest
import torch

from episodes.imageset import ImageSet
from fewshot.errors import FewShotError
from fewshot.evaluation.features import embed, embed_cached, feature_cache_key, transform
from fewshot.models.preprocess import Preprocess


class TinyEncoder(torch.nn.Module):
    """Follows the encoder contract: ``forward(x) -> (embedding [B,D], logits [B,K])``."""

    def __init__(self, channels=1, dim=6, nan=False):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, dim, 3, padding=1)
        self.fc = torch.nn.Linear(dim, 3)
        self.nan, self.calls, self.embedding_dim = nan, 0, dim

    def forward(self, x):
        self.calls += 1
        e = self.conv(x).relu().mean((2, 3))
        if self.nan:
            e = e * float("nan")
        return e, self.fc(e)


def _imageset(n=37, size=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 4
    return ImageSet(images, labels, list("abcd"), [f"img{i}" for i in range(n)], name="random")


def test_embed_equals_plain_forward_for_any_batch_size():
    torch.manual_seed(0)
    model, data, prep = TinyEncoder(), _imageset(), Preprocess(12, 1, 0.5, 0.25)
    with torch.no_grad():
        want = model(prep(data.images))[0]
    for bs in (1, 7, 256):
        got = embed(model, data, prep, device="cpu", batch_size=bs, progress=False)
        assert got.dtype == torch.float32 and got.shape == (37, 6)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embed(model, data.images, prep, device="cpu", progress=False), want,
                               rtol=1e-5, atol=1e-6)


def test_embed_refuses_nan_and_bad_images():
    data = _imageset()
    with pytest.raises(FewShotError, match="37 of 37 feature rows are NaN"):
        embed(TinyEncoder(nan=True), data, None, device="cpu", progress=False)
    with pytest.raises(FewShotError, match="uint8"):
        embed(TinyEncoder(), data.images.float(), None, device="cpu", progress=False)


def test_transforms():
    x = torch.randn(5, 8) * 3
    assert transform(x, "none") is x
    torch.testing.assert_close(transform(x, "l2").norm(dim=-1), torch.ones(5))
    mean = torch.randn(8)
    torch.testing.assert_close(transform(x, "cl2n", mean), torch.nn.functional.normalize(x - mean, dim=-1))
    with pytest.raises(FewShotError, match="base-class mean"):
        transform(x, "cl2n")
    relu = x.clamp_min(0)
    torch.testing.assert_close(transform(relu, "pt"), torch.nn.functional.normalize(relu.sqrt(), dim=-1))
    assert float(transform(torch.tensor([[4.0, 0.0, 9.0]]), "pt")[0, 2]) == pytest.approx(3 / 13 ** 0.5)
    with pytest.raises(FewShotError, match="transform pt needs non-negative features"):
        transform(x, "pt")
    with pytest.raises(FewShotError, match="choose one of none, l2, cl2n, pt"):
        transform(x, "zca")


def test_embed_cached(tmp_path):
    torch.manual_seed(0)
    model, data, prep = TinyEncoder(), _imageset(), Preprocess(12, 1)
    info = {"hash": "0123456789abcdef", "preprocess": prep}
    first = embed_cached((model, info), data, cache_dir=tmp_path, device="cpu", progress=False)
    calls = model.calls
    again = embed_cached((model, info), data, cache_dir=tmp_path, device="cpu", progress=False)
    assert model.calls == calls and torch.equal(first, again)            # served from the cache
    files = list((tmp_path / "features").glob("*.pt"))
    assert len(files) == 1 and not list((tmp_path / "features").glob("*.tmp"))
    # the key follows checkpoint, data and preprocessing
    k = feature_cache_key("0123456789abcdef", data, prep)
    assert k != feature_cache_key("fedcba9876543210", data, prep)
    assert k != feature_cache_key("0123456789abcdef", _imageset(n=36), prep)
    assert k != feature_cache_key("0123456789abcdef", data, Preprocess(14, 1))
    files[0].write_bytes(b"not a torch file")                             # corrupt cache: recomputed
    with pytest.warns(UserWarning, match="unreadable feature cache"):
        third = embed_cached((model, info), data, cache_dir=tmp_path, device="cpu", progress=False)
    assert model.calls > calls and torch.equal(first, third)
