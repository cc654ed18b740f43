"""Finite checks of tensors and state dicts: the training guard and every checkpoint write and read
use them, so a NaN or inf weight, buffer or base mean is never saved nor used."""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["all_finite", "nonfinite_names"]


def all_finite(tensors: list[torch.Tensor], *extra: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor: every element of ``tensors`` (floating) and ``extra`` is finite.

    The 2-norm of a tensor is inf / NaN when it holds one (it also overflows for elements beyond
    ~1e19, weights no network survives); it is the fused, vectorised norm (``torch._foreach_norm``,
    far cheaper than a max-abs pass per tensor). No host sync here: the caller decides when to read it.
    """
    floats = [t.detach() for t in tensors if t.is_floating_point() and t.numel()]
    parts = [torch.stack(torch._foreach_norm(floats)).float()] if floats else []
    parts += [e.detach().float().reshape(-1) for e in extra]
    if not parts:
        return torch.ones((), dtype=torch.bool)
    devices = {p.device for p in parts}
    if len(devices) > 1:
        parts = [p.cpu() for p in parts]
    return torch.isfinite(torch.cat([p.reshape(-1) for p in parts])).all()


def nonfinite_names(named: Mapping[str, object]) -> list[str]:
    """Names of the floating tensors in ``named`` (a state dict, possibly nested) that hold NaN or inf."""
    out = []
    for key, value in named.items():
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                out.append(str(key))
        elif isinstance(value, Mapping):
            out += [f"{key}.{k}" for k in nonfinite_names(value)]
    return out
