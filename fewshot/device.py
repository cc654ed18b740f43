"""One device picker for training, evaluation and adaptation."""

from __future__ import annotations

import os

import torch

from fewshot.errors import FewShotError

__all__ = ["pick_device"]


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
