"""Coverage-guided fuzzing of one target with atheris (libFuzzer for Python).

    .venv/bin/python fuzz/fuzz.py pqf_hevc -max_total_time=75 build/fuzz/corpus/pqf_hevc build/fuzz/seeds/pqf_hevc
    .venv/bin/python fuzz/fuzz.py y4m crash-1234...      # replay one input

Any libFuzzer flag works (-timeout, -rss_limit_mb, -max_len, -artifact_prefix, -runs). `make fuzz`
builds the seeds (fuzz/seeds.py) and runs every target for a bounded time. A crash (an exception
other than the target's documented ones, a hang past -timeout, memory past -rss_limit_mb) is
written as crash-*/timeout-*/oom-* under the artifact prefix: add it to tests/fuzz/crashers/TARGET/
and fix the bug.
"""
from __future__ import annotations

import logging
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
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(f"usage: fuzz.py TARGET [libFuzzer options] [corpus dirs]; targets: {', '.join(targets.TARGETS)}")
    target = targets.TARGETS[sys.argv[1]]

    def one_input(data: bytes) -> None:
        target(data)

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
