# The two commands of the README: `make demo` (set up, run the embedded default measurement)
# and `make test` (set up, run the test suite). `make setup` alone installs everything.
PY ?= python3
TORCH ?= torch==2.14.1 torchvision==0.29.1
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup demo test test-all bench clean

setup:
	@# --no-build-isolation below builds with the installed setuptools: pyproject's SPDX
	@# license needs 77 or newer (a fresh Python 3.11 venv has 65, and torch 2.11 does not ask for more).
	$(PY) -m pip install -q $(TORCH) "setuptools>=77"
	@# Real Fashion-MNIST for the offline training study (Debian's package); best effort.
	@[ -d $(FMNIST) ] || ! command -v apt-get >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) || true
	$(PY) -m pip install -q --no-build-isolation -e ".[all]"

demo: setup
	$(PY) -m equifast measure --out runs/demo

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

bench: setup
	$(PY) benchmarks/run_ratios.py

clean:
	rm -rf build *.egg-info equifast/_C*.so
