# Two entry points for a fresh Debian machine (root): `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBIAN_PACKAGES := rabbitmq-server tshark tcpdump
DEMO_CAPTURE ?= captures/blocked-callback.pcap

.PHONY: demo test venv debian-packages fuzz bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,notebook]'
	touch $@

venv: $(VENV)/.installed

# Installs what the tests need when it is missing (root on Debian; no-op when already present).
debian-packages:
	@missing=""; \
	for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: venv
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
