"""The inference fast path: prepared copies equal the plain encoder, leave it untouched, are
cached and refreshed; the opt-in int8 encoder agrees with float32 and survives save/load."""

from __future__ import annotations

import importlib

import pytest
import torch
from adapt_fixtures import checkpoint, folders  # noqa: F401 - fixtures

from fewshot.adaptation.classifier import load_classifier, read_images
from fewshot.errors import FewShotError
from fewshot.evaluation.inference import (
    InferenceModel,
    inference_model,
    prepare_for_inference,
    quantize_int8,
    threads,
)
from fewshot.models.encoders import build_encoder


def _conv4(size=28, width=16, seed=0):
    torch.manual_seed(seed)
    m = build_encoder("conv4", in_channels=3, num_classes=5, image_size=size, width=width)
    with torch.no_grad():  # non-trivial BN statistics so that folding them matters
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m


def test_prepared_copy_equals_plain_forward_and_leaves_the_model_alone():
    m = _conv4()
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    fast = prepare_for_inference(m)
    assert isinstance(fast, InferenceModel) and fast.fused and fast.channels_last
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in fast.modules())
    assert m.training and all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    x = torch.randn(9, 3, 28, 28)
    m.eval()
    with torch.no_grad():
        want = m(x)[0]
        got = fast(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_untraceable_model_still_runs_unfused():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn(self.conv(x))
            if float(y.mean()) > 1e9:  # data-dependent control flow: fx cannot trace it
                y = -y
            return y.mean((2, 3)), None

    m = Branchy().eval()
    fast = prepare_for_inference(m)
    assert not fast.fused
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), m(x)[0])


def test_shared_conv_bn_is_not_folded_twice():
    """A block called twice (shared weights): folding its BN once per call would corrupt the
    conv and every embedding with it, silently; such a model runs unfused and equals the plain one."""

    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.conv, self.bn = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.stem(x)
            y = torch.relu(self.bn(self.conv(y)))
            y = torch.relu(self.bn(self.conv(y)))           # the same conv and BN again
            return y.mean((2, 3)), None

    torch.manual_seed(0)
    m = Shared().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.3, 0.3)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
    fast = prepare_for_inference(m)
    assert not fast.fused
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), m(x)[0])


def test_inference_model_is_cached_and_refreshed_when_weights_change():
    m = _conv4().eval()
    a = inference_model(m)
    assert inference_model(m) is a
    with torch.no_grad():
        next(m.parameters()).mul_(2)   # in-place change: version counter moves
    b = inference_model(m)
    assert b is not a
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(b(x), m(x)[0], rtol=1e-4, atol=1e-5)


def test_threads_context_restores_the_setting():
    old = torch.get_num_threads()
    with threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == old


def test_int8_embeddings_agree_with_float32():
    m = _conv4(size=28, width=32).eval()
    x = torch.randn(48, 3, 28, 28)
    q = quantize_int8(m, x[:32])
    assert q.int8
    with torch.no_grad():
        a, b = m(x)[0], q(x)
    cos = torch.nn.functional.cosine_similarity(a, b)
    assert cos.min() > 0.99, cos.min()
    with pytest.raises(FewShotError, match="calibration"):
        quantize_int8(m, torch.empty(0, 3, 28, 28))


def test_int8_classifier_predictions_agree_and_survive_save_load(checkpoint, folders, tmp_path):  # noqa: F811
    A = importlib.import_module("fewshot.adaptation.adapt")
    support, query = folders
    paths = sorted(str(p) for p in query.rglob("*.png"))
    fp32 = A.adapt(checkpoint, support, head="ls")
    int8 = A.adapt(checkpoint, support, head="ls", int8=True)
    assert int8.int8 and not fp32.int8 and int8.int8_calibration.dtype == torch.uint8
    p32, p8 = fp32.predict(paths), int8.predict(paths)
    agree = sum(a == b for a, b in zip(p32.labels, p8.labels)) / len(paths)
    assert agree >= 0.8, agree
    again = load_classifier(int8.save(tmp_path / "q.fewshot"))
    assert again.int8 and again.predict(paths).labels == p8.labels
    turned = A.adapt(checkpoint, support, head="proto", int8=True, tta_args={"symmetries": 2})
    with torch.no_grad():   # the int8 module path of symmetries is the embedding path
        x = turned.check_images(read_images(paths[:3], turned.preprocess)[0])
        torch.testing.assert_close(turned.features(x), turned.embed(x), atol=1e-4, rtol=1e-3)
