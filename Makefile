# Two entry points for a fresh machine with only Python >= 3.11: `make demo` and `make test`.
# Each creates .venv and installs what it needs on first use (again when pyproject.toml changes).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "prompt needs Python >= 3.11, found " + sys.version)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/prompt --state-dir .prompt/demo demo

lint: $(STAMP)
	$(BIN)/ruff check prompt loadtest tests
	$(BIN)/ruff format --check prompt loadtest tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .prompt .mypy_cache .ruff_cache .pytest_cache
