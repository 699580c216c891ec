"""SIGINT/SIGTERM for the command line: one clean-up path, and no interruption lost.

A handler that raises delivers KeyboardInterrupt wherever the main thread happens to be. Inside a
weakref callback, a __del__ or the garbage collector Python prints "Exception ignored in ..." and
drops it: the run then carries on to the end (seen under load: SIGTERM, exit 0, output kept).
So long loops (`vsqe run`'s frame pump) defer signals: the handler only records the signal and the
loop raises it at its next frame, where nothing swallows it. Outside such a loop the handler
raises at once, as Python's default SIGINT handler does.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the same clean-up as Ctrl-C runs."""


_pending: int | None = None
_deferred = 0


def _exception_for(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _on_signal(signum: int, frame: object) -> None:
    global _pending
    _pending = signum
    if not _deferred:
        raise _exception_for(signum)


def check() -> None:
    """Raises the interruption recorded while signals were deferred (no-op when there is none)."""
    global _pending
    if _pending is not None:
        signum, _pending = _pending, None
        raise _exception_for(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Signals inside only record themselves; call check() at safe points (e.g. every frame)."""
    global _deferred
    _deferred += 1
    try:
        yield
    finally:
        _deferred -= 1
    check()


def install() -> dict[int, object]:
    """Installs the handler for SIGTERM, and for SIGINT unless it is ignored (nohup'd or
    background jobs must stay immune to Ctrl-C). Returns the previous handlers for restore()."""
    global _pending
    _pending = None
    previous: dict[int, object] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(signum)
        if signum == signal.SIGINT and current is signal.SIG_IGN:
            continue
        previous[signum] = signal.signal(signum, _on_signal)
    return previous


def restore(previous: dict[int, object]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)  # type: ignore[arg-type]
