"""vsqe/signals.py: an interruption Python swallows stays quiet and is still delivered."""
from __future__ import annotations

import signal
import sys
import weakref

import pytest

from vsqe import signals


class _Referent:
    pass


def test_an_interrupt_raised_in_a_weakref_callback_is_quiet_and_still_delivered(capsys) -> None:
    previous = signals.install()
    try:
        referent = _Referent()
        # The handler runs where the main thread is; here, inside a weakref callback, where Python
        # swallows exceptions and would print "Exception ignored ... Traceback" (seen in CI).
        ref = weakref.ref(referent, lambda _: signals._on_signal(signal.SIGINT, None))
        del referent
        assert ref() is None
        assert "Traceback" not in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            signals.check()
        signals.check()  # delivered once
    finally:
        signals.restore(previous)
    assert sys.unraisablehook is not signals._quiet_unraisable


def test_other_unraisable_exceptions_still_reach_the_previous_hook() -> None:
    seen: list[BaseException] = []
    before = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(u.exc_value)
    previous = signals.install()
    try:
        referent = _Referent()

        def fail(_: object) -> None:
            raise ValueError("not ours")

        ref = weakref.ref(referent, fail)
        del referent
        assert ref() is None
        assert [type(e) for e in seen] == [ValueError]
        signals.check()  # nothing pending
    finally:
        signals.restore(previous)
        sys.unraisablehook = before


def test_a_sigterm_swallowed_the_same_way_comes_back_as_terminated() -> None:
    previous = signals.install()
    try:
        referent = _Referent()
        ref = weakref.ref(referent, lambda _: signals._on_signal(signal.SIGTERM, None))
        del referent
        assert ref() is None
        with pytest.raises(signals.Terminated):
            signals.check()
    finally:
        signals.restore(previous)
