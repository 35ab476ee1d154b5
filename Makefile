# The two set-up commands of the README. Each installs what it needs first (idempotent, see scripts/install.sh).
PYTHON ?= python3

.PHONY: demo test install install-test bench app load-check notebooks-html

demo: install
	$(PYTHON) -m labkit.cli demo

# the linter (pyproject.toml [tool.ruff]), then one pytest worker per core (TEST_JOBS=1 runs them in one process); browser tests share one worker
TEST_JOBS ?= 2
test: install-test
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q -n $(TEST_JOBS) --dist loadgroup

install:
	PYTHON=$(PYTHON) scripts/install.sh

install-test:
	PYTHON=$(PYTHON) scripts/install.sh --test

# Spec-Bench speed run on the embedded SmolLM2 (see docs/benchmark.md for the full commands and tables).
# Resumable: re-running skips the questions already in the output file (FRESH=--fresh starts over).
bench: install
	$(PYTHON) -m labkit.cli bench --methods autoregressive,prompt_lookup:sizing=auto,token_recycling --n 3 \
		--trace-overhead autoregressive,token_recycling --out runs/bench/smollm2-float32.jsonl $(FRESH)

# The Gradio app on the embedded SmolLM2: http://127.0.0.1:7860 (ARGS="--port 8080 --host 0.0.0.0 --models ...")
app: install
	$(PYTHON) app.py $(ARGS)

# N simulated visitors at once through the Gradio client; all must get their own correct text
load-check: install-test
	$(PYTHON) scripts/load_check.py $(ARGS)

# Static HTML copies of the executed notebooks in docs/notebooks/ (plotly.js beside them, nothing from a CDN)
notebooks-html: install-test
	$(PYTHON) scripts/render_notebooks.py
