# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
# TORCH selects the PyTorch wheel installed before varmap.  The default pin resolves to the CPU build on
# machines that ship it locally, and to PyPI's default build elsewhere (CUDA on Linux x86-64).
# GPU node with a specific CUDA:  make demo TORCH_INDEX=https://download.pytorch.org/whl/cu126
# CPU-only laptop (small download): make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
DEMO_DIR ?= demo_output

BIN := $(VENV)/bin
STAMP := $(VENV)/.varmap-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: setup
	$(BIN)/varmap demo -o $(DEMO_DIR) --force

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/varmap bench msdki -o bench_output/msdki --force
	$(BIN)/python benchmarks/bench_nlls_speed.py --output bench_output/nlls_speed.md

clean:
	rm -rf $(VENV) $(DEMO_DIR) bench_output
