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


def test_python_m_exits_130_after_an_interrupt_inside_string_exec(tmp_path) -> None:
    """CPython 3.12 under `python -m`: a KeyboardInterrupt that ended code run through exec of a
    string leaves a flag that makes the interpreter kill itself with SIGINT at exit (-2), even
    when the exception was caught. `vsqe.cli.exit_process` (what `python -m vsqe` ends with) exits
    130 anyway. The module below makes that happen deterministically: our handler, a SIGINT
    delivered inside exec'd source, the interruption caught as main() catches it."""
    import os
    import subprocess
    import textwrap
    from pathlib import Path

    (tmp_path / "interrupted_inside_exec.py").write_text(textwrap.dedent("""
        import os, signal, sys
        from vsqe import signals
        from vsqe.cli import exit_process

        signals.install()
        try:
            # our handler, called where a SIGINT would have found the main thread
            exec("import signal\\nfrom vsqe import signals\\nsignals._on_signal(signal.SIGINT, None)", {})
        except KeyboardInterrupt:
            status = 130
        else:
            status = 0
        if sys.argv[1:] == ["plain"]:
            raise SystemExit(status)
        exit_process(status)
    """))
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(repo)]))
    run = lambda *extra: subprocess.run([sys.executable, "-m", "interrupted_inside_exec", *extra],  # noqa: E731
                                        env=env, capture_output=True, text=True, timeout=120)
    done = run()
    assert done.returncode == 130, done.stderr
    plain = run("plain")  # what `raise SystemExit(main())` gives: the reason exit_process exists
    assert plain.returncode == (-signal.SIGINT if sys.version_info[:2] == (3, 12) else plain.returncode), plain.stderr
