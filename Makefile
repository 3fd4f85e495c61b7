# somnray — every target sets itself up on a fresh machine (virtualenv + install) when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.somnray-installed
export DS_ACCELERATOR ?= cpu
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0

.PHONY: install demo test test-slow bench clean

install: $(STAMP)

# torch first (the CPU wheel from local disk), then DeepSpeed without build isolation so that its
# build sees that torch rather than pulling a CUDA one, then the project with its extras.  s3fs and
# moto are resolved in one run: installed apart, moto upgrades botocore past what s3fs accepts.
# The mlflow extra is part of the test set-up: the registry tests start a real MLflow server.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja
	$(PIP) install -q torch==2.13.0
	DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 $(PIP) install -q --no-build-isolation "deepspeed>=0.15"
	$(PIP) install -q -e ".[dev,mlflow]"
	@touch $(STAMP)

demo: install
	$(VENV)/bin/somnray demo

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

# YASA (the scoring baseline) lives in the bench extra, so the test set-up stays lean.
bench: install
	$(PIP) install -q -e ".[bench]"
	$(VENV)/bin/somnray bench all

clean:
	rm -rf $(VENV) build *.egg-info
