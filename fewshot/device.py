"""One device picker for training, evaluation and adaptation."""

from __future__ import annotations

import os

import torch

from fewshot.errors import FewShotError

__all__ = ["PRECISIONS", "autocast_dtype", "check_precision", "cpu_has_fast_bf16", "native_bf16",
           "pick_device"]

#: training precisions: ``auto`` = bf16 autocast on CUDA, fp32 elsewhere; ``fast`` = bf16 wherever the
#: hardware runs it natively (CUDA, a CPU with AMX or AVX512-BF16: there a Conv-4 step runs ~2x
#: faster), fp32 elsewhere; ``bf16`` = bf16 autocast on any device; ``fp32`` = none.
PRECISIONS = ("auto", "fast", "fp32", "bf16")


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(device: str | torch.device | None = None, local_rank: int | None = None) -> torch.device:
    """The device to run on.

    ``None`` or ``"auto"``: CUDA when present, else Apple MPS, else the CPU. Under torchrun
    (``WORLD_SIZE`` > 1) a bare ``cuda`` means this process's own GPU, ``cuda:LOCAL_RANK``
    (``local_rank`` overrides the environment). A device that is named but not present, or a name
    torch does not know, is a one-line :class:`FewShotError`.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = "auto" if device is None else str(device).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
        name = f"cuda:{rank}"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise FewShotError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FewShotError(f"device {device!r} asked for, but no CUDA device is available")
    if dev.type == "mps" and not _mps_available():
        raise FewShotError(f"device {device!r} asked for, but Apple MPS is not available")
    return dev


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AMX tiles or AVX512-BF16 via oneDNN).

    Without them bf16 autocast on the CPU is emulated and slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(bool(check()) for check in checks if callable(check))


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 natively: CUDA, or a CPU with AMX / AVX512-BF16."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a one-line :class:`FewShotError`."""
    if precision not in PRECISIONS:
        raise FewShotError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a training step on ``device`` for ``precision`` (None: plain fp32).

    Weights, optimizer state, the loss and the evaluation stay fp32; only the encoder's forward
    pass (and so its backward) runs in bf16 where autocast allows (convolutions, matrix products).
    """
    check_precision(precision)
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fast" and not native_bf16(device):
        return None
    if device.type not in ("cuda", "cpu"):
        raise FewShotError(f"precision bf16 runs on cuda or cpu, not {device.type}")
    return torch.bfloat16
