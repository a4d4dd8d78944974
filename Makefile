# Single entry point.  `make demo` and `make test` are the README's two commands.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= serve,train,dev
DEMO_DIR ?= demo-output
DEMO_SKUS ?= 40
# The versions CI and the tests ran with (`make lock` rewrites it); CONSTRAINTS= installs the newest.
CONSTRAINTS ?= constraints.txt
# What the compose smoke test (tests/test_compose.py) needs besides the venv: Debian packages.
# dnsname: compose's service names (redis://redis:6379) resolve on podman's CNI networks.
CONTAINER_TOOLS := podman runc debootstrap golang-github-containernetworking-plugin-dnsname

.PHONY: setup lock demo serve-demo test lint typecheck bench clean help container-tools images-offline compose-demo compose-down

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed-$(EXTRAS): pyproject.toml $(CONSTRAINTS)
	@test -n "$(PYTHON)" || { echo "Python 3.11 is required (python3.11 or python3 on PATH)"; exit 1; }
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 required, found " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]" $(if $(CONSTRAINTS),--constraint $(CONSTRAINTS))
	touch $@

setup: $(VENV)/.installed-$(EXTRAS)  ## create .venv with every extra and make sure redis-server exists
	$(VENV)/bin/sku-redis --ensure

lock:  ## rewrite constraints.txt from .venv (upgrade: rm -r .venv; make test CONSTRAINTS=; make lock)
	@test -x $(PY) || { echo "no $(VENV): run make setup first"; exit 1; }
	{ echo "# Written by \`make lock\` from a .venv whose \`make test\` passed; \`make setup\` installs these."; \
	  $(PY) -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.txt

demo: setup  ## the end-to-end demo: catalog → train → localizer → index → service → queries
	$(VENV)/bin/sku-demo --out $(DEMO_DIR) --skus $(DEMO_SKUS) $(DEMO_ARGS)

serve-demo: setup  ## the same, then leave the service up (URL and API key printed)
	$(VENV)/bin/sku-demo --out $(DEMO_DIR) --skus $(DEMO_SKUS) --keep-serving $(DEMO_ARGS)

test: setup container-tools  ## install what the tests need and run the whole suite
	$(PY) -m pytest

container-tools:  ## podman, runc, debootstrap: installed with apt as root, else listed
	@if dpkg -s $(CONTAINER_TOOLS) >/dev/null 2>&1; then \
	    echo "container tools: $(CONTAINER_TOOLS) installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "container tools: installing $(CONTAINER_TOOLS)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive nice -n 19 \
	        apt-get install -y -qq --no-install-recommends $(CONTAINER_TOOLS) >/dev/null; \
	else \
	    echo "container tools missing: install $(CONTAINER_TOOLS) (tests/test_compose.py skips)"; \
	fi

images-offline:  ## the compose demo's base images from Debian packages (debootstrap, root)
	deploy/local-images.sh

compose-demo: setup container-tools  ## build everything offline and start the compose demo (podman)
	deploy/compose-podman.sh up

compose-down:  ## stop the compose demo and delete its data volume
	deploy/compose-podman.sh down -v

lint: setup  ## ruff + mypy (service, index_builder, training, demo)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:  ## remove the demo output (keeps .venv)
	rm -rf $(DEMO_DIR)
