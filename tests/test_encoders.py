import pytest
import torch
from torch import nn

from fewshot.errors import FewShotError
from fewshot.models.encoders import ENCODERS, build_encoder, typed_encoder_args


@pytest.mark.parametrize("channels,size,dim", [(1, 28, 64), (3, 84, 1600)])
def test_conv4_shapes(channels, size, dim):
    model = build_encoder("conv4", in_channels=channels, num_classes=7, image_size=size)
    emb, logits = model(torch.randn(3, channels, size, size))
    assert emb.shape == (3, dim) and logits.shape == (3, 7) and model.embedding_dim == dim


def test_conv4_avg_pool_width_and_projection():
    model = build_encoder("conv4", in_channels=1, num_classes=5, embedding_dim=16, width=32, pool="avg")
    emb, logits = model(torch.randn(2, 1, 40, 40))
    assert emb.shape == (2, 16) and logits.shape == (2, 5) and model.feature_dim == 32


def test_conv4_per_block_widths():
    model = build_encoder("conv4", in_channels=1, num_classes=5, image_size=28, width=[8, 12, 16, 20],
                          last_pool=False)
    emb, _ = model(torch.randn(2, 1, 28, 28))
    assert emb.shape == (2, 20 * 3 * 3) and model.embedding_dim == 180
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [8, 12, 16, 20]
    with pytest.raises(FewShotError, match="four"):
        build_encoder("conv4", in_channels=1, num_classes=5, width=[8, 12])


def test_resnet12_shape_and_dropblock():
    model = build_encoder("resnet12", in_channels=3, num_classes=4, drop_rate=0.1)
    emb, logits = model(torch.randn(2, 3, 32, 32))
    assert emb.shape == (2, 640) and logits.shape == (2, 4)
    torch.manual_seed(0)
    a = model(torch.ones(1, 3, 32, 32))[0]
    model.eval()
    b, c = model(torch.ones(1, 3, 32, 32))[0], model(torch.ones(1, 3, 32, 32))[0]
    assert torch.equal(b, c) and not torch.equal(a, b)  # DropBlock acts in training only


def test_resnet18_grey_input_local_weights(tmp_path):
    import torchvision
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    model = build_encoder("resnet18", in_channels=1, num_classes=3, embedding_dim=32, weights=path)
    assert torch.equal(model.backbone.net.conv1.weight, ref.conv1.weight)
    emb, logits = model(torch.randn(2, 1, 32, 32))
    assert emb.shape == (2, 32) and logits.shape == (2, 3)
    with pytest.raises(FewShotError, match="no such weights file"):
        build_encoder("resnet18", in_channels=3, num_classes=3, weights=tmp_path / "missing.pth")


def test_resnet50_builds_without_download():
    model = build_encoder("resnet50", in_channels=3, num_classes=2, embedding_dim=64)
    assert model.feature_dim == 2048 and model.eval()(torch.randn(1, 3, 32, 32))[0].shape == (1, 64)


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(FewShotError) as err:
        build_encoder("vgg", in_channels=3, num_classes=2)
    for name in ENCODERS:
        assert name in str(err.value)


def test_custom_module_and_bad_channels():
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = build_encoder(backbone, in_channels=3, num_classes=4, image_size=16)
    assert model.embedding_dim == 8 and model(torch.randn(2, 3, 16, 16))[1].shape == (2, 4)
    with pytest.raises(FewShotError, match="1- or 3-channel"):
        build_encoder("conv4", in_channels=2, num_classes=2)


def test_cosine_classifier_builds_trains_and_rebuilds_from_its_spec():
    import torch

    from fewshot.models.encoders import CosineClassifier, build_encoder
    m = build_encoder("conv4", in_channels=1, num_classes=7, image_size=28, classifier="cosine")
    assert isinstance(m.classifier, CosineClassifier)
    x = torch.randn(4, 1, 28, 28)
    emb, logits = m(x)
    assert logits.shape == (4, 7) and logits.abs().max() <= m.classifier.log_scale.exp() + 1e-4
    logits.sum().backward()
    assert m.classifier.weight.grad is not None and m.classifier.log_scale.grad is not None
    spec = m.spec
    again = build_encoder(spec["name"], in_channels=spec["in_channels"], num_classes=spec["num_classes"],
                          embedding_dim=spec["embedding_dim"], **spec["kwargs"])
    again.load_state_dict(m.state_dict())
    m.eval(), again.eval()
    assert torch.equal(m(x)[1], again(x)[1])


def test_unknown_classifier_is_refused():
    import pytest

    from fewshot.errors import FewShotError
    from fewshot.models.encoders import build_encoder
    with pytest.raises(FewShotError, match="unknown classifier"):
        build_encoder("conv4", in_channels=1, num_classes=3, image_size=28, classifier="mlp")


def test_encoder_options_are_typed_and_checked():
    """Texts (``--encoder-arg width=16``) are typed by the backbone's signature; the spec records
    the typed values, so a checkpoint rebuilds the same architecture."""
    kw = dict(in_channels=1, num_classes=3, image_size=28)
    a = build_encoder("conv4", **kw, width="8,8,16,16", last_pool="false")
    b = build_encoder("conv4", **kw, width=[8, 8, 16, 16], last_pool=False)
    assert a.spec == b.spec and a.spec["kwargs"]["width"] == [8, 8, 16, 16] and a.embedding_dim == 144
    assert build_encoder("resnet12", in_channels=3, num_classes=2, drop_rate="0.1",
                         image_size=32).spec["kwargs"] == {"drop_rate": 0.1, "image_size": 32}
    with pytest.raises(FewShotError, match=r"unknown encoder 'conv4' options \['depth'\]; valid: width"):
        build_encoder("conv4", in_channels=1, num_classes=3, depth=3)
    with pytest.raises(FewShotError, match="encoder 'conv4' option pool='max': expected one of flatten, avg"):
        build_encoder("conv4", in_channels=1, num_classes=3, pool="max")
    assert build_encoder("Conv4", in_channels=1, num_classes=3, image_size=28).spec["name"] == "conv4"
    # the CLI types --encoder-arg texts the same way before they are recorded in the config
    assert typed_encoder_args("resnet12", {"classifier": "cosine", "drop_rate": "0", "image_size": 84}) == {
        "classifier": "cosine", "drop_rate": 0.0, "image_size": 84}
    with pytest.raises(FewShotError, match="unknown classifier 'mlp'; choose one of linear, cosine"):
        typed_encoder_args("conv4", {"classifier": "mlp"})
