# Two entry points for a fresh machine with only Python >= 3.11: `make demo` and `make test`.
# Each creates .venv and installs what it needs on first use (again when pyproject.toml changes).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest system-deps clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "prompt needs Python >= 3.11, found " + sys.version)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/prompt --state-dir .prompt/demo replay --visits 20 --speed 10

lint: $(STAMP)
	$(BIN)/ruff check prompt loadtest tests deploy
	$(BIN)/ruff format --check prompt loadtest tests deploy

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

# Debian packages the tests use: chromium (the replay report is checked in it), prometheus
# (promtool unit-tests the alert rules; the server scrapes a dispatcher and answers the
# dashboard's queries), kubernetes-client (`kubectl kustomize` renders deploy/k8s; the tests
# need its kustomize v5+, i.e. kubectl 1.27+: Debian 12's is older, so an installed kubectl,
# e.g. Google Cloud CLI's, is used first) and tini (the image's PID 1, run by the entrypoint
# test).
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v kubectl >/dev/null 2>&1 || missing="$$missing kubernetes-client"; \
	command -v tini >/dev/null 2>&1 || missing="$$missing tini"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing (apt-get) for the tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "the tests need:$$missing (sudo apt-get install$$missing)" >&2; exit 1; fi; \
	fi

test: system-deps lint typecheck pytest

clean:
	rm -rf $(VENV) .prompt .mypy_cache .ruff_cache .pytest_cache
