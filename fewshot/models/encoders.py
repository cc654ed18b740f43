"""Encoders by name: ``conv4``, ``resnet12``, ``resnet18``, ``resnet50`` (or any torch module).

Every encoder is wrapped in :class:`Encoder`, whose ``forward(x)`` returns
``(embedding [B, D], logits [B, num_classes])``: the embedding feeds the metric loss and the
few-shot heads, the logits a linear classifier over the base classes (the joint cross-entropy).
An optional linear projection shrinks a wide backbone feature (2048-d for ResNet-50) to
``embedding_dim``, which keeps episode scoring and the metric loss cheap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.errors import FewShotError
from fewshot.registry import Registry

__all__ = ["ENCODERS", "CLASSIFIERS", "Encoder", "Conv4", "ResNet12", "build_encoder", "typed_encoder_args",
           "encoder_spec", "check_input_size", "INIT_ONLY"]

ENCODERS = Registry("encoder", passthrough=nn.Module, ignore_case=True)
CLASSIFIERS = Registry("classifier")  # base-class logits of the joint cross-entropy: (dim, classes) -> module

# Options that only say where the starting weights come from: a checkpoint holds the weights
# themselves, so its spec leaves these out and loading never reads that file or downloads.
INIT_ONLY = ("weights", "download")


# ---------------------------------------------------------------- backbones
def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


@ENCODERS.register("conv4", skip=("in_channels",))
class Conv4(nn.Sequential):
    """ProtoNet's Conv-4: 4 x [3x3 conv ``width``, BN, ReLU, 2x2 max-pool], then flatten or pool.

    ``width``: one channel count for every block (64 in ProtoNet), or four, one per block. Wider
    late blocks cost little (they run on 7x7 and 3x3 maps at 28x28) and widen the embedding.
    ``last_pool=False`` drops the last max-pool (a 3x3 map, 576-d at 28x28 instead of 64-d).

    ``pool="flatten"`` (ProtoNet: 64-d at 28x28, 1600-d at 84x84) or ``"avg"`` (global average,
    last-width-d at any size).
    """

    def __init__(self, in_channels: int = 3, width: int | Sequence[int] = 64,
                 pool: Literal["flatten", "avg"] = "flatten", image_size: int = 84, last_pool: bool = True):
        if pool not in ("flatten", "avg"):
            raise FewShotError(f"conv4 pool must be 'flatten' or 'avg', got {pool!r}")
        widths = [int(width)] * 4 if isinstance(width, (int, float)) else [int(w) for w in width]
        if len(widths) != 4 or min(widths) < 1:
            raise FewShotError(f"conv4 width must be a positive number or four of them, got {width!r}")
        layers = [_conv_block(cin, cout) for cin, cout in zip([in_channels] + widths[:3], widths)]
        if not last_pool:  # keep the last block's spatial map (3x3 at 28x28): finer stroke layout
            layers[-1] = nn.Sequential(*list(layers[-1])[:-1])
        layers.append(nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.Identity())
        layers.append(nn.Flatten())
        super().__init__(*layers)
        side = int(image_size)
        for _ in range(4 if last_pool else 3):
            side //= 2
        self.out_dim = widths[-1] if pool == "avg" else widths[-1] * max(side, 1) ** 2


class _ResBlock12(nn.Module):
    """Three 3x3 conv-BN-LeakyReLU(0.1), a 1x1 shortcut, 2x2 max-pool, optional DropBlock."""

    def __init__(self, cin: int, cout: int, drop_rate: float, block_size: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)
        self.drop_rate, self.block_size = float(drop_rate), int(block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.act(self.body(x) + self.shortcut(x)))
        if self.drop_rate > 0 and self.training:
            from torchvision.ops import drop_block2d
            size = min(self.block_size, out.shape[-2], out.shape[-1])  # small inputs: smaller blocks
            size = max(1, size - (size + 1) % 2)  # DropBlock wants an odd block size
            out = drop_block2d(out, self.drop_rate, size, training=True)
        return out


@ENCODERS.register("resnet12", skip=("in_channels",))
class ResNet12(nn.Module):
    """The few-shot ResNet-12 of MetaOptNet / RFS (channels 64-160-320-640, global average pool).

    ``drop_rate`` > 0 enables DropBlock (torchvision's ``DropBlock2d``) in the last two stages, with
    ``block_size`` 5 as in MetaOptNet; earlier stages use plain blocks.
    """

    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] = (64, 160, 320, 640),
                 drop_rate: float = 0.0, block_size: int = 5):
        super().__init__()
        stages, cin = [], in_channels
        for i, cout in enumerate(channels):
            use_drop = drop_rate if i >= len(channels) - 2 else 0.0
            stages.append(_ResBlock12(cin, cout, use_drop, block_size if i == len(channels) - 1 else 1))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(x)).flatten(1)


class _TorchvisionResNet(nn.Module):
    """A torchvision ResNet with its ``fc`` removed; 1-channel input is repeated to 3 channels."""

    def __init__(self, arch: str, in_channels: int = 3, weights: str | os.PathLike | None = None,
                 download: bool = False):
        super().__init__()
        import torchvision
        builder = getattr(torchvision.models, arch)
        if download and weights is None:
            net = builder(weights="DEFAULT")
        else:
            net = builder(weights=None)
            if weights is not None:
                path = os.fspath(weights)
                if not os.path.isfile(path):
                    raise FewShotError("no such weights file", path)
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True)
                except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input
                    raise FewShotError(f"cannot read weights ({type(exc).__name__}: {exc})", path) from None
                state = state.get("state_dict", state) if isinstance(state, dict) else state
                state = {k: v for k, v in state.items() if not k.startswith("fc.")}
                missing, _ = net.load_state_dict(state, strict=False)
                missing = [k for k in missing if not k.startswith("fc.")]
                if missing:
                    raise FewShotError(f"weights lack {len(missing)} {arch} tensors, e.g. {missing[0]}", path)
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net(x)


@ENCODERS.register("resnet18", skip=("in_channels",))
def resnet18(in_channels: int = 3, weights: str | os.PathLike | None = None,
             download: bool = False) -> nn.Module:
    """torchvision ResNet-18 (512-d), from a local weights file, ImageNet weights or scratch."""
    return _TorchvisionResNet("resnet18", in_channels, weights, download)


@ENCODERS.register("resnet50", skip=("in_channels",))
def resnet50(in_channels: int = 3, weights: str | os.PathLike | None = None,
             download: bool = False) -> nn.Module:
    """torchvision ResNet-50 (2048-d), from a local weights file, ImageNet weights or scratch."""
    return _TorchvisionResNet("resnet50", in_channels, weights, download)


# ------------------------------------------------------------------ wrapper
@CLASSIFIERS.register("linear")
def linear_classifier(dim: int, num_classes: int) -> nn.Module:
    """A linear layer over the embedding."""
    return nn.Linear(dim, num_classes)


@CLASSIFIERS.register("cosine")
class CosineClassifier(nn.Module):
    """Base-class logits as scaled cosine similarities to learned class weights (Baseline++,
    Chen et al. 2019): the training signal then shapes the embedding's directions, which is what
    cosine prototypes compare on novel classes. The scale is learned (initialised at 10)."""

    def __init__(self, dim: int, num_classes: int, scale: float = 10.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * dim ** -0.5)
        self.log_scale = nn.Parameter(torch.tensor(float(scale)).log())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()




class Encoder(nn.Module):
    """Backbone + optional projection + base-class classifier (linear, or cosine: ``classifier=``).

    ``forward(x) -> (embedding, logits)``. ``spec`` holds what :func:`build_encoder` needs to
    rebuild the same architecture from a checkpoint (name and keyword arguments).
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int,
                 embedding_dim: int | None = None, spec: dict | None = None, classifier: str = "linear"):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = int(feature_dim)
        if embedding_dim is not None and embedding_dim != feature_dim:
            self.projection: nn.Module = nn.Linear(feature_dim, embedding_dim)
            self.embedding_dim = int(embedding_dim)
        else:
            self.projection = nn.Identity()
            self.embedding_dim = self.feature_dim
        self.num_classes = int(num_classes)
        self.classifier = CLASSIFIERS.create(classifier, dim=self.embedding_dim, num_classes=self.num_classes)
        self.spec = dict(spec or {})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        if isinstance(feats, (tuple, list)):
            feats = feats[0]
        emb = self.projection(feats.flatten(1))
        return emb, self.classifier(emb)


