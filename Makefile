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
RESUME ?=
BANK_STEM = $(basename $(notdir $(BANK)))
RUN ?= runs/$(BANK_STEM)/twotower_v4
DEPLOY ?= runs/$(BANK_STEM)/deploy.json
SERVE_CONFIG ?= serving/serving.yaml
GEN := serving/_gen/cascade_pb2.py
# BANK= selects the bank; PROFILE=smoke brings its own small synthetic bank unless BANK= is given.
CHECKLIST_ARGS = --profile $(PROFILE) $(if $(filter command line,$(origin BANK)),--bank $(BANK)) $(if $(RESUME),--resume)

.DEFAULT_GOAL := help
.PHONY: help setup data test test-slow lint clean train-v4 train-v4-bg train-lvm monitor bench \
	bench-scale protos serve query

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

# The Python gRPC stubs are generated from protos/ only, into serving/_gen/ (gitignored).
$(GEN): $(wildcard protos/cascade/v1/*.proto) $(STAMP)
	$(PY) -m serving.codegen

protos: $(GEN)  ## generate the Python gRPC stubs from protos/ into serving/_gen/

serve: $(GEN)  ## the gRPC stages + front on DEPLOY (after make train-v4 / train-lvm); Ctrl-C stops
	$(PY) -m serving.server --config $(SERVE_CONFIG) --deploy $(DEPLOY)

query: $(GEN)  ## an example query against make serve
	$(PY) -m serving.client --config $(SERVE_CONFIG) \
		"The Moon is Earth's only natural satellite." \
		"It orbits at an average distance of 384,400 km."

data: $(STAMP)  ## build the bank: the Wikipedia default corpus, or CORPUS=my.jsonl
	$(PY) -m training.ingest --out $(BANK) $(if $(CORPUS),--corpus $(CORPUS)) $(if $(LIMIT),--limit-articles $(LIMIT))

train-v4: $(STAMP)  ## the whole v4 checklist: data, v3 baseline, post-mortem, pairs, pre-flight, v4, gate, deploy.json
	$(PY) -m training.checklist $(CHECKLIST_ARGS)

train-v4-bg: $(STAMP)  ## the same in the background (as the checklist's overnight script); see make monitor
	@mkdir -p logs
	nohup $(PY) -m training.checklist $(CHECKLIST_ARGS) > logs/train_v4_bg.log 2>&1 & echo $$! > logs/train_v4_bg.pid
	@echo "started pid $$(cat logs/train_v4_bg.pid); follow with: tail -f logs/train_v4_bg.log, or make monitor"

train-lvm: $(STAMP)  ## stage 2 after train-v4: the LVM reranker on stage 1's own top-500; names it in deploy.json
	$(PY) -m training.train_lvm --config lvm_default.yaml --deploy runs/$(BANK_STEM)/deploy.json \
		--pairs artifacts/twotower/$(BANK_STEM)/pairs_v4.npz --out runs/$(BANK_STEM)/lvm $(if $(RESUME),--resume)

monitor: $(STAMP)  ## latest epoch, Recall@500, separation margin and whether the run is alive (RUN=...)
	@$(PY) -m training.monitor --run $(if $(filter smoke,$(PROFILE)),runs/synth_smoke_bank/twotower_v4,$(RUN))

bench: $(STAMP) $(GEN)  ## stage-1 recall vs the heuristics, the cascade per stage (quality + latency; after train-v4 and train-lvm), TMD rerank on val/test, embedding throughput, gRPC serving latency
	$(PY) -m benchmarks.recall --bank $(BANK) --pairs artifacts/twotower/$(BANK_STEM)/pairs_v4.npz \
		--ckpt v4=$(RUN)/checkpoints/best.pt --ckpt v3=runs/$(BANK_STEM)/twotower_v3_phase2/checkpoints/best.pt
	$(PY) -m benchmarks.cascade_eval --deploy $(DEPLOY) \
		--pairs artifacts/twotower/$(BANK_STEM)/pairs_v4.npz
	$(PY) -m benchmarks.tmd_eval --bank $(BANK) --pairs artifacts/twotower/$(BANK_STEM)/pairs_v4.npz
	$(PY) -m benchmarks.embed_throughput
	$(PY) -m benchmarks.latency --deploy $(DEPLOY)

bench-scale: $(STAMP)  ## peak memory of training on a synthetic 500k x 768 bank, 50k 100-vector contexts (~10 min)
	$(PY) -m benchmarks.train_memory

test: $(STAMP) $(GEN)  ## run the test suite (slow cases excluded)
	$(PY) -m pytest

test-slow: $(STAMP) $(GEN)  ## also the slow case: the whole checklist on the real corpus from scratch (~7 min)
	$(PY) -m pytest -m ''

lint: $(STAMP)  ## ruff
	$(PY) -m ruff check .

clean:  ## remove the venv and caches (keeps artifacts/ and runs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
