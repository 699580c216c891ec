"""The `vsqe` command.

Sub-commands are plug-ins: every module in `vsqe/commands/` that defines `register(subparsers)` adds
one (`vsqe run`, `vsqe eval`, ...). `register` adds a parser with `subparsers.add_parser(...)` and
sets `handler=<function(args) -> int>` with `set_defaults`; it must stay cheap (import torch and
friends inside the handler), because every invocation builds every parser. See docs/cli.md.

Error contract (design.md): a handler raises `VsqeError`s; `main` turns each into one line
`vsqe: error: <message>` on stderr and the exception's exit code. Ctrl-C exits 130, SIGTERM 143,
anything unexpected 1 with one line (the traceback only with --debug).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import signal

from vsqe import signals
import sys
import traceback
from typing import NoReturn, Sequence

from vsqe import __version__
from vsqe.errors import VsqeError

PROG = "vsqe"
log = logging.getLogger("vsqe")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line too, like every other error of the tool."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common_options() -> argparse.ArgumentParser:
    # Accepted after the sub-command as well (`vsqe run a b --debug`); SUPPRESS keeps a value given
    # before the sub-command from being reset by the sub-parser's default.
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("output control")
    group.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="debug logging, FFmpeg's messages, and tracebacks for internal errors")
    group.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="informational messages on stderr")
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="errors only on stderr (no warnings, progress or summary)")
    return common


class _SubParsers(argparse._SubParsersAction):
    """Gives every sub-command the common options and the one-line error behaviour."""

    def add_parser(self, name: str, **kwargs):  # type: ignore[override]
        kwargs.setdefault("parents", [])
        kwargs["parents"] = [*kwargs["parents"], _common_options()]
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        return super().add_parser(name, **kwargs)


def command_modules() -> list[str]:
    """The modules under vsqe/commands that provide a sub-command, in name order."""
    import vsqe.commands

    return sorted(
        f"vsqe.commands.{m.name}"
        for m in pkgutil.iter_modules(vsqe.commands.__path__)
        if not m.name.startswith("_")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Learned quality enhancement for decoded video.",
        epilog="Run `vsqe COMMAND --help` for a command's options; docs/cli.md has the details.",
        parents=[_common_options()],
    )
    parser.register("action", "parsers", _SubParsers)
    parser.add_argument("--version", action="version", version=f"vsqe {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    for name in command_modules():
        module = importlib.import_module(name)
        register = getattr(module, "register", None)
        if callable(register):
            register(subparsers)
    return parser


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        message = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            message += "\n" + self.formatException(record.exc_info)
        return f"{PROG}: {level}: {message}" if record.levelno != logging.INFO else f"{PROG}: {message}"


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (so main() also works under capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(debug: bool = False, verbose: bool = False, quiet: bool = False) -> None:
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    # Replace only our own handler: main() may run more than once in a process (tests, embedding).
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _StderrHandler)] + [handler]
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    root.setLevel(level)
    if debug:
        import av.logging

        av.logging.set_level(av.logging.WARNING)  # FFmpeg's own messages, through the "libav" logger
        logging.getLogger("libav").setLevel(logging.WARNING)


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    setup_logging(debug, getattr(args, "verbose", False), getattr(args, "quiet", False))
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        previous = signals.install()
    except ValueError:  # not the main thread (main() called from a thread): leave signals alone
        previous = None
    try:
        status = int(handler(args) or 0)
        signals.check()  # an interruption Python swallowed (see vsqe/signals.py) still ends in exit 130/143
        return status
    except VsqeError as exc:
        if debug:
            traceback.print_exc()
        _error(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return exc.exit_code
    except signals.Terminated:
        _error("terminated (SIGTERM)")
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:
        # The reader of our stdout went away (`vsqe eval ... | head`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for users
        if debug:
            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        _error(f"internal error: {type(exc).__name__}: {first} (run with --debug for the traceback)")
        return 1
    finally:
        if previous is not None:
            signals.restore(previous)


def exit_process(status: int) -> NoReturn:
    """Ends the `python -m vsqe` process with `status` (main()'s).

    After Ctrl-C or SIGTERM it leaves through os._exit once logs and stdio are flushed (the run's
    own clean-up is done by then). The reason is a CPython 3.12 behaviour: under `python -m`, if a
    KeyboardInterrupt ever ended code that ran through exec/eval of a *string* (PyRun_String),
    the interpreter kills itself with SIGINT at exit, status -2 instead of 130, even though
    main() caught the exception. Our handler raises wherever the main thread is, library code
    included (seen about 1 run in 12 in tests/test_cli.py's interrupt test)."""
    if status in (130, 128 + signal.SIGTERM) and signals.received():
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more to say on it
                pass
        os._exit(status)
    raise SystemExit(status)


if __name__ == "__main__":
    exit_process(main())
