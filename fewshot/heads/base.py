"""The head contract: ``fit(support [E,S,D], labels [E,S], way) -> fitted``;
``fitted(query [E,Q,D]) -> logits [E,Q,way]``.

A head turns the support set of every episode of a batch into a classifier at once (batched over
episodes ``E``; one task is ``E = 1``), so evaluation and episodic training never loop over single
episodes in Python. The built-in heads also have ``partial_fit(fitted, support, labels, way)``,
which extends a fitted head with new shots or new classes (labels ``>=`` the fitted way), and
their fitted objects have ``state_dict()`` / ``from_state_dict()`` (tensors and plain values, what
a model file stores). Any plain callable ``f(support, support_labels, way) -> callable`` is
accepted as a head too (:func:`as_head`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

from fewshot.errors import FewShotError
from fewshot.models.losses import DISTANCES


@runtime_checkable
class Fitted(Protocol):
    """A head fitted on a batch of episodes: ``fitted(query [E,Q,D]) -> logits [E,Q,way]``."""

    def __call__(self, query: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Head(Protocol):
    """Fits a batch of episodes; ``name`` is used in reports."""

    name: str

    def fit(self, support: torch.Tensor, support_labels: torch.Tensor, way: int) -> Fitted: ...


@runtime_checkable
class IncrementalHead(Head, Protocol):
    """A head whose fit can grow: ``partial_fit(None, ...)`` starts one, ``partial_fit(fitted, ...)``
    adds shots or classes to it."""

    def partial_fit(self, fitted: Fitted | None, support: torch.Tensor, support_labels: torch.Tensor,
                    way: int) -> Fitted: ...


class CallableHead:
    """Wraps a user function ``f(support, support_labels, way) -> callable`` as a :class:`Head`."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor, int], Callable],
                 name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def fit(self, support: torch.Tensor, support_labels: torch.Tensor, way: int) -> Fitted:
        check_support(support, support_labels, way)
        return self.fn(support, support_labels, way)

    def __repr__(self) -> str:
        return f"CallableHead({self.name})"


def as_head(obj: Any, name: str | None = None) -> Head:
    """A :class:`Head` from a head object or a plain callable with the head signature."""
    if hasattr(obj, "fit") and callable(obj.fit):
        if name is not None:
            obj.name = name
        elif not hasattr(obj, "name"):
            obj.name = type(obj).__name__
        return obj
    if callable(obj):
        return CallableHead(obj, name)
    raise FewShotError(f"a head must have .fit(support, labels, way) or be callable, "
                       f"got {type(obj).__name__}")


def check_support(support: torch.Tensor, labels: torch.Tensor, way: int) -> None:
    """Validate the shapes of a batch of support sets (one clear message per misuse)."""
    if support.dim() != 3:
        raise FewShotError(f"support must be [episodes, shots, dim], got shape {tuple(support.shape)}")
    if labels.shape != support.shape[:2]:
        raise FewShotError(f"support labels must be {tuple(support.shape[:2])}, got {tuple(labels.shape)}")
    if way < 1:
        raise FewShotError(f"way must be positive, got {way}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= way):
        raise FewShotError(f"support labels must lie in [0, {way}), "
                           f"got [{int(labels.min())}, {int(labels.max())}]")


def check_extension(fitted_shape: tuple[int, ...], support: torch.Tensor, fitted_way: int, way: int) -> None:
    """``partial_fit`` of a fitted ``[E, ..., D]`` head: same episodes and feature size, no class lost."""
    if support.shape[0] != fitted_shape[0] or support.shape[-1] != fitted_shape[-1]:
        raise FewShotError(f"partial_fit: the head was fitted on {fitted_shape[0]} episode(s) of "
                           f"{fitted_shape[-1]}-d features, got support of shape {tuple(support.shape)}")
    if way < fitted_way:
        raise FewShotError(f"partial_fit: way {way} is below the {fitted_way} classes already fitted")


def appended_rows(kept: torch.Tensor, kept_labels: torch.Tensor, kept_way: int, support: torch.Tensor,
                  labels: torch.Tensor, way: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``partial_fit`` of a head that keeps its support rows: the kept rows ``[E,S0,D]`` and labels
    with ``support [E,S,D]`` and ``labels`` appended, after the checks."""
    check_support(support, labels, way)
    check_extension(tuple(kept.shape), support, kept_way, way)
    return (torch.cat([kept, support.to(kept.dtype)], 1),
            torch.cat([kept_labels, labels.to(kept_labels.dtype)], 1))


def pad_classes(t: torch.Tensor, way: int, dim: int) -> torch.Tensor:
    """``t`` with zeros appended along ``dim`` up to ``way`` entries (room for new classes)."""
    grow = way - t.shape[dim]
    if grow <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = grow
    return torch.cat([t, t.new_zeros(shape)], dim)


def episode_index(labels: torch.Tensor, way: int) -> torch.Tensor:
    """Flat row index ``e * way + label`` of every support row, ``[E*S]`` (for ``index_add``)."""
    offsets = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1) * way
    return (labels.long() + offsets).reshape(-1)


def check_query(query: torch.Tensor, dim: int, episodes: int) -> None:
    if query.dim() != 3 or query.shape[0] != episodes or query.shape[2] != dim:
        raise FewShotError(f"query must be [{episodes}, queries, {dim}], got {tuple(query.shape)}")


def check_distance(distance: str) -> str:
    """A head scores with the distance the encoder was trained with: a name of the one distance
    registry (:data:`fewshot.models.losses.DISTANCES`), checked with its error form."""
    DISTANCES.get(distance)  # unknown names: the registry's one-line error listing the valid ones
    return distance


def one_hot(labels: torch.Tensor, way: int, dtype: torch.dtype) -> torch.Tensor:
    """``[E,S] -> [E,S,way]`` one-hot targets in ``dtype``."""
    out = torch.zeros(*labels.shape, way, dtype=dtype, device=labels.device)
    return out.scatter_(-1, labels.long().unsqueeze(-1), 1.0)


def sq_euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched squared euclidean distances ``[E,A,D] x [E,B,D] -> [E,A,B]`` (differentiable, >= 0)."""
    d = (a * a).sum(-1, keepdim=True) - 2 * a @ b.transpose(-1, -2) + (b * b).sum(-1).unsqueeze(-2)
    return d.clamp_min(0)


def cosine_sim(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Batched cosine similarities ``[E,A,D] x [E,B,D] -> [E,A,B]``."""
    an = torch.nn.functional.normalize(a, dim=-1, eps=eps)
    bn = torch.nn.functional.normalize(b, dim=-1, eps=eps)
    return an @ bn.transpose(-1, -2)
