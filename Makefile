# vsqe: `make demo` enhances a sample and prints its ΔPSNR; `make test` runs the test suite.
# Both set up everything first (`make setup`): a Python 3.12 venv, Debian's x264/x265/ffmpeg,
# the package with its native DCN module (CUDA part too when nvcc is found), test and VapourSynth deps.

SHELL := /bin/bash
PYTHON312 ?= $(shell p="$$(pyenv root 2>/dev/null)/versions/3.12.1/bin/python3"; [ -x "$$p" ] && echo "$$p" || command -v python3.12)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vsqe-installed
SHARED ?= ../shared/data
NATIVE_SOURCES := $(wildcard CMakeLists.txt cpp/*/*.h cpp/*/*.cpp cpp/*/*.cu)

.PHONY: setup demo test test-fast clean
setup: $(STAMP)

$(STAMP): pyproject.toml $(NATIVE_SOURCES)
	@[ -n "$(PYTHON312)" ] || { echo "make: Python 3.12 not found (pyenv versions/3.12.1 or python3.12 on PATH)" >&2; exit 1; }
	@missing=""; for t in x264 x265 ffmpeg; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "make: installing Debian packages:$$missing" >&2; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	[ -x $(PY) ] || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,vs]'
	@# vspipe finds this venv's Python through VapourSynth's per-user config (keyed by library path).
	$(VENV)/bin/vapoursynth config >/dev/null
	touch $(STAMP)

demo: setup
	@bash samples/demo.sh

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf build out

# --- reliability (docs/reliability.md) -----------------------------------------------------------
# `make fuzz`: coverage-guided fuzzing (atheris) of the slice-header parsers and the y4m reader,
# FUZZ_SECONDS per target (4 targets: 5 minutes by default); a crash fails with its input under
# build/fuzz/artifacts/TARGET/. `make longrun`: a training run killed with SIGKILL resumes (slow
# tests), then 3,000 frames through `vsqe run` and vspipe with the resident memory sampled every
# second (docs/reliability_rss.png, build/longrun/longrun.json).
FUZZ_SECONDS ?= 75
FUZZ_TARGETS := pqf_h264 pqf_hevc pqf_vvc y4m
LONGRUN_FRAMES ?= 3000
.PHONY: fuzz longrun
fuzz: setup
	@$(PY) -c "import atheris" 2>/dev/null || $(PY) -m pip install -q -e '.[fuzz]'
	$(PY) fuzz/seeds.py build/fuzz/seeds $(SHARED)
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/corpus/$$t build/fuzz/artifacts/$$t; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	  $(PY) fuzz/fuzz.py $$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
	    -print_final_stats=1 -artifact_prefix=build/fuzz/artifacts/$$t/ build/fuzz/corpus/$$t build/fuzz/seeds/$$t \
	    > build/fuzz/$$t.log 2>&1 \
	    || { tail -40 build/fuzz/$$t.log; echo "fuzz: $$t crashed; input in build/fuzz/artifacts/$$t/ (add it to tests/fuzz/crashers/$$t/)"; exit 1; }; \
	  grep -E "DONE|stat::number_of_executed_units|stat::peak_rss_mb" build/fuzz/$$t.log | tr '\n' ' '; echo; \
	done

longrun: setup
	VSQE_SLOW_TESTS=1 $(PY) -m pytest -q tests/hardening/test_train_kill.py
	VSQE_SHARED_DATA=$(SHARED) $(PY) tests/hardening/longrun.py --frames $(LONGRUN_FRAMES)
