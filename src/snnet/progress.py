"""Progress bars: tqdm's on a terminal; in a log file (standard error not a terminal) a line per bar at its end,
and one a minute while it runs, instead of every frame, as timm and Lightning log."""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

LOG_INTERVAL_S = 60.0  # a long bar (an ImageNet epoch) still shows it is alive


class LineBar:
    """The part of tqdm's interface snnet uses (iterate, ``update``, ``set_postfix``, ``close``), written as
    whole lines."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
                 stream=None, interval_s: float = LOG_INTERVAL_S) -> None:
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.stream, self.interval_s = stream, interval_s
        self.n, self.postfix, self.closed = 0, "", False
        self.start = self.last = time.perf_counter()

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.perf_counter() - self.last >= self.interval_s:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line()

    def _line(self) -> None:
        now = time.perf_counter()
        self.last, elapsed = now, now - self.start
        of = f"/{self.total}" if self.total is not None else ""
        rate = f", {self.n / elapsed:.3g} {self.unit}/s" if elapsed > 0 else ""
        extra = f", {self.postfix}" if self.postfix else ""
        stream = self.stream or sys.stderr
        stream.write(f"{self.desc}: {self.n}{of} {self.unit} in {elapsed:.1f} s{rate}{extra}\n")
        stream.flush()


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 enabled: bool = True):
    """A bar over ``iterable`` (or ``total`` steps): tqdm on a terminal, :class:`LineBar` otherwise; a disabled
    one (``enabled=False``) shows nothing."""
    if enabled and not _is_terminal(sys.stderr):
        return LineBar(iterable, total, desc, unit)
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, disable=not enabled)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False
