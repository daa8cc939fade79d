"""Progress that suits where it goes: a live bar on a terminal; plain lines in a log.

A log (CI, `make > log`) gets no carriage-return redraws: one line each time another `every`
fraction of the work is done (and one at the end), or none at all with `every=None`, for loops
whose caller prints its own line per unit (training prints one line per epoch). A terminal gets
one line redrawn at most ten times a second. Standard library only, so runtime/ can use it on a
device.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def live() -> bool:
    """True when stderr is a terminal a bar can redraw on (LENET_EDGE_PROGRESS=lines says no:
    processes sharing one terminal)."""
    if os.environ.get("LENET_EDGE_PROGRESS") == "lines":
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    def __init__(
        self,
        total: int,
        desc: str = "",
        unit: str = "it",
        enabled: bool = True,
        every: float | None = 0.25,
        initial: int = 0,
        leave: bool = True,
    ):
        self.total, self.desc, self.unit, self.every = max(int(total), 0), desc, unit, every
        self.n, self._postfix, self._t0, self._bar = initial, "", time.perf_counter(), None
        # -q (LENET_EDGE_QUIET=1, set by the command line for the stage and its children) silences bars
        self.enabled, self.leave = enabled and os.environ.get("LENET_EDGE_QUIET") != "1", leave
        self._next = self._threshold(initial)
        self._live = self.enabled and live()
        self._drawn = 0.0

    def _threshold(self, n: int) -> int:
        """The count at which the next plain line is due."""
        if self.every is None or self.total <= 0:
            return sys.maxsize
        step = max(1, round(self.every * self.total))
        return (n // step + 1) * step

    def _line(self) -> None:
        pct = 100 * self.n / self.total if self.total else 100.0
        tail = f", {self._postfix}" if self._postfix else ""
        print(
            f"{self.desc + ': ' if self.desc else ''}{self.n}/{self.total} {self.unit} ({pct:.0f} %), "
            f"{time.perf_counter() - self._t0:.0f} s{tail}",
            file=sys.stderr,
            flush=True,
        )

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        pct = 100 * self.n / self.total if self.total else 100.0
        el = now - self._t0
        rate = f", {self.n / el:.1f} {self.unit}/s" if el > 0 and self.n else ""
        tail = f", {self._postfix}" if self._postfix else ""
        text = f"{self.desc + ': ' if self.desc else ''}{self.n}/{self.total} {self.unit} ({pct:.0f} %), {el:.0f} s{rate}{tail}"
        print(f"\r{text[:150]:<150}", end="", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._live:
            self._draw()
        elif self.enabled and self.n >= self._next:
            self._next = self._threshold(self.n)
            if self.n < self.total:  # the last line comes from close()
                self._line()

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self._postfix = s
        if self._live and refresh:
            self._draw()

    def set_postfix(self, refresh: bool = True, **kw: Any) -> None:
        self.set_postfix_str(", ".join(f"{k}={v}" for k, v in kw.items()), refresh)

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self._live:
            self._draw()

    def write(self, s: str) -> None:
        """A line that belongs in the log either way (above a live bar on a terminal)."""
        if self._live:
            print("\r" + " " * 150 + "\r", end="", file=sys.stderr, flush=True)
        print(s, flush=True)
        if self._live:
            self._draw(force=True)

    def close(self) -> None:
        if self._live:
            self._draw(force=True)
            end = "\n" if self.leave else "\r" + " " * 150 + "\r"  # keep the last state, or clear it
            print(end=end, file=sys.stderr, flush=True)
            self._live = self.enabled = False
        elif self.enabled and self.every is not None and self.total:
            self._line()
            self.enabled = False  # once

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
