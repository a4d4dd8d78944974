# Single entry point.  `make demo` and `make test` are the README's two commands.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= serve,train,dev
DEMO_DIR ?= demo-output
DEMO_SKUS ?= 40

.PHONY: setup demo serve-demo test lint typecheck bench clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 is required (python3.11 or python3 on PATH)"; exit 1; }
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 required, found " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed-$(EXTRAS)  ## create .venv with every extra and make sure redis-server exists
	$(VENV)/bin/sku-redis --ensure

demo: setup  ## the end-to-end demo: catalog → train → localizer → index → service → queries
	$(VENV)/bin/sku-demo --out $(DEMO_DIR) --skus $(DEMO_SKUS) $(DEMO_ARGS)

serve-demo: setup  ## the same, then leave the service up (URL and API key printed)
	$(VENV)/bin/sku-demo --out $(DEMO_DIR) --skus $(DEMO_SKUS) --keep-serving $(DEMO_ARGS)

test: setup  ## install what the tests need and run the whole suite
	$(PY) -m pytest

lint: setup  ## ruff + mypy (service, index_builder, training)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:  ## remove the demo output (keeps .venv)
	rm -rf $(DEMO_DIR)
