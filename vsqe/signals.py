"""SIGINT/SIGTERM for the command line: one clean-up path, and no interruption lost.

A handler that raises delivers KeyboardInterrupt wherever the main thread happens to be. Inside a
weakref callback, a __del__ or the garbage collector Python prints "Exception ignored in ..." and
drops it: the run then carries on to the end (seen under load: SIGTERM, exit 0, output kept).
So long loops (`vsqe run`'s frame pump) defer signals: the handler only records the signal and the
loop raises it at its next frame, where nothing swallows it. Outside such a loop the handler
raises at once, as Python's default SIGINT handler does; if that raise lands in a weakref callback
(an import finishing, say) Python would print "Exception ignored ... Traceback": our unraisable hook
keeps that quiet, and the signal stays recorded so the next check() (the frame pump's, or the one
main() runs after the command) still delivers it.
"""
from __future__ import annotations

import contextlib
import signal
import sys
from typing import Any, Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the same clean-up as Ctrl-C runs."""


_pending: int | None = None
_deferred = 0
_received = False  # a SIGINT/SIGTERM reached our handler since install()


def _exception_for(signum: int) -> KeyboardInterrupt:
    exc = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    exc.vsqe_signal = signum  # type: ignore[attr-defined]  # marks it as ours for _quiet_unraisable
    return exc


def _on_signal(signum: int, frame: object) -> None:
    global _pending, _received
    _pending = signum
    _received = True
    if not _deferred:
        raise _exception_for(signum)


_previous_unraisablehook = sys.unraisablehook


def _quiet_unraisable(unraisable: Any) -> None:
    """Drops our own interruption when Python swallowed it (it stays pending); the rest as before."""
    global _pending
    exc = getattr(unraisable, "exc_value", None)
    if isinstance(exc, KeyboardInterrupt) and getattr(exc, "vsqe_signal", None) is not None:
        _pending = exc.vsqe_signal  # the handler recorded it already; a check() in between may not have
        return
    _previous_unraisablehook(unraisable)


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
    global _pending, _previous_unraisablehook, _received
    _pending = None
    _received = False
    if sys.unraisablehook is not _quiet_unraisable:
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _quiet_unraisable
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
    if sys.unraisablehook is _quiet_unraisable:
        sys.unraisablehook = _previous_unraisablehook


def received() -> bool:
    """Whether a SIGINT/SIGTERM reached our handler since install()."""
    return _received

