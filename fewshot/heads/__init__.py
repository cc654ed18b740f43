"""Few-shot heads by name: ``get_head("proto")``, ``get_head("nn", k=5)``, ``get_head("ls:lam=1")``.

``HEADS`` is a :class:`fewshot.registry.Registry`: options in a name are converted by the head's
declared types, ``"nn:k=3,weighted=false"`` gives ``k=3`` and ``weighted=False``; each head checks
its ranges. ``adaptable=True`` marks the heads a standalone classifier can hold.

Every head fits a batch of episodes at once: ``head.fit(support [E,S,D], labels [E,S], way)``
returns a fitted object, and ``fitted(query [E,Q,D])`` returns logits ``[E,Q,way]``.
"""

from __future__ import annotations

from typing import Any

from fewshot.heads.base import CallableHead, Fitted, Head, as_head
from fewshot.heads.logreg import LogRegHead
from fewshot.heads.ls import LSHead
from fewshot.heads.ls_mlp import LSMLPHead
from fewshot.heads.nn import NNHead
from fewshot.heads.proto import ProtoHead
from fewshot.heads.proto_dc import ProtoDCHead
from fewshot.heads.ridge import DEFAULT_GRID, loo_residuals, loo_select, ridge_fit
from fewshot.heads.tangent import TangentHead
from fewshot.registry import Registry

HEADS = Registry("head", passthrough=None)
for _name, _cls, _adaptable in (("proto", ProtoHead, True), ("nn", NNHead, True), ("ls", LSHead, True),
                                ("ls-mlp", LSMLPHead, False), ("logreg", LogRegHead, False)):
    HEADS.register(_name, _cls, skip=("name",), adaptable=_adaptable)
# needs the checkpoint's base-class means (fewshot.evaluation.evaluate hands them over)
HEADS.register("proto-dc", ProtoDCHead, skip=("name", "base_means"), adaptable=False)
# needs every support image's view directions (fewshot.evaluation.evaluate computes them from TTA views)
HEADS.register("tangent", TangentHead, skip=("name",), adaptable=False)


def get_head(name: str | Any, **kw: Any) -> Head:
    """A head by registry name (options as keywords or ``"name:key=value,..."``), or a user head
    object / callable passed through :func:`as_head`. Options a head does not take are refused,
    except ``distance``, which is passed only to heads that have one (so one ``--distance`` flag
    can reach proto and nn)."""
    if not isinstance(name, str):
        return as_head(name)
    entry, opts = HEADS.parse(name)
    kw = {k: v for k, v in kw.items() if k not in opts and (k != "distance" or "distance" in entry.options)}
    head = HEADS.create(name, **kw)
    head.name = name.strip() if opts else entry.name
    return head


__all__ = ["HEADS", "get_head", "as_head", "Head", "Fitted", "CallableHead", "ProtoHead", "ProtoDCHead",
           "NNHead", "LSHead", "LSMLPHead", "LogRegHead", "TangentHead", "ridge_fit", "loo_select",
           "loo_residuals", "DEFAULT_GRID"]
