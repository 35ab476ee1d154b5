# The two set-up commands of the README. Each installs what it needs first (idempotent, see scripts/install.sh).
PYTHON ?= python3

.PHONY: demo test install install-test bench

demo: install
	$(PYTHON) -m labkit.cli demo

test: install-test
	$(PYTHON) -m pytest -q

install:
	PYTHON=$(PYTHON) scripts/install.sh

install-test:
	PYTHON=$(PYTHON) scripts/install.sh --test

bench: install
	$(PYTHON) -m labkit.cli bench --methods autoregressive,prompt_lookup,token_recycling --n 3
