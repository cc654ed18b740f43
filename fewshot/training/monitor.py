"""Watching a training run: the callbacks of :class:`fewshot.training.trainer.Trainer`.

A callback is any object with some of these methods, called on the main process:

- ``on_message(text)``: a one-line note of the run (held-out classes, where an interrupted run
  was saved);
- ``on_epoch_begin(epoch, epochs, steps, first_step)`` and ``on_step_end(step, logs)`` (``logs``:
  the epoch's mean ``loss`` so far and ``img_per_s``);
- ``on_epoch_end(row, metrics, out_dir)``: ``row`` is the epoch's metrics row (as appended to
  ``metrics.jsonl``), ``metrics`` every row so far, ``out_dir`` the run folder.

Three ship here:

- :class:`ProgressPrinter` shows a progress bar per epoch (:func:`fewshot.progress.progress`), one
  line per epoch and the notes, on stderr (``train(progress=True)`` adds it);
- :class:`CurveWriter` redraws ``<out>/curves.png`` (:func:`fewshot.training.curves.plot_curves`) after
  each validation;
- :class:`TensorBoardWriter` writes the same scalars, and the validation figure per shot with its
  95% CI as a margin chart, to ``<out>/tensorboard/`` through ``torch.utils.tensorboard`` (the
  optional ``tensorboard`` extra).

:func:`monitors` builds the curve and TensorBoard writers a run asks for and closes them when
training ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

from fewshot.errors import FewShotError
from fewshot.figures import short_data_name
from fewshot.progress import progress as progress_bar
from fewshot.training.curves import CURVES_FILE, plot_curves

__all__ = ["Callback", "ProgressPrinter", "CurveWriter", "TensorBoardWriter", "monitors", "run_title",
           "TENSORBOARD_HINT"]

TENSORBOARD_HINT = 'TensorBoard logging needs the tensorboard package: pip install -e ".[tensorboard]"'
_VAL_KEY = re.compile(r"^val_(\d+w\d+s)(_plain)?$")
# metrics-row key -> TensorBoard tag (the rest of the numeric keys go under "other/")
_TAGS = {"loss": "loss/total", "metric_loss": "loss/metric", "ce_loss": "loss/ce",
         "train_acc": "accuracy/train", "val_accuracy": "accuracy/val",
         "lr": "optim/lr", "img_per_s": "speed/img_per_s", "epoch_time_s": "speed/epoch_time_s"}


@runtime_checkable
class Callback(Protocol):
    """What every callback has: the end-of-epoch hook (the other hooks are optional)."""

    def on_epoch_end(self, row: dict, metrics: list[dict], out_dir: Path) -> None: ...


class ProgressPrinter:
    """Progress on ``file`` (default stderr): a bar per epoch (``bars``), one line per epoch with
    the row's figures (``epochs``), and every note of the run, each line starting with ``prefix``."""

    def __init__(self, *, bars: bool = True, epochs: bool = True, prefix: str = "fewshot train",
                 file: IO | None = None):
        self.bars, self.epochs, self.prefix, self.file = bars, epochs, prefix, file
        self.bar = None

    def _print(self, text: str) -> None:
        print(f"{self.prefix}: {text}", file=self.file if self.file is not None else sys.stderr, flush=True)

    def on_message(self, text: str) -> None:
        self._print(text)

    def on_epoch_begin(self, epoch: int, epochs: int, steps: int, first_step: int) -> None:
        if self.bars:
            self.bar = progress_bar(total=steps, initial=first_step, unit="step",
                                    desc=f"epoch {epoch + 1}/{epochs}", file=self.file)

    def on_step_end(self, step: int, logs: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}", img_s=f"{logs['img_per_s']:.0f}", refresh=False)
            self.bar.update(1)

    def on_epoch_end(self, row: dict, metrics: list[dict], out_dir: Path) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.epochs:
            self._print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in row.items() if not k.endswith("ci95") and k != "lr"))


