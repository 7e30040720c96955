# Every target installs what is missing first (through `install`), so each is one command on a
# fresh machine. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTO_SRC := $(shell find protos -name '*.proto' | sort)
# make loadtest HOST=http://host:8080 targets a running gateway instead of starting one;
# ARGS passes options through to the load test and the benchmark (see loadtest/README.md).
HOST ?=
ARGS ?=

.PHONY: help install system-deps up demo test test-fast check protos train train-full k8s-check loadtest bench clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP) system-deps ## create .venv with the pinned dependencies (idempotent)

# Debian packages: the Fashion-MNIST data set and Chromium for the browser test. Installed only
# when running as root and missing; otherwise the tests that need them say what to install.
system-deps:
	@need=""; \
	test -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz || need="$$need dataset-fashion-mnist"; \
	command -v chromium >/dev/null || need="$$need chromium"; \
	if [ -n "$$need" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "apt-get install$$need"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; \
	  else echo "note: missing Debian packages:$$need (sudo apt-get install$$need)"; fi; \
	fi

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[ml,dev]' -e clients/python
	@touch $@

up: install ## start model server + gateway on the default model; Ctrl-C stops both
	$(PY) -m tools.stack up

demo: install ## start the stack, classify the bundled examples over gRPC and REST, stop
	$(PY) -m tools.stack demo

test: install check k8s-check ## the whole test suite (what .ci/run calls)
	$(PY) -m pytest

test-fast: install ## the in-process unit layer only (batcher, routing, thresholds, ...): seconds
	$(PY) -m pytest -m unit -q

check: install ## fail when generated gRPC stubs are stale or the API fails buf lint / buf breaking
	$(PY) -m tools.protos --check

protos: install ## regenerate gRPC stubs from protos/
	$(PY) -m tools.protos

train: install ## quick profile, about two minutes (~83 %); writes models/fashion/<next>/
	$(PY) -m training --profile quick

train-full: install ## the recipe behind models/fashion/1 (about 35 min on 2 cores, 93.5 %)
	$(PY) -m training --profile full

k8s-check: install ## render every kustomize overlay, validate offline, lint Dockerfiles, policy tests
	$(PY) -m tools.k8s_check

loadtest: install ## Locust run with an SLO verdict; report in reports/loadtest/<timestamp>/
	$(PY) -m loadtest.run $(if $(HOST),--host $(HOST)) $(ARGS)

bench: install ## side-by-side benchmark (PROFILE=1: py-spy on the gateway); report in reports/bench/<timestamp>/
	$(PY) -m loadtest.bench $(if $(filter 1,$(PROFILE)),--profile) $(ARGS)

clean: ## remove the venv and caches (keeps models/)
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
