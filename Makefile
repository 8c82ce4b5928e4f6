# Machinery for Python — developer entry points. See README.md.
#   make demo         run the seed examples on the embedded sqlite:// default (no servers)
#   make test         lint, the server-free tests (2 processes), then start every test server, run the
#                     tests that need one, stop the servers, and the demo
#   make test-bounds  each package with the LOWEST versions its pyproject allows: server-free tests
#   make test-latest  lint + server-free tests with the NEWEST versions the ranges allow (before `make lock`)
#   make lock         refresh uv.lock to the newest versions the ranges allow (LOCK_ARGS= keeps the others)
#   make services     start the test servers for interactive work (scripts/services stop to end)
#   make lint         ruff + mypy --strict
#   make bench        the benchmark (bench/README.md); BENCH_ARGS=--peers adds Dramatiq and Celery;
#                     BENCH_SERVICES="redis rabbitmq aws pubsub mongodb memcached" adds the transport rows
#
# The development environment is uv's workspace lock (uv.lock, members: core, plugins/*, the example plugin):
# .venv holds exactly what the lock says. uv itself comes from PyPI at an exact version, into .uv/VERSION.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
UV_DIR := .uv/$(UV_VERSION)
UV := $(UV_DIR)/bin/uv
PLUGINS := $(sort $(wildcard plugins/*/pyproject.toml))
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(PLUGINS))
EXAMPLE_PLUGIN := $(patsubst %/pyproject.toml,%,$(wildcard examples/plugin/pyproject.toml))
PYTEST_ARGS ?=
LOCK_ARGS ?= --upgrade
CORE_ALL := -e 'core[test,yaml,otel,cron,metrics]'
# Scratch virtualenvs of test-bounds / test-latest (recreated on every run).
CHECK_DIR ?= .uv/checks

# uv: the environment is $(VENV), made from $(PYTHON) (never a downloaded interpreter).
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_NO_PROGRESS := 1
SYNC := $(UV) sync --locked --quiet
SYNC_ALL := $(SYNC) --all-packages --all-extras
LOCK_HINT := { echo "make: uv.lock does not match the pyproject files (or uv failed above): run make lock" >&2; exit 1; }

.PHONY: venv demo test test-fast test-bounds test-latest lock services lint bench clean

$(UV):
	$(PYTHON) -m venv $(UV_DIR)
	$(UV_DIR)/bin/pip install --quiet --disable-pip-version-check 'uv==$(UV_VERSION)'

# Every package of the repo, editable, with all its extras, and the dev group (tools, test clients).
venv: $(UV)
	$(SYNC_ALL) || $(LOCK_HINT)

demo: $(UV)  # the core alone (--inexact: a full .venv stays full)
	$(SYNC) --inexact --package machinery-core --no-default-groups || $(LOCK_HINT)
	$(PY) examples/demo.py

# The tests that need no server run first, spread over $(PYTEST_WORKERS) processes (pytest-xdist, whole files
# per process); the `services` tests then run in one process with the servers up, since some restart a
# server or fail one over, which would break the tests of another process using it at that moment.
PYTEST_WORKERS ?= 2
test: venv lint
	scripts/services install
	$(PY) -m pytest -m "not services" $(XDIST) $(PYTEST_ARGS) || [ $$? = 5 ]
	scripts/services run -- $(PY) -m pytest -m services $(PYTEST_ARGS)
	$(MAKE) --no-print-directory demo

# Unit tests only, no servers.
test-fast: venv
	$(PY) -m pytest $(XDIST) core/tests $(PYTEST_ARGS)

services: venv
	scripts/services install
	scripts/services start
	@echo 'eval "$$(scripts/services env)"  # to use them from this shell'

# ruff, and mypy --strict on every package, with the tools of the venv $(1)
define lint_with
	$(1)/bin/ruff check core plugins tests examples bench
	$(1)/bin/ruff format --check core plugins tests examples bench
	$(1)/bin/mypy core/src $(foreach d,$(PLUGIN_DIRS),$(d)/src)
endef

lint: venv  # part of `make test`
	$(call lint_with,$(VENV))

BENCH_ARGS ?=
# The servers started for the run; a transport row (sqs, gcppubsub, mongodb, memcache) runs when its
# server's environment is set (a server of scripts/services already running counts) and its plugin is
# installed, and is skipped with the reason otherwise.
BENCH_SERVICES ?= redis rabbitmq mongodb memcached
bench: $(UV)
	$(SYNC_ALL) --group bench || $(LOCK_HINT)
	scripts/services install
	SERVICES="$(BENCH_SERVICES)" scripts/services run -- $(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/signing.py

lock: $(UV)
	$(UV) lock $(LOCK_ARGS)

# A fresh venv $(1) with the packages $(3) installed at resolution $(2) (no lock), then pytest $(4),
# server-free tests only. The core comes from this repo (-e core), so the plugins get the core they ship with.
XDIST := -n $(PYTEST_WORKERS) --dist loadfile
define check_env
	rm -rf $(1) && $(UV) venv --quiet $(1)
	$(UV) pip install --quiet --python $(1)/bin/python --resolution $(2) $(3) 'pytest-xdist>=3.5'
	$(1)/bin/python -m pytest -q -p no:cacheprovider -m "not services" $(4) $(PYTEST_ARGS) \
		|| { s=$$?; [ $$s = 5 ] && echo "(no server-free tests: installed and collected only)"; }
endef

# Each package alone, with the lowest versions of what it requires directly (its pyproject's lower bounds).
test-bounds: bounds-core $(addprefix bounds-,$(notdir $(PLUGIN_DIRS)))
	@echo "test-bounds: the core and $(words $(PLUGIN_DIRS)) plugin(s) pass with their lowest allowed versions"

# The core: core/tests (whose settings tests load the first-party plugins' sections, so the plugins are
# installed too, also at their lowest) and the modules of tests/contract not marked services as a whole.
CORE_CONTRACT_TESTS = $(shell grep -L '^pytestmark = .*pytest.mark.services' tests/contract/test_*.py)
bounds-core: $(UV)
	$(call check_env,$(CHECK_DIR)/bounds-core,lowest-direct,$(CORE_ALL) $(addprefix -e ,$(PLUGIN_DIRS)) \
		$(addprefix -e ,$(EXAMPLE_PLUGIN)),$(XDIST) core/tests $(CORE_CONTRACT_TESTS))

bounds-%: $(UV)
	$(call check_env,$(CHECK_DIR)/bounds-$*,lowest-direct,-e core -e 'plugins/$*[test]',plugins/$*/tests)

# Everything with the newest versions the ranges allow, ignoring uv.lock: what `make lock` would bring.
test-latest: $(UV)
	$(call check_env,$(CHECK_DIR)/latest,highest,--group dev $(CORE_ALL) \
		$(foreach d,$(PLUGIN_DIRS),-e '$(d)[test]') $(addprefix -e ,$(EXAMPLE_PLUGIN)),$(XDIST))
	$(call lint_with,$(CHECK_DIR)/latest)

# Not part of `make test`: N minutes (default 5) of tasks, chords and retries while worker processes
# are SIGKILLed and the broker restarts; reports lost (must be 0), duplicates, chord callbacks.
# CHAOS_ARGS="--broker redis --minutes 2" (redis/amqp need: eval "$$(scripts/services env)").
CHAOS_ARGS ?=
.PHONY: chaos
chaos: venv
	$(PY) bench/chaos.py $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .uv .pytest_cache .mypy_cache .ruff_cache
