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

.PHONY: run test install install-test lint check serve clean

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

test: lint check
	$(BIN)/pytest

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
