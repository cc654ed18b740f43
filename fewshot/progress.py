"""Progress that suits where it goes: bars on a terminal, a few plain lines in a log.

On a terminal (or in a notebook) :func:`progress` is a tqdm bar. When the stream is not a terminal
(a file, a pipe, a CI log), redrawing a bar with carriage returns leaves hundreds of overwritten
copies per epoch in the log and buries the lines that matter; there :func:`progress` returns a
:class:`LineProgress` instead, which writes one plain line every ``every`` seconds (default 30,
``FEWSHOT_PROGRESS_EVERY`` overrides it) and, when ``leave`` is set, one when it closes. Loops that
print their own summary (an epoch line of ``fewshot train``) therefore log nothing else unless a
step runs long.

``FEWSHOT_PROGRESS=bars|lines|off`` forces one kind (``auto``, the default, decides per stream).
Every place that shows progress goes through :func:`progress`, so the choice is made once.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

__all__ = ["LineProgress", "progress", "progress_mode"]

MODES = ("auto", "bars", "lines", "off")


def _in_notebook() -> bool:
    """True inside a Jupyter kernel, whose streams are not terminals but draw tqdm widgets."""
    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    ip = getattr(shell, "get_ipython", lambda: None)()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def progress_mode(file: IO | None = None) -> str:
    """``bars``, ``lines`` or ``off`` for ``file`` (default stderr): ``FEWSHOT_PROGRESS``, else
    bars on a terminal or in a notebook, lines anywhere else."""
    mode = os.environ.get("FEWSHOT_PROGRESS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        mode = "auto"
    if mode != "auto":
        return mode
    stream = file if file is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    try:
        tty = bool(isatty()) if isatty is not None else False
    except (ValueError, OSError):   # a closed stream
        tty = False
    return "bars" if tty or _in_notebook() else "lines"


def _every_default() -> float:
    try:
        return max(0.0, float(os.environ.get("FEWSHOT_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


class LineProgress:
    """A tqdm stand-in for logs: ``update``, ``set_postfix``, ``set_postfix_str``, ``close``,
    iteration and ``with``; a line at most every ``every`` seconds and, with ``leave``, a last one.

    Lines are tqdm's own meter without the bar (``desc: 40% 4/10 [00:02<00:03, 1.9step/s, loss=0.5]``).
    """

    def __init__(self, iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
                 unit: str = "it", initial: float = 0, leave: bool = True, file: IO | None = None,
                 every: float | None = None, disable: bool = False):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.leave = total, desc, unit, leave
        self.n = self._start_n = initial
        self.file = file
        self.every = _every_default() if every is None else max(0.0, float(every))
        self.disable = disable
        self.postfix = ""
        self.start = self._last = time.monotonic()
        self.lines = 0
        self._shown_n: float | None = None
        self.closed = False

    # tqdm's interface, as far as the toolkit uses it
    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self._last >= self.every:
            self._emit(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.disable and self.leave and self.n not in (self._start_n, self._shown_n):
            self._emit(time.monotonic())

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def format(self, now: float | None = None) -> str:
        from tqdm import tqdm

        elapsed = (time.monotonic() if now is None else now) - self.start
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else None
        return tqdm.format_meter(self.n, self.total, elapsed, ncols=0, prefix=self.desc, unit=self.unit,
                                 rate=rate, postfix=self.postfix or None, initial=self._start_n)

    def _emit(self, now: float) -> None:
        stream = self.file if self.file is not None else sys.stderr
        print(self.format(now).strip(), file=stream, flush=True)
        self.lines += 1
        self._last, self._shown_n = now, self.n


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
             unit: str = "it", initial: float = 0, leave: bool = False, disable: bool = False,
             file: IO | None = None, every: float | None = None):
    """A progress bar (tqdm) on a terminal, a :class:`LineProgress` in a log, a silent one when
    ``disable`` or ``FEWSHOT_PROGRESS=off``. Same calls either way; ``every`` only affects lines."""
    mode = progress_mode(file)
    if mode == "bars" and not disable:
        from tqdm.auto import tqdm
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                    file=file if file is not None else sys.stderr, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                        file=file, every=every, disable=disable or mode == "off")
