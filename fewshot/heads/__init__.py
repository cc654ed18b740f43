"""Few-shot heads by name: ``get_head("proto")``, ``get_head("nn", k=5)``, ``get_head("ls:lam=1")``.

Options in a name are converted by the head's declared types (:mod:`fewshot.options`):
``"nn:k=3,weighted=false"`` gives ``k=3`` and ``weighted=False``; each head checks its ranges.

Every head fits a batch of episodes at once: ``head.fit(support [E,S,D], labels [E,S], way)``
returns a fitted object, and ``fitted(query [E,Q,D])`` returns logits ``[E,Q,way]``.
"""

from __future__ import annotations

import inspect
from typing import Any

from fewshot.errors import FewShotError
from fewshot.heads.base import CallableHead, Fitted, Head, as_head
from fewshot.heads.logreg import LogRegHead
from fewshot.heads.ls import LSHead
from fewshot.heads.ls_mlp import LSMLPHead
from fewshot.heads.nn import NNHead
from fewshot.heads.proto import ProtoHead
from fewshot.heads.ridge import DEFAULT_GRID, loo_residuals, loo_select, ridge_fit
from fewshot.options import parse_spec, typed_options

HEADS: dict[str, type] = {
    "proto": ProtoHead,
    "nn": NNHead,
    "ls": LSHead,
    "ls-mlp": LSMLPHead,
    "logreg": LogRegHead,
}


def get_head(name: str | Any, **kw: Any) -> Head:
    """A head by registry name (options as keywords or ``"name:key=value,..."``), or a user head
    object / callable passed through :func:`as_head`. Options a head does not take are refused,
    except ``distance``, which is passed only to heads that have one (so one ``--distance`` flag
    can reach proto and nn)."""
    if not isinstance(name, str):
        return as_head(name)
    base, opts = parse_spec(name, "head option")
    if base not in HEADS:
        raise FewShotError(f"unknown head {base!r}; valid heads: {', '.join(HEADS)}")
    cls = HEADS[base]
    params = inspect.signature(cls).parameters
    merged = {k: v for k, v in kw.items() if not (k == "distance" and "distance" not in params)}
    merged.update(opts)
    merged = typed_options(cls, merged, f"head {base!r}")
    try:
        head = cls(**merged)
    except TypeError as exc:
        raise FewShotError(f"bad options for head {base!r}: {exc}") from None
    head.name = name.strip() if opts else base
    return head


__all__ = ["HEADS", "get_head", "as_head", "Head", "Fitted", "CallableHead", "ProtoHead", "NNHead", "LSHead",
           "LSMLPHead", "LogRegHead", "ridge_fit", "loo_select", "loo_residuals", "DEFAULT_GRID"]
