"""Coverage-guided fuzzing of one target with atheris (libFuzzer for Python).

    .venv/bin/python fuzz/fuzz.py pqf_hevc -max_total_time=75 build/fuzz/corpus/pqf_hevc build/fuzz/seeds/pqf_hevc
    .venv/bin/python fuzz/fuzz.py y4m crash-1234...      # replay one input
    .venv/bin/python fuzz/fuzz.py pqf_vvc -minimize_crash=1 -runs=5000 -exact_artifact_path=small crash-1234...

Any libFuzzer flag works (-timeout, -rss_limit_mb, -max_len, -artifact_prefix, -runs). `make fuzz`
builds the seeds (fuzz/seeds.py) and runs every target for a bounded time. A crash (an exception
other than the target's documented ones, a hang past -timeout, memory past -rss_limit_mb) is
written as crash-*/timeout-*/oom-* under the artifact prefix: add it to tests/fuzz/crashers/TARGET/
and fix the bug.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # vsqe from this tree, by the plain path finder

import targets  # noqa: E402

# Instrument everything loaded so far (vsqe, numpy's Python parts, the stdlib). On Python 3.12,
# atheris.instrument_imports() saw ~19 edges of the HEVC parser where instrument_all() sees ~140:
# the scikit-build editable loader and 3.12 bytecode defeat the import hook.
atheris.instrument_all()


def main() -> None:
    # Warnings about unreadable pictures are the expected outcome on fuzzed input: keep them quiet.
    logging.getLogger("vsqe").setLevel(logging.CRITICAL)
    args = sys.argv[1:]
    if args and args[0] in targets.TARGETS:
        name = args.pop(0)
    else:  # libFuzzer re-runs this script for -minimize_crash / -fork: the target is in the environment
        name = os.environ.get("VSQE_FUZZ_TARGET", "")
    if name not in targets.TARGETS:
        sys.exit(f"usage: fuzz.py TARGET [libFuzzer options] [corpus dirs]; targets: {', '.join(targets.TARGETS)}")
    os.environ["VSQE_FUZZ_TARGET"] = name
    target = targets.TARGETS[name]

    def one_input(data: bytes) -> None:
        target(data)

    # argv[0] is what libFuzzer runs (through the shell) when it re-executes itself.
    atheris.Setup([f"{sys.executable} {Path(__file__).resolve()}", *args], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
