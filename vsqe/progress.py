"""A progress line on stderr: frames done / total, frames per second, ETA.

On a terminal the line redraws in place a few times a second; when stderr is a file or a pipe (logs,
CI) a plain line is written every `log_interval` seconds instead, so logs stay readable.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(
        self,
        total: int | None,
        label: str = "frames",
        enabled: bool = True,
        stream: TextIO | None = None,
        redraw_interval: float = 0.25,
        log_interval: float = 10.0,
    ) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = redraw_interval if self.tty else log_interval
        self.done = 0
        self.start = time.monotonic()
        self._last_draw = self.start
        self._drawn = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    @property
    def rate(self) -> float:
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        if self.total:
            frac = min(1.0, self.done / self.total)
            width = 20
            filled = int(frac * width)
            bar = "#" * filled + "-" * (width - filled)
            eta = _clock((self.total - self.done) / rate) if rate > 0 else "?"
            return f"{self.done}/{self.total} {self.label} [{bar}] {frac:4.0%} {rate:.2f} fps ETA {eta}"
        return f"{self.done} {self.label} {rate:.2f} fps {_clock(self.elapsed)} elapsed"

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw >= self.interval or (self.tty and self.done == self.total):
            self._last_draw = now
            self._draw()

    def _draw(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line())
            self._drawn = True
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Ends the redrawn line so later messages start on a fresh one."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
