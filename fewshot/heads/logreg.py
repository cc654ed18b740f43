"""Logistic-regression head: scikit-learn per episode, the reference head of many papers (RFS, Tian
et al. 2020). Slow and not differentiable; kept for comparison. It has no incremental form:
``partial_fit`` refits on the kept support plus the new rows, and a state dict holds the support
(loading refits, deterministically)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from fewshot.heads.base import appended_rows, check_query, check_support
from fewshot.options import at_least, check, finite_positive


@dataclass
class FittedLogReg:
    """One scikit-learn model per episode, the settings and the support it was fitted on."""

    models: list
    way: int
    head: LogRegHead              # the settings it was fitted with
    support: torch.Tensor         # [E,S,D] (what partial_fit refits on)
    support_labels: torch.Tensor  # [E,S]

    def state_dict(self) -> dict:
        return {"support": self.support, "support_labels": self.support_labels, "way": self.way,
                "C": self.head.C, "max_iter": self.head.max_iter, "normalize": self.head.normalize,
                "random_state": self.head.random_state}

    @classmethod
    def from_state_dict(cls, d: dict) -> FittedLogReg:
        head = LogRegHead(C=d["C"], max_iter=d["max_iter"], normalize=d["normalize"],
                          random_state=d["random_state"])
        return head.fit(d["support"], d["support_labels"], d["way"])

    def __call__(self, query: torch.Tensor) -> torch.Tensor:
        check_query(query, self.support.shape[-1], len(self.models))
        q = query.detach().float()
        if self.head.normalize:
            q = torch.nn.functional.normalize(q, dim=-1)
        q_np = q.cpu().numpy()
        out = np.full((q.shape[0], q.shape[1], self.way), -np.inf, dtype=np.float32)
        for e, model in enumerate(self.models):
            scores = model.decision_function(q_np[e])
            if scores.ndim == 1:  # binary: sklearn returns the score of classes_[1]
                scores = np.stack([-scores, scores], axis=1)
            out[e][:, model.classes_] = scores
        return torch.from_numpy(out).to(query.device)


@dataclass
class LogRegHead:
    """``LogisticRegression(C, lbfgs, max_iter)`` on L2-normalised features, one fit per episode."""

    C: float = 1.0
    max_iter: int = 1000
    normalize: bool = True
    random_state: int = 0
    name: str = "logreg"

    def __post_init__(self) -> None:
        self.C = finite_positive(self.C, "head 'logreg' option C")
        self.max_iter = at_least(self.max_iter, 1, "head 'logreg' option max_iter")
        check(isinstance(self.normalize, bool), "head 'logreg' option normalize", self.normalize,
              "true or false")

    def fit(self, support: torch.Tensor, support_labels: torch.Tensor, way: int) -> FittedLogReg:
        from sklearn.linear_model import LogisticRegression

        check_support(support, support_labels, way)
        s = support.detach().float()
        if self.normalize:
            s = torch.nn.functional.normalize(s, dim=-1)
        s_np, y_np = s.cpu().numpy(), support_labels.detach().cpu().numpy()
        models = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning on separable 1-shot data
            for e in range(s_np.shape[0]):
                model = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state)
                models.append(model.fit(s_np[e], y_np[e]))
        return FittedLogReg(models, way, self, support.detach(), support_labels.detach())

    def partial_fit(self, fitted: FittedLogReg | None, support: torch.Tensor, support_labels: torch.Tensor,
                    way: int) -> FittedLogReg:
        """A refit on the kept support plus ``support`` (logistic regression has no closed form to grow)."""
        if fitted is None:
            return self.fit(support, support_labels, way)
        return self.fit(*appended_rows(fitted.support, fitted.support_labels, fitted.way, support,
                                       support_labels, way), way)
