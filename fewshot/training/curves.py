"""Training curves: one PNG per run that shows at a glance how training went.

:func:`plot_curves` draws the per-epoch rows of a run (``metrics.jsonl``, or
``TrainResult.metrics``) in four panels: the training loss with its metric and cross-entropy
parts, the validation accuracy per shot with its 95% CI band (best epoch marked), the training
accuracy, and the learning rate. Keys a row lacks are left out, so runs of every objective, with
or without validation every epoch (and the rows of older episodic runs), draw the same way.
:func:`read_metrics` reads a run folder's ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fewshot.errors import FewShotError
from fewshot.figures import pyplot, save_figure, shorten

__all__ = ["CURVES_FILE", "plot_curves", "read_metrics", "val_series"]

CURVES_FILE = "curves.png"
_VAL_KEY = re.compile(r"^val_(\d+)w(\d+)s(_plain)?$")
_LOSS_PARTS = (("loss", "total loss", "-"), ("metric_loss", "metric part (unweighted)", "--"),
               ("ce_loss", "cross-entropy part", ":"))


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``<run_dir>/metrics.jsonl`` (or of that file itself); one-line error if unreadable."""
    path = Path(run_dir)
    path = path / "metrics.jsonl" if path.is_dir() else path
    try:
        lines = path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except FileNotFoundError:
        raise FewShotError("no metrics.jsonl: not a training run folder", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FewShotError(f"unreadable metrics ({exc})", path) from None


def val_series(rows: Sequence[dict]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{label: (epochs, accuracy, ci95)}`` for every validation figure the rows carry.

    ``val_5w1s`` -> ``5-way 1-shot``; ``val_5w1s_plain`` (the figure without test-time
    augmentation of a TTA run) -> ``5-way 1-shot, no TTA``; a bare ``val_accuracy`` (rows of older
    episodic runs) -> ``validation``. Epochs without the key are skipped; a missing CI is 0.
    """
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if _VAL_KEY.match(k) and k not in keys]
    if not keys and any("val_accuracy" in r for r in rows):
        keys = ["val_accuracy"]
    out = {}
    for key in keys:
        m = _VAL_KEY.match(key)
        label = "validation"
        if m:
            label = f"{m.group(1)}-way {m.group(2)}-shot" + (", no TTA" if m.group(3) else "")
        pts = [(r["epoch"], r[key], r.get(f"{key}_ci95") or 0.0) for r in rows
               if isinstance(r.get(key), (int, float))]
        if pts:
            e, a, c = (np.asarray(v, dtype=float) for v in zip(*pts))
            out[label] = (e, a, c)
    return out


def _series(rows: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    if not pts:
        return np.empty(0), np.empty(0)
    e, v = zip(*pts)
    return np.asarray(e, dtype=float), np.asarray(v, dtype=float)


def plot_curves(rows: Sequence[dict], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Draw the run's curves into ``path`` (PNG, written atomically) and return it."""
    if not rows:
        raise FewShotError("no epochs to draw yet", path)
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, PercentFormatter

    plain = FuncFormatter(lambda v, _: f"{v:.3g}")   # 0.05 and 30, not 5e-2 and 3x10^1

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), dpi=110, sharex=True)
    (ax_loss, ax_val), (ax_train, ax_lr) = axes
    last_epoch = max(int(r["epoch"]) for r in rows)

    # loss and its parts; log scale when every value is positive (the parts differ by 10-100x)
    positive = True
    for key, label, style in _LOSS_PARTS:
        e, v = _series(rows, key)
        if len(v) and np.any(v != 0):
            ax_loss.plot(e, v, style, marker="o", ms=3, label=label)
            positive &= bool(np.all(v > 0))
    if ax_loss.lines and positive:
        ax_loss.set_yscale("log")
        ax_loss.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax_loss.yaxis.set_minor_formatter(NullFormatter())
    ax_loss.yaxis.set_major_formatter(plain)
    ax_loss.set_title("training loss", fontsize=10)

    # validation accuracy per shot with its 95% CI band; the best epoch of the first figure starred
    for i, (label, (e, a, c)) in enumerate(val_series(rows).items()):
        style = "--" if label.endswith("no TTA") else "-"
        (line,) = ax_val.plot(e, 100 * a, style, marker="o", ms=3, label=label)
        ax_val.fill_between(e, 100 * (a - c), 100 * (a + c), color=line.get_color(), alpha=0.2, lw=0)
        if len(e) == 1:   # a band needs two epochs; one point gets an error bar
            ax_val.errorbar(e, 100 * a, yerr=100 * c, color=line.get_color(), capsize=4, lw=1)
        if i == 0:
            j = int(np.argmax(a))
            ax_val.plot(e[j], 100 * a[j], "*", ms=12, color=line.get_color(), zorder=5,
                        label=f"best: {100 * a[j]:.1f}% (epoch {int(e[j])})")
    ax_val.yaxis.set_major_formatter(PercentFormatter(decimals=None))
    ax_val.set_title("validation accuracy (95% CI band)", fontsize=10)

    train_key = "train_acc" if any("train_acc" in r for r in rows) else "train_accuracy"
    e, v = _series(rows, train_key)
    if len(v):
        ax_train.plot(e, 100 * v, marker="o", ms=3, color="tab:green")
    ax_train.yaxis.set_major_formatter(PercentFormatter(decimals=None))
    ax_train.set_title("training accuracy (training batches)", fontsize=10)

    e, v = _series(rows, "lr")
    if len(v):
        ax_lr.plot(e, v, marker="o", ms=3, color="tab:purple")
        ax_lr.yaxis.set_major_formatter(plain)
    ax_lr.set_title("learning rate (end of epoch)", fontsize=10)

    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if last_epoch <= 10:
            ax.set_xticks(range(1, last_epoch + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
        ax.set_xlim(0.5, last_epoch + 0.5)
        ax.tick_params(labelsize=8)
        if ax.lines and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
        if not ax.lines:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes,
                    color="0.5", fontsize=9)
    for ax in axes[1]:
        ax.set_xlabel("epoch", fontsize=9)
    fig.suptitle(shorten(title or "training curves", 90), fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
