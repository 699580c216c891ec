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
