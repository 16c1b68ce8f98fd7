# Every target bootstraps .venv itself, so any target works on a fresh clone.
# `make help` lists the targets.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

BANK ?= artifacts/wikipedia_vital_bank.npz
PROFILE ?= default
CORPUS ?=
LIMIT ?=

.DEFAULT_GOAL := help
.PHONY: help setup data test test-slow lint clean

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'
	@echo "  variables: BANK=$(BANK) PROFILE=$(PROFILE) (default|smoke) CORPUS=<jsonl> LIMIT=<articles>"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed, got " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install everything (idempotent)

data: $(STAMP)  ## build the bank: the Wikipedia default corpus, or CORPUS=my.jsonl
	$(PY) -m training.ingest --out $(BANK) $(if $(CORPUS),--corpus $(CORPUS)) $(if $(LIMIT),--limit-articles $(LIMIT))

test: $(STAMP)  ## run the test suite (slow cases excluded)
	$(PY) -m pytest

test-slow: $(STAMP)  ## run the slow cases too
	$(PY) -m pytest -m ''

lint: $(STAMP)  ## ruff
	$(PY) -m ruff check .

clean:  ## remove the venv and caches (keeps artifacts/ and runs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
