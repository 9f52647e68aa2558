# Every target sets up (or reuses) the virtual environment .venv first: no other step is needed.
PYTHON_BIN := .venv/bin/python
PYTEST := $(PYTHON_BIN) -m pytest
export PYTHONUNBUFFERED := 1

.PHONY: venv test test-slow quickstart bench parity lint clean-data help

help:
	@echo "make quickstart   set up, generate the synthetic data, train + evaluate + render K-Net on CPU"
	@echo "make test         set up, run the test suite (under 15 minutes on 2 cores)"
	@echo "make test-slow    the long tests (overfit, multi-process training)"
	@echo "make bench        speed benchmarks (tools/benchmark.py)"
	@echo "make parity       outputs against the reference mmsegmentation K-Net (own environment)"

venv:
	@bash tools/bootstrap.sh

test: venv
	$(PYTEST) -m "not slow and not parity" tests

test-slow: venv
	$(PYTEST) -m "slow" tests

quickstart: venv
	$(PYTHON_BIN) tools/quickstart.py

bench: venv
	$(PYTHON_BIN) tools/benchmark.py

parity: venv
	@bash tools/parity_env.sh
	.venv-parity/bin/python -m pytest -m parity tests

lint: venv
	$(PYTHON_BIN) -m flake8 projects tests tools demo train_net.py

clean-data:
	rm -rf datasets/knet_synthetic
