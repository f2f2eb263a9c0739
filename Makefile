# FedHE developer targets. `make demo` and `make test` work from a fresh clone
# with only Python 3.11 installed.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# TORCH=cpu (default): the CPU wheel. TORCH=cuda: the CUDA build of the same torch from
# TORCH_CUDA_INDEX (pick the wheel index of your driver's CUDA), for GPU clients
# (client config device: auto|cuda; job training.amp). Nothing else changes.
TORCH  ?= cpu
TORCH_VERSION    ?= 2.13.0
TORCH_CUDA_INDEX ?= https://download.pytorch.org/whl/cu128
ifeq ($(TORCH),cuda)
TORCH_PIP := torch==$(TORCH_VERSION) --index-url $(TORCH_CUDA_INDEX)
else ifeq ($(TORCH),cpu)
TORCH_PIP := torch==$(TORCH_VERSION)
else
$(error TORCH must be cpu or cuda)
endif

.PHONY: install demo test test-ray lint proto proto-check bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	# torch first (TORCH=cpu: the CPU wheel on disk; TORCH=cuda: the CUDA build), so the
	# range in pyproject.toml is already met and pip installs no other torch.
	$(PY) -m pip install -q $(TORCH_PIP)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/fedhe demo

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

# The optional Ray extra (fedhe simulate --backend ray, aggregation backend ray) and its tests.
test-ray: install
	$(PY) -m pip install -q -e '.[ray]'
	$(PY) -m pytest -q -m 'slow or not slow' tests/integration/test_ray_backend.py \
		tests/unit/test_parallel_aggregation.py

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
