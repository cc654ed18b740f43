"""The inference fast path of an encoder, shared by :func:`fewshot.evaluation.features.embed` and
:class:`fewshot.adaptation.classifier.FewShotClassifier`.

:func:`prepare_for_inference` returns an eval-mode *copy* of the encoder (the original is never
modified, so training can go on with it) that

- folds every BatchNorm into the convolution before it (``torch.fx`` graph rewrite,
  ``torch.fx.experimental.optimization.fuse``; at inference BN is an affine map per channel, so
  ``conv -> BN`` is one convolution with rescaled weights and a bias): one pass over the
  activation maps fewer per block;
- stores weights and takes activations in ``channels_last`` (NHWC) memory format, the layout
  oneDNN's CPU convolutions (and cuDNN's tensor-core kernels) run fastest in;
- returns the embedding only.

:func:`quantize_int8` is the opt-in int8 variant (CPU only): static post-training quantisation
of weights and activations (``torch.ao.quantization`` FX mode, the ``x86`` backend: oneDNN/FBGEMM
kernels using AVX-512 VNNI), calibrated on a few images of the task (a classifier uses its
support images). Embeddings differ from float32 by ~1-2% relative (cosine similarity > 0.999 on
Conv-4); ``benchmarks/adapt_speed.py`` measures its speed and prediction agreement.

Conv-4 at 84x84 is ~0.2 GFLOP per image; on CPU the two layout/fusion changes together measured
~2.3x the images/s of the plain module (``benchmarks/adapt_speed.py`` prints the comparison).
Outputs equal the plain module's to float rounding (~1e-6 relative). Models that ``torch.fx``
cannot trace, or that call one module twice (shared weights), are still copied, put in eval mode
and made channels_last, just not fused.

:func:`inference_model` caches the prepared copy per (model, device) and re-prepares it when the
model's parameters or buffers change (checked by storage pointer and version counter).
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from fewshot.errors import FewShotError

__all__ = ["InferenceModel", "prepare_for_inference", "inference_model", "embedding_of", "threads",
           "quantize_int8", "prepare_input"]


def prepare_input(preprocess: Any, images: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
    """``preprocess(images)`` with one fused pass in the common case: uint8 images already at the
    encoder's size and channel count become ``x * 1/(255 std) - mean/std`` per channel, written
    straight into a float tensor of the memory format the prepared model takes (no separate
    scaling, normalising and layout-conversion passes). Anything else goes through ``preprocess``.
    Equal to ``preprocess(images)`` to float rounding."""
    from fewshot.models.preprocess import Preprocess

    if not (type(preprocess) is Preprocess and images.dtype == torch.uint8 and images.dim() == 4
            and images.shape[1] == preprocess.channels
            and tuple(images.shape[-2:]) == tuple(preprocess.image_size)):
        return preprocess(images)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=fmt)
    x.copy_(images)
    std = torch.tensor(preprocess.std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return x.mul_(1.0 / (255.0 * std)).sub_(mean / std)


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run torch ops on ``n`` intra-op threads inside the block (``None``: unchanged).

    Small dense linear algebra (batched ``S x S`` eigendecompositions, a 500 x 500 ``eigh``, tiny
    batched matmuls) gains little from OpenMP threads and, on a machine with more runnable
    processes than cores, loses a lot: every parallel region waits for a descheduled worker
    (measured 4-10x slower on 2 threads than on 1 on the shared 2-core dev machine).
    """
    old = torch.get_num_threads()
    if n is None or int(n) == old:
        yield
        return
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def embedding_of(out: Any) -> torch.Tensor:
    """The embedding ``[B, D]`` from an encoder's output ``(embedding, logits)`` or ``embedding``."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        raise FewShotError("the model must return (embedding [B, D], logits) or an embedding [B, D]")
    return out.flatten(1) if out.dim() > 2 else out


class InferenceModel(nn.Module):
    """An encoder prepared for inference; ``forward(x float [B,C,H,W]) -> embedding [B, D]``."""

    def __init__(self, module: nn.Module, *, channels_last: bool, fused: bool, int8: bool = False):
        super().__init__()
        self.module = module
        self.channels_last = bool(channels_last)
        self.fused = bool(fused)
        self.int8 = bool(int8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return embedding_of(self.module(x))

    def extra_repr(self) -> str:
        return f"fused={self.fused}, channels_last={self.channels_last}, int8={self.int8}"


def _fuse(model: nn.Module) -> tuple[nn.Module, bool]:
    """``(copy with conv+BN folded, True)``, or ``(plain copy, False)`` if fx cannot trace it or
    it calls one module more than once (shared weights: fx's ``fuse`` would fold the BN into the
    shared conv once per call, a wrong conv and wrong embeddings with no error)."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return copy.deepcopy(model), False
    try:
        import torch.fx
        from torch.fx.experimental.optimization import fuse

        traced = torch.fx.symbolic_trace(model)
        called = [n.target for n in traced.graph.nodes if n.op == "call_module"]
        if len(called) != len(set(called)):
            return copy.deepcopy(model), False
        return fuse(traced, inplace=False, no_trace=True), True   # a copy: the model keeps its BN
    except Exception:  # noqa: BLE001 - untraceable models (data-dependent control flow) run unfused
        return copy.deepcopy(model), False