def _feature_dim(module: nn.Module, in_channels: int, image_size: int) -> int:
    for attr in ("out_dim", "embedding_dim", "out_features", "num_features"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    was_training = module.training
    module.eval()
    with torch.no_grad():
        out = module(torch.zeros(2, in_channels, image_size, image_size))
    module.train(was_training)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return int(out.flatten(1).shape[1])


def typed_encoder_args(name: str, args: dict) -> dict:
    """Encoder options (``--encoder-arg`` texts or typed values) typed by the declared options of
    backbone ``name``, in their order: ``classifier`` must name a ``CLASSIFIERS`` entry, and
    ``image_size`` (passed by the trainer to every encoder) is kept as it is for backbones that
    have no use for it."""
    entry = ENCODERS.get(name)
    if "classifier" in args:
        CLASSIFIERS.get(args["classifier"])
    own = {k: v for k, v in args.items() if k != "classifier" and (k != "image_size" or k in entry.options)}
    typed = ENCODERS.options(entry.name, **own)[1]
    return {k: typed.get(k, v) for k, v in args.items()}


def build_encoder(name_or_module: str | nn.Module, *, in_channels: int, num_classes: int,
                  embedding_dim: int | None = None, **kw) -> Encoder:
    """An :class:`Encoder` by registry name (see ``ENCODERS``) or around any backbone module.

    Keyword arguments go to the backbone (``width``, ``pool``, ``image_size`` for conv4;
    ``drop_rate`` for resnet12; ``weights`` (a local file) and ``download`` for torchvision
    ResNets). A module backbone must map ``[B, C, H, W]`` to features ``[B, D]``; D is read from
    ``out_dim``/``embedding_dim`` or found by a dry run at ``image_size`` (default 84).
    ``classifier="cosine"`` replaces the base-class linear layer by a :class:`CosineClassifier`.
    """
    if in_channels not in (1, 3):
        raise FewShotError(f"encoders take 1- or 3-channel images, got {in_channels} channels")
    if num_classes < 1:
        raise FewShotError(f"num_classes must be positive, got {num_classes}")
    if embedding_dim is not None and embedding_dim < 1:
        raise FewShotError(f"embedding_dim must be positive, got {embedding_dim}")
    classifier = kw.pop("classifier", "linear")
    if isinstance(name_or_module, nn.Module):
        image_size = int(kw.pop("image_size", 84))
        dim = _feature_dim(name_or_module, in_channels, image_size)
        spec = {"name": type(name_or_module).__name__, "in_channels": in_channels,
                "num_classes": num_classes, "embedding_dim": embedding_dim, "kwargs": {}, "custom": True}
        return Encoder(name_or_module, dim, num_classes, embedding_dim, spec, classifier)
    entry = ENCODERS.get(str(name_or_module))
    options = typed_encoder_args(entry.name, kw)
    backbone = ENCODERS.create(entry.name, in_channels=in_channels,
                               **{k: v for k, v in options.items() if k in entry.options})
    spec = {"name": entry.name, "in_channels": in_channels, "num_classes": num_classes,
            "embedding_dim": embedding_dim,
            "kwargs": {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in options.items()
                       if k not in INIT_ONLY}}
    if classifier != "linear":
        spec["kwargs"]["classifier"] = classifier
    return Encoder(backbone, backbone.out_dim, num_classes, embedding_dim, spec, classifier)


def encoder_spec(model: nn.Module) -> dict:
    """The rebuild spec of an encoder (unwrapping DDP / torch.compile)."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    return dict(getattr(model, "spec", {}))


def check_input_size(model: nn.Module, channels: int, size: tuple[int, int]) -> None:
    """Refuse, in one line, images too small for the encoder (e.g. 8x8 digits through four
    max-pools), before training starts instead of a traceback from inside the first step."""
    x = torch.zeros(2, channels, *size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError as exc:
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        name = encoder_spec(model).get("name", type(model).__name__)
        raise FewShotError(f"encoder {name} cannot take {channels}x{size[0]}x{size[1]} images ({cause}); "
                           "use a larger image size (image_size, --image-size)") from None
    finally:
        model.train(was_training)
