# Two entry points for a fresh Debian machine (root): `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBIAN_PACKAGES := rabbitmq-server tshark tcpdump nftables chromium
DEMO_CAPTURE ?= captures/blocked-callback.pcap

.PHONY: demo test venv debian-packages fuzz bench clean

# One venv, two stamps: the core (what `amqp-hb analyze` and `frames` import: numpy, pamqp) for
# `make demo`, and the core plus the test extra (lab, notebook, plot and the test tools) for
# `make test`. Editable installs: the tests run the working tree. hatchling builds nothing in the
# source tree (no build/, no *.egg-info).
$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.core: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.core

# amqplib (Node.js) for the amqplib-* scenarios, installed with npm into the venv (the scenario
# runner looks in $(VENV)/node/node_modules). Optional: without npm, or when the install fails, a
# warning is printed and `make` goes on; those scenarios' tests then skip, naming what is missing.
# No stamp is left then, so the next `make venv` tries again.
AMQPLIB := amqplib@2
$(VENV)/node/.amqplib: | $(PY)
	@if ! command -v npm >/dev/null 2>&1; then \
	  echo "warning: npm is missing (apt-get install nodejs npm): the amqplib scenarios will be skipped"; \
	elif npm install --prefix $(VENV)/node --no-audit --no-fund --loglevel=error $(AMQPLIB); then \
	  touch $@; \
	else \
	  echo "warning: npm install $(AMQPLIB) failed: the amqplib scenarios will be skipped"; \
	fi

venv: $(VENV)/.test $(VENV)/node/.amqplib

# Installs what the tests need when it is missing (root on Debian; no-op when already present).
debian-packages:
	@missing=""; \
	for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: $(VENV)/.core
	$(VENV)/bin/amqp-hb analyze $(DEMO_CAPTURE)

# pytest exits 5 when it collected no test: that is a failure here, not a silent pass.
test: debian-packages venv
	$(PY) -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# FUZZ_SECONDS=600 by default; atheris when it installs, else the hypothesis engine (same contract).
fuzz: venv
	$(PY) -m pip install -q atheris || echo "atheris not installable here: fuzzing with hypothesis"
	$(PY) -m tests.fuzz_pipeline

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