class CurveWriter:
    """Redraws ``<out_dir>/curves.png`` after every epoch that validated (and after the first epoch).

    ``title``: the figure's title (e.g. ``conv4 on omniglot small1 (base)``); ``announce``: say
    where the curves are, once, on stderr.
    """

    def __init__(self, title: str | None = None, *, announce: bool = False, every_epoch: bool = False):
        self.title, self.announce, self.every_epoch = title, announce, every_epoch
        self.path: Path | None = None

    def on_epoch_end(self, row: dict, metrics: list[dict], out_dir: Path) -> None:
        validated = any(k.startswith("val_") for k in row)
        if not (validated or self.every_epoch or self.path is None):
            return
        self.path = plot_curves(metrics, Path(out_dir) / CURVES_FILE, title=self.title)
        if self.announce:
            print(f"fewshot train: training curves in {self.path} (redrawn after each validation)",
                  file=sys.stderr, flush=True)
            self.announce = False

    def close(self) -> None:
        pass


class TensorBoardWriter:
    """Event files under ``log_dir``: every numeric metric per epoch, validation per shot with its CI.

    Needs ``tensorboard`` (``pip install -e ".[tensorboard]"``); without it construction raises a
    one-line :class:`FewShotError` saying so, before any training.
    """

    def __init__(self, log_dir: str | os.PathLike, config: dict | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FewShotError(TENSORBOARD_HINT) from None
        self.log_dir = Path(log_dir)
        self._make = lambda: SummaryWriter(log_dir=os.fspath(self.log_dir))
        self.writer = None   # opened at the first epoch: a run that fails to start leaves no event file
        self.config = config
        self._layout: set[str] = set()

    def on_epoch_end(self, row: dict, metrics: list[dict], out_dir: Path) -> None:
        if self.writer is None:
            self.writer = self._make()
            if self.config is not None:
                text = json.dumps(self.config, indent=2, default=str)
                self.writer.add_text("config", "```\n" + text + "\n```", 0)
        step = int(row["epoch"])
        known = len(self._layout)
        for key, value in row.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            m = _VAL_KEY.match(key)
            if m:
                name = m.group(1) + (" no TTA" if m.group(2) else "")
                ci = float(row.get(f"{key}_ci95") or 0.0)
                self.writer.add_scalar(f"val/{name}", value, step)
                self.writer.add_scalar(f"val/{name} lower", value - ci, step)
                self.writer.add_scalar(f"val/{name} upper", value + ci, step)
                self._layout.add(name)
            elif key.endswith("_ci95"):
                self.writer.add_scalar(f"val_ci95/{key[4:-5]}", value, step)
            else:
                self.writer.add_scalar(_TAGS.get(key, f"other/{key}"), value, step)
        if len(self._layout) > known:   # one margin chart per validation figure: accuracy and its CI
            charts = {f"{n} ± 95% CI": ["Margin", [f"val/{n}", f"val/{n} lower", f"val/{n} upper"]]
                      for n in sorted(self._layout)}
            self.writer.add_custom_scalars({"validation": charts})
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def run_title(encoder: object, data_name: str | None, val_name: str | None = None) -> str:
    """``conv4 on omniglot small1 (base), validated on omniglot small2, 2 groups`` (no local paths);
    ``val_name`` None: validated on held-out base classes."""
    encoder = encoder if isinstance(encoder, str) else type(encoder).__name__
    val = short_data_name(val_name, 40) if val_name else "held-out base classes"
    return f"{encoder} on {short_data_name(data_name, 40)}, validated on {val}"


@contextlib.contextmanager
def monitors(out_dir: str | os.PathLike, *, title: str | None = None, tensorboard: bool = False,
             config: dict | None = None, announce: bool = False) -> Iterator[list]:
    """The callbacks of a run (curves always, TensorBoard when asked), closed when the block ends."""
    out = Path(out_dir)
    callbacks: list = [CurveWriter(title, announce=announce)]
    if tensorboard and int(os.environ.get("RANK", "0")) == 0:   # torchrun: the main process logs
        tb = TensorBoardWriter(out / "tensorboard", config)
        callbacks.append(tb)
        if announce:
            print(f"fewshot train: TensorBoard events in {tb.log_dir} (tensorboard --logdir {tb.log_dir})",
                  file=sys.stderr, flush=True)
    try:
        yield callbacks
    finally:
        for cb in callbacks:
            cb.close()
