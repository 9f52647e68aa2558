# Every target sets up (or reuses) the virtual environment .venv first: no other step is needed.
PYTHON_BIN := .venv/bin/python
PYTEST := $(PYTHON_BIN) -m pytest
export PYTHONUNBUFFERED := 1

.PHONY: venv test test-slow quickstart bench parity lint clean-data help test-d2main

help:
	@echo "make quickstart   set up, generate the synthetic data, train + evaluate + render K-Net on CPU"
	@echo "make test         set up, run the test suite (under 15 minutes on 2 cores)"
	@echo "make test-slow    the long tests (overfit, multi-process training)"
	@echo "make bench        speed benchmarks (tools/benchmark.py)"
	@echo "make parity       outputs against the reference mmsegmentation K-Net (own environment)"
	@echo "                  and training steps against the official K-Net (mmdet 2.x, own environment)"
	@echo "make test-d2main  the test suite against detectron2 main instead of v0.6 (own environment)"

venv:
	@bash tools/bootstrap.sh

test: venv
	$(PYTEST) -m "not slow and not parity and not parity_mmdet" tests

test-d2main: venv
	@# the suite of `make test` with detectron2 main (../shared/third_party/detectron2-*.tar.gz) in a test-only
	@# layer .venv-d2main over .venv (tools/d2main_env.sh); without the archive it says so and skips
	@if ls $${KNET_SHARED:-../shared}/third_party/detectron2-*.tar.gz >/dev/null 2>&1; then \
	  bash tools/d2main_env.sh && \
	  .venv-d2main/bin/python -m pytest -m "not slow and not parity and not parity_mmdet" tests; \
	else \
	  echo "[test-d2main] skipped: no detectron2 main archive $${KNET_SHARED:-../shared}/third_party/detectron2-<commit>.tar.gz" \
	       "(the project's shared reference sources; CI has them at ../shared, or set KNET_SHARED)"; \
	fi

test-slow: venv
	$(PYTEST) -m "slow" tests

quickstart: venv
	$(PYTHON_BIN) tools/quickstart.py

bench: venv
	$(PYTHON_BIN) tools/benchmark.py --threads 2 --markdown

parity: venv
	@bash tools/parity_env.sh
	.venv-parity/bin/python -m pytest -m parity tests
	@bash tools/parity_mmdet_env.sh
	@# training-step parity with the official K-Net (mmdet 2.x layer); without ../shared the layer is not
	@# built and the tests skip, saying what is missing
	$$( [ -x .venv-parity-mmdet/bin/python ] && echo .venv-parity-mmdet/bin/python || echo $(PYTHON_BIN) ) \
	    -m pytest -m parity_mmdet tests

lint: venv
	$(PYTHON_BIN) -m flake8 projects tests tools demo train_net.py

clean-data:
	rm -rf datasets/knet_synthetic