def prepare_for_inference(model: nn.Module, *, device: str | torch.device | None = None, fuse: bool = True,
                          channels_last: bool | None = None) -> InferenceModel:
    """An eval-mode copy of ``model`` for fast inference (see the module docstring).

    ``channels_last``: default on for CPU and CUDA, off elsewhere (MPS).
    """
    if not isinstance(model, nn.Module):
        raise FewShotError(f"prepare_for_inference needs a torch module, got {type(model).__name__}")
    if isinstance(model, InferenceModel):
        return model
    dev = torch.device(device) if device is not None else _device_of(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            module, fused = _fuse(model) if fuse else (copy.deepcopy(model), False)
    finally:
        model.train(was_training)
    module = module.to(dev).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    if channels_last is None:
        channels_last = dev.type in ("cpu", "cuda")
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return InferenceModel(module, channels_last=channels_last, fused=fused)


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _signature(model: nn.Module, device: torch.device) -> tuple:
    tensors = list(model.parameters()) + list(model.buffers())
    return (str(device), tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in tensors))


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def inference_model(model: nn.Module, device: str | torch.device | None = None) -> InferenceModel:
    """:func:`prepare_for_inference`, cached per model and device; re-prepared when the model's
    weights change."""
    if isinstance(model, InferenceModel):
        return model
    dev = torch.device(device) if device is not None else _device_of(model)
    sig = _signature(model, dev)
    entries = _CACHE.setdefault(model, {})
    hit = entries.get(str(dev))
    if hit is not None and hit[0] == sig:
        return hit[1]
    prepared = prepare_for_inference(model, device=dev)
    entries[str(dev)] = (sig, prepared)
    return prepared


def _quant_engine() -> str:
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "onednn", "qnnpack"):
        if name in engines:
            return name
    raise FewShotError("this torch build has no int8 CPU quantisation engine")


def quantize_int8(model: nn.Module, calibration: torch.Tensor, *, batch_size: int = 32) -> InferenceModel:
    """A static int8 copy of ``model`` for CPU inference, calibrated on ``calibration`` (the
    model's normalised float input ``[N, C, H, W]``; a few dozen images of the task suffice).

    Conv+BN(+ReLU) are fused and quantised per channel, activations per tensor with observed
    ranges (``get_default_qconfig_mapping`` of the engine). Raises :class:`FewShotError` for a
    model ``torch.fx`` cannot trace or an empty calibration set.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if calibration.dim() != 4 or calibration.shape[0] == 0 or not calibration.is_floating_point():
        raise FewShotError("int8 calibration needs a float batch [N, C, H, W] with N >= 1")
    engine = _quant_engine()
    torch.backends.quantized.engine = engine
    m = copy.deepcopy(model).cpu().eval()
    calibration = calibration.detach().cpu()
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao deprecation notices
            prepared = prepare_fx(m, get_default_qconfig_mapping(engine), example_inputs=(calibration[:1],))
            with torch.no_grad():
                for i in range(0, calibration.shape[0], batch_size):
                    prepared(calibration[i:i + batch_size])
            q = convert_fx(prepared)
    except FewShotError:
        raise
    except Exception as exc:  # noqa: BLE001 - fx tracing / quantisation failures, one line
        raise FewShotError(f"int8 quantisation failed for this encoder ({type(exc).__name__}: {exc})"
                           ) from None
    return InferenceModel(q.eval(), channels_last=False, fused=True, int8=True)
