# FedHE developer targets. `make demo` and `make test` work from a fresh clone
# with only Python 3.11 installed.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint proto proto-check bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	# torch first: the CPU wheel on disk; anything newer would pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/fedhe demo

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

proto: install
	$(PY) -m fedhe_common.protogen

proto-check: install
	$(PY) -m fedhe_common.protogen --check

bench: install
	$(VENV)/bin/fedhe bench crypto --json bench-crypto.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
