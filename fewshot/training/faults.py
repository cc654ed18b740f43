"""What training does under faults: Ctrl-C inside a step, non-finite weights.

* :class:`DeferredInterrupt`: the first Ctrl-C (SIGINT) only raises a flag that the training loop
  reads at step boundaries, so the step in flight finishes and the saved state is one of a clean
  boundary; a second Ctrl-C raises ``KeyboardInterrupt`` at once.
* :class:`StepSnapshot`: what a step changes before its optimizer update (the RNG states drawn by
  augmentation and dropout, the batch-norm running statistics updated by the forward pass), so a
  ``KeyboardInterrupt`` that lands in that part of the step is rolled back and the step redone.
* :func:`save_interrupted`: what the training loop saves on a ``KeyboardInterrupt``, by where in the
  step it landed (rolled back, finished, or nothing written).
* :func:`all_finite` / :func:`nonfinite_names`: one fused check over every weight and buffer
  (``torch._foreach_norm``: one kernel per dtype/device group, one host sync), and the names of the
  culprits for the error message.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from fewshot.models.checkpoint import save_checkpoint

__all__ = ["DeferredInterrupt", "StepSnapshot", "save_interrupted"]


class DeferredInterrupt:
    """Context manager: SIGINT sets ``requested``; a second SIGINT raises ``KeyboardInterrupt``.

    Only installed in the main thread and when ``enabled`` (under torchrun every rank must stop at
    the same step, so there the plain ``KeyboardInterrupt`` path is kept); otherwise inert.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> DeferredInterrupt:
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)


class StepSnapshot:
    """The RNG states and module buffers at the start of a step, restorable in place.

    Buffers are few and small (batch-norm statistics), so copying them every step costs next to
    nothing next to the forward pass; parameters and optimizer state are not copied (they change
    only in ``optimizer.step()``, after which a step is finished rather than rolled back).
    """

    def __init__(self, buffers: Iterable[torch.Tensor], generators: Iterable[torch.Generator],
                 device: torch.device):
        self.buffers = list(buffers)
        self.generators = list(generators)
        self.device = device
        self._saved: tuple | None = None

    def take(self) -> None:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        self._saved = (torch.get_rng_state(), cuda, [g.get_state() for g in self.generators],
                       [b.clone() for b in self.buffers])

    def restore(self) -> None:
        if self._saved is None:
            return
        cpu, cuda, gens, bufs = self._saved
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)
        for g, s in zip(self.generators, gens):
            g.set_state(s)
        with torch.no_grad():
            for b, s in zip(self.buffers, bufs):
                b.copy_(s)


def save_interrupted(cur: dict, snapshot: StepSnapshot, book: Callable, finite: Callable[[], bool],
                      make_state: Callable[[tuple], dict], last_path: Path, saved: tuple | None) -> str:
    """Save a consistent state after a KeyboardInterrupt, wherever in a step it landed; return a
    one-line account of what was saved (for the run's callbacks).

    Before the optimizer update the step is rolled back (RNGs, batch-norm statistics) and redone
    on resume; after it the step is finished (scheduler, sums); inside it, or inside the epoch-end
    writes, nothing is written and the last consistent checkpoint stays. Non-finite weights are
    never written.
    """
    phase, at = cur["phase"], cur["at"]
    if phase == "step":
        snapshot.restore()
    elif phase == "stepped":
        book(*at)
        at = cur["at"]
    elif phase != "idle":
        where = {"update": "inside the optimizer update", "commit": "while writing the epoch's files",
                 "final": "while writing the base means"}.get(phase, phase)
        keep = f"{saved[0]} (epoch {saved[1]}, step {saved[2]})" if saved else "no checkpoint"
        return f"interrupted {where}; nothing written, {keep} stays the state to resume from"
    if saved is not None and Path(saved[0]) == last_path and tuple(saved[1:]) == tuple(at):
        return f"interrupted; {last_path} holds this state (resume to continue)"
    if not finite():
        return "interrupted; not saved: the weights are non-finite (try a lower learning rate)"
    save_checkpoint(last_path, make_state(at))
    return f"interrupted; state saved to {last_path} (epoch {at[0]}, step {at[1]}; resume to continue)"
