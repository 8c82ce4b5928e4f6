# Machinery for Python — developer entry points. See README.md.
#   make demo      run the seed examples on the embedded sqlite:// default (no servers)
#   make test      install + start every test server, run all tests, stop the servers
#   make services  start the test servers for interactive work (scripts/services stop to end)
#   make lint      ruff + mypy --strict
#   make bench     the benchmark (bench/README.md); BENCH_ARGS=--peers adds Dramatiq and Celery

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PLUGINS := $(sort $(wildcard plugins/*/pyproject.toml))
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(PLUGINS))
EXAMPLE_PLUGIN := $(wildcard tests/contract/example_plugin/pyproject.toml)
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast services lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Every package of the repo, editable, with its test extras.
venv: $(VENV)/bin/python
	$(PIP) install --quiet -e 'core[test,yaml,otel]' $(foreach d,$(PLUGIN_DIRS),-e '$(d)[test]') \
		$(if $(EXAMPLE_PLUGIN),-e tests/contract/example_plugin) \
		$(if $(wildcard tests/services/requirements.txt),-r tests/services/requirements.txt) \
		pytest-timeout mypy ruff

demo: $(VENV)/bin/python
	$(PIP) install --quiet -e core
	$(PY) examples/demo.py

test: venv lint
	scripts/services install
	scripts/services run -- $(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory demo

# Unit tests only, no servers.
test-fast: venv
	$(PY) -m pytest core/tests $(PYTEST_ARGS)

services: venv
	scripts/services install
	scripts/services start
	@echo 'eval "$$(scripts/services env)"  # to use them from this shell'

lint: venv  # part of `make test`: ruff, and mypy --strict on every package
	$(VENV)/bin/ruff check core plugins tests examples bench
	$(VENV)/bin/ruff format --check core plugins tests examples bench
	$(VENV)/bin/mypy core/src $(foreach d,$(PLUGIN_DIRS),$(d)/src)

BENCH_ARGS ?=
bench: venv
	$(PIP) install --quiet 'matplotlib>=3.7'
	scripts/services install
	SERVICES="redis rabbitmq" scripts/services run -- $(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
