"""The shared-inner-product evaluation path (``head.score_batch``) gives the logits of the
per-head path (``head.fit(support)(query)``), and the arc-cosine ls-mlp kernel is the
infinite-width limit of its random ReLU layer."""

from __future__ import annotations

import pytest
import torch

from fewshot.evaluation.evaluate import score_chunk
from fewshot.heads import get_head
from fewshot.heads.batch import EpisodeBatch

HEADS = ["proto", "proto:distance=cosine,scale=3.0", "nn", "nn:distance=cosine", "nn:k=3",
         "nn:k=4,weighted=False", "ls", "ls:lam=0.5", "ls:fit_intercept=False", "ls:criterion='error'",
         "ls-mlp", "ls-mlp:kind=cosine", "ls-mlp:kind=rbf", "ls-mlp:kind=rbf,gamma=0.01,lam=0.1",
         "ls-mlp:kind=random,width=64"]


def _episodes(e, way, shot, q, d, offset=0.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(way).repeat_interleave(shot).expand(e, -1).contiguous()
    centres = torch.randn(e, way, d, generator=g, dtype=dtype) + offset
    s = centres.repeat_interleave(shot, 1) + 0.8 * torch.randn(e, way * shot, d, generator=g, dtype=dtype)
    qx = centres.repeat_interleave(q, 1) + 0.8 * torch.randn(e, way * q, d, generator=g, dtype=dtype)
    return s, y, qx


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("shot,d", [(1, 40), (5, 40), (5, 8)])
def test_batch_path_equals_fit_path(name, shot, d):
    s, y, q = _episodes(6, 5, shot, 3, d, offset=2.0)
    head = get_head(name)
    want = head.fit(s, y, 5)(q)
    got = score_chunk(torch.cat([s, q], 1), s.shape[1], y, 5, [head])[head.name]
    assert got.shape == want.shape == (6, 15, 5)
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", ["proto", "nn", "ls", "ls-mlp"])
def test_batch_path_float32_agrees_with_float64(name):
    """Float32 features with a large common offset (as ReLU features have): same predictions."""
    s, y, q = _episodes(20, 5, 5, 15, 256, offset=30.0, seed=1)
    head = get_head(name)
    ref = head.fit(s, y, 5)(q).argmax(-1)
    got = score_chunk(torch.cat([s, q], 1).float(), s.shape[1], y, 5, [head])[head.name].argmax(-1)
    assert (got == ref).float().mean() >= 0.995


def test_arccos_kernel_is_the_wide_limit_of_random_relu_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 5, generator=g, dtype=torch.float64)
    batch = EpisodeBatch(x, 6)
    from fewshot.heads.ls_mlp import _kernel_rows

    scale = get_head("ls-mlp").params(batch)
    k = _kernel_rows(batch, "arccos", scale)[0]
    w = torch.randn(200000, 6, generator=g, dtype=torch.float64)              # [r, c] ~ N(0, I)
    xt = torch.cat([scale * x[0], torch.ones(6, 1, dtype=torch.float64)], 1)  # x̃ = [scale x, 1]
    h = torch.relu(xt @ w.T)
    torch.testing.assert_close(k, h @ h.T / w.shape[0], rtol=0.03, atol=0.01)


def test_ls_mlp_gradients_are_finite_with_duplicate_rows():
    s, y, q = _episodes(2, 5, 2, 2, 10, dtype=torch.float32)
    s = torch.cat([s, s[:, :1]], 1).requires_grad_(True)
    y = torch.cat([y, y[:, :1]], 1)
    logits = get_head("ls-mlp").fit(s, y, 5)(q)
    logits.sum().backward()
    assert torch.isfinite(s.grad).all()
