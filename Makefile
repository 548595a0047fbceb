# One-command set-up and jobs. Everything installs into ./.venv from the
# package index; nothing needs to be installed by hand.
#
# Another supported Python (3.11 to 3.13) gets its own environment:
#   make test PYTHON=python3.13        # in .venv-python3.13
PYTHON ?= python3.11
VENV   ?= $(if $(filter python3.11,$(PYTHON)),.venv,.venv-$(notdir $(PYTHON)))
BIN    := $(VENV)/bin
DATA   ?= $(abspath ../shared/data)
PHOTOS ?= $(DATA)/coil100
# One index per photo folder, named after it (out/index-coil100 by default).
INDEX  ?= out/index-$(notdir $(abspath $(PHOTOS)))
QUERY  ?= $(PHOTOS)/obj42__0.png

.PHONY: setup demo test lint bench clean

$(BIN)/keras-rmac: setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,clean,serve,beam]"
	touch $@

setup: $(BIN)/keras-rmac

# The main job: index a folder of photos (incremental, resumable) and
# search it with one photo; writes out/results.png and out/results.html.
# `make demo PHOTOS=~/Pictures QUERY=...` keeps its own index beside the
# COIL-100 one (out/index-Pictures); INDEX=DIR chooses another.
# DATA also tells `index` where the offline ImageNet weights are
# (DATA/weights): `make demo DATA=/path/to/shared/data` from any folder.
demo: setup
	KERAS_RMAC_DATA=$(DATA) $(BIN)/keras-rmac index $(PHOTOS) \
	    --index $(INDEX) --max-size 224
	$(BIN)/keras-rmac search --index $(INDEX) $(QUERY) -k 10 \
	    --sheet out/results.png --html out/results.html

test: setup
	KERAS_RMAC_DATA=$(DATA) TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check keras_rmac tests benchmarks examples
	$(BIN)/ruff format --check keras_rmac tests benchmarks examples

bench: setup
	$(BIN)/python -m benchmarks.coil100
	$(BIN)/python -m benchmarks.search
	$(BIN)/python -m benchmarks.train_coil100
	$(BIN)/python -m benchmarks.cleaning
	$(BIN)/python -m benchmarks.beam

clean:
	rm -rf .venv .venv-* out *.egg-info
