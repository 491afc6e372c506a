# QSC developer entry points. `make test` and `make demo` work from a fresh clone as root on
# Debian 12: they install what is missing (Debian packages, .venv, npm tools) first.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NPM_DIR := tools/npm
N8N_DIR := tools/n8n
BUF := $(NPM_DIR)/node_modules/.bin/buf
STAMP := .stamp
PYTEST_ARGS ?=

.PHONY: help setup bpf-setup test unit lint proto demo bench clean fuzz campaign lock audit

help:
	@echo "make demo    run QSC on embedded defaults (installs what is missing first)"
	@echo "make test    lint gates + the whole test suite"
	@echo "make unit    tests/unit and tests/vectors only: no root, no system packages"
	@echo "make lint    ruff, mypy, buf lint/format/breaking, generated-code drift"
	@echo "make proto   regenerate the Python code beside the .proto files"
	@echo "make bench   benchmarks; they print their figures"
	@echo "make campaign  the hardening campaign in full (make test runs it bounded)"
	@echo "make audit   pip-audit over requirements.lock (make lock rewrites it)"

$(STAMP)/system: tools/install-system-deps.sh
	tools/install-system-deps.sh
	@mkdir -p $(STAMP) && touch $@

# The runtime dependencies and pytest, from PyPI alone: enough for `make unit`, no apt, no root.
$(STAMP)/venv-unit: pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[all,test]'
	@mkdir -p $(STAMP) && touch $@

$(STAMP)/venv: pyproject.toml requirements.lock $(STAMP)/system $(STAMP)/venv-unit
	$(PY) -m pip install --quiet -c requirements.lock -e '.[all,dev]'
	@touch $@

$(STAMP)/npm: $(NPM_DIR)/package.json $(NPM_DIR)/package-lock.json $(STAMP)/system
	npm ci --prefix $(NPM_DIR) --no-audit --no-fund --loglevel=error
	@touch $@

# A real n8n for tests/integration/test_n8n_receiver.py (~3 min from an empty npm cache).
$(STAMP)/n8n: $(N8N_DIR)/package.json $(N8N_DIR)/package-lock.json $(STAMP)/system
	npm ci --prefix $(N8N_DIR) --no-audit --no-fund --loglevel=error
	@mkdir -p $(STAMP) && touch $@

setup: $(STAMP)/venv $(STAMP)/npm

# Every run, not behind a stamp: a reboot unmounts tracefs. Idempotent and fast when all is there.
bpf-setup: $(STAMP)/venv
	tools/setup-bpf.sh $(VENV)

proto: setup
	$(BUF) format -w
	$(PY) tools/gen_proto.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(BUF) lint
	$(BUF) format --diff --exit-code
	$(PY) tools/gen_proto.py --check
	BUF=$(BUF) tools/buf-breaking.sh

# n8n's npm install (minutes: downloads and a native build of sqlite3) runs beside the lint
# gates and the unit tests (pure Python in temporary directories); the tests that start real
# servers and touch the system wait for it (its native build failed once beside them).
ifeq ($(strip $(PYTEST_ARGS)),)
test: $(STAMP)/system
	$(MAKE) --no-print-directory $(STAMP)/n8n > $(STAMP)/n8n.log 2>&1 & n8n=$$!; \
	$(MAKE) --no-print-directory lint bpf-setup; \
	$(PY) -m pytest tests/unit tests/vectors tests/fuzz; \
	wait $$n8n || { cat $(STAMP)/n8n.log; exit 1; }; \
	$(PY) -m pytest --ignore=tests/unit --ignore=tests/vectors --ignore=tests/fuzz
else
test: lint bpf-setup $(STAMP)/n8n
	$(PY) -m pytest $(PYTEST_ARGS)
endif

# Tests that need root or a system tool skip themselves when it is missing (`make test` has both).
unit: $(STAMP)/venv-unit
	$(PY) -m pytest -q tests/unit tests/vectors $(PYTEST_ARGS)

# The fuzz tests with a campaign budget (`make test` runs them beside the unit tests, with a
# budget of a few hundred examples each).
FUZZ_EXAMPLES ?= 20000
fuzz: $(STAMP)/venv-unit
	QSC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q tests/fuzz $(PYTEST_ARGS)

# The hardening campaign in full (`make test` runs tests/campaign bounded): every round the
# issue names, its figures printed and written to $(CAMPAIGN_REPORT) as JSON lines.
CAMPAIGN_REPORT ?= campaign-report.jsonl
campaign: setup bpf-setup
	rm -f $(CAMPAIGN_REPORT)
	QSC_CAMPAIGN=full QSC_CAMPAIGN_REPORT=$(abspath $(CAMPAIGN_REPORT)) \
		$(PY) -m pytest -q -s tests/campaign $(PYTEST_ARGS)
	@echo "campaign figures: $(CAMPAIGN_REPORT)"

# requirements.lock: the exact versions installed above, from a venv made from pyproject.toml.
lock: $(STAMP)/venv
	{ echo "# The exact versions \`make setup\` installs (as pip constraints), and what \`make audit\` checks."; \
	  echo "# Regenerate with \`make lock\` after changing the dependencies in pyproject.toml."; \
	  $(PY) -m pip freeze --exclude-editable; } > requirements.lock

# Known vulnerabilities in the locked versions (needs PyPI's JSON API or OSV over the network).
audit: $(STAMP)/venv
	$(VENV)/bin/pip-audit --strict --progress-spinner off -r requirements.lock

bench: setup bpf-setup
	@for b in tests/bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

demo: $(STAMP)/system setup bpf-setup
	$(PY) -m demo $(ARGS)

clean:
	rm -rf $(VENV) $(STAMP) $(NPM_DIR)/node_modules $(N8N_DIR)/node_modules build \
		.mypy_cache .pytest_cache .ruff_cache
